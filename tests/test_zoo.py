import pickle

import pytest
import torch

from inspectnet import InspectnetError, load_data, load_model, save_model
from inspectnet.models.predict import predict
from inspectnet.models.zoo import find_head


def test_unknown_model_suggests_close_names():
    with pytest.raises(InspectnetError, match="closest: resnet18"):
        load_model("resnet1")
    with pytest.raises(InspectnetError, match="unknown source"):
        load_model("keras:resnet18")


def test_torchvision_and_timm_heads():
    tv = load_model("torchvision:mobilenet_v3_small", num_classes=7)
    assert tv.head_name == "classifier.3" and tv.num_classes == 7
    tm = load_model("timm:convnext_atto", num_classes=5)
    assert tm.head_name == "head.fc"
    assert load_model("torchvision:resnet18").class_names[281].startswith("tabby")


def test_torchvision_in_chans_adapts_first_conv():
    zm = load_model("torchvision:resnet18", num_classes=3, in_chans=1, input_size=32)
    assert zm.model.conv1.in_channels == 1
    assert zm.model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_real_lite0_weights_remap_and_classify(lite0_weights):
    """The shipped weights use another naming scheme; the order+shape remap must reproduce ImageNet."""
    with pytest.warns(UserWarning, match="remapped 296 tensors"):
        zm = load_model("efficientnet_lite0", weights=lite0_weights)
    ds = load_data("samples")
    out = {r["image"]: r["top"][0]["index"] for r in predict(zm, ds, topk=1)}
    assert 281 <= out["chelsea"] <= 285
    assert out["coffee"] in {967, 968}
    assert out["rocket"] in {657, 744}


def test_shape_mismatch_is_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import save_file

    sd = load_model("resnet18", num_classes=10).model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(InspectnetError, match=r"'fc.weight' has shape \(10, 512\)"):
        load_model("resnet18", num_classes=4, weights=tmp_path / "w.safetensors")
    zm = load_model("resnet18", num_classes=4, weights=tmp_path / "w.safetensors", reset_head=True)
    assert torch.equal(zm.model.conv1.weight, sd["conv1.weight"])


def test_checkpoint_needing_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(InspectnetError, match="weights_only"):
        load_model("resnet18", weights=path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(InspectnetError, match="does not hold a state dict"):
        load_model("resnet18", weights=tmp_path / "list.pt")


def test_wrapped_checkpoint_unwrapped(tmp_path):
    zm = load_model("resnet18", num_classes=3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in zm.model.state_dict().items()}}, tmp_path / "c.pth")
    zm2 = load_model("resnet18", num_classes=3, weights=tmp_path / "c.pth")
    assert zm2.fingerprint() == zm.fingerprint()


def test_save_load_roundtrip(tmp_path, tiny_digits_model):
    zm = tiny_digits_model
    zm.class_names = [f"digit {i}" for i in range(10)]
    save_model(zm, tmp_path / "m")
    back = load_model(str(tmp_path / "m"))
    assert back.fingerprint() == zm.fingerprint()
    assert back.class_names == zm.class_names and back.data_config == zm.data_config
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(back.model(x), zm.model.eval()(x))
    with pytest.raises(InspectnetError, match="--reset-head"):
        load_model(str(tmp_path / "m"), num_classes=3)


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(InspectnetError, match="no config.json"):
        load_model(str(tmp_path / "m"))


def test_pretrained_offline_fails_fast():
    import time

    t0 = time.monotonic()
    # the machines that run these tests reach package registries only, never the model hubs
    with pytest.raises(InspectnetError, match="cannot be reached.*--weights"):
        load_model("regnetx_002", pretrained=True)
    with pytest.raises(InspectnetError, match="download.pytorch.org"):
        load_model("torchvision:resnet18", pretrained=True)
    assert time.monotonic() - t0 < 30


def test_find_head_fallback_last_linear():
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert find_head(m) == "3"
    with pytest.raises(InspectnetError, match="no linear classifier"):
        find_head(torch.nn.Sequential(torch.nn.ReLU()))


def test_fingerprint_changes_with_weights(tiny_digits_model):
    before = tiny_digits_model.fingerprint()
    with torch.no_grad():
        tiny_digits_model.head.bias.add_(1e-3)
    assert tiny_digits_model.fingerprint() != before


def test_shipped_spec_uses_chosen_preprocessing(lite0_weights, tmp_path):
    zm = load_model("shipped:efficientnet_lite0")
    assert zm.data_config["mean"] == (0.5, 0.5, 0.5) and zm.base == "shipped:efficientnet_lite0"
    top = {r["image"]: r["top"][0]["index"] for r in predict(zm, load_data("samples"), topk=1)}
    assert 281 <= top["chelsea"] <= 285 and top["coffee"] in {967, 968} and top["rocket"] in {657, 744}
    small = load_model("shipped:efficientnet_lite0", num_classes=10, reset_head=True, input_size=64)
    assert small.num_classes == 10 and small.data_config["input_size"] == (3, 64, 64)
    save_model(small, tmp_path / "m")
    assert load_model(str(tmp_path / "m")).data_config == small.data_config
    with pytest.raises(InspectnetError, match="unknown shipped model"):
        load_model("shipped:resnet9000")


@pytest.mark.parametrize("spec", ["vit_tiny_patch16_224", "levit_128s", "torchvision:vit_b_16"])
def test_input_size_rebuilds_models_built_for_one_size_and_the_saved_folder_reloads(tmp_path, spec):
    """Patch grids, position tables and attention biases are sized when the model is built: --input-size
    must reach the constructor, and the saved folder must rebuild at the size it was saved with."""
    zm = load_model(spec, num_classes=3, input_size=64, seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = zm.model(x)
    assert before.shape == (2, 3)
    save_model(zm, tmp_path / "m")
    with torch.no_grad():
        after = load_model(str(tmp_path / "m")).model(x)
    torch.testing.assert_close(after, before)



def test_model_args_build_a_smaller_timm_architecture_that_its_saved_folder_rebuilds(tmp_path):
    args = {"depth": 2, "patch_size": 8, "embed_dim": 48, "num_heads": 3}
    zm = load_model("vit_tiny_patch16_224", num_classes=2, input_size=32, seed=0, build_args=args)
    assert len(zm.model.blocks) == 2 and zm.model.patch_embed.grid_size == (4, 4)
    save_model(zm, tmp_path / "m")
    back = load_model(str(tmp_path / "m"))
    assert back.build_args == args and back.fingerprint() == zm.fingerprint()
    with pytest.raises(InspectnetError, match="keeps the arguments it was built with"):
        load_model(str(tmp_path / "m"), build_args={"depth": 3})
    with pytest.raises(InspectnetError, match=r"cannot be built with \{'depth': 2\}"):
        load_model("resnet18", build_args={"depth": 2})


@pytest.mark.parametrize("spec, args, slim", [
    ("vit_tiny_patch16_224", {"depth": 1, "patch_size": 8, "embed_dim": 24, "num_heads": 2}, False),
    ("resnet18", {"stem_width": 16}, True)])
def test_the_decomposed_and_slimmed_forms_of_a_model_built_with_arguments_reload_from_their_folders(
        tmp_path, spec, args, slim):
    from inspectnet.analysis.heads.decompose import decompose_model
    from inspectnet.analysis.heads.influence import InfluenceMap
    from inspectnet.analysis.heads.slim import slim_model

    zm = load_model(spec, num_classes=2, input_size=32, seed=0, build_args=args)
    dim = zm.head.in_features
    imap = InfluenceMap(k1=3, k2=2, layer="pre_logits", dim=dim, num_classes=2, supports=[[0, 5], [7, 9]],
                        frequencies=[[1.0, 0.5], [1.0, 0.5]], class_counts=[4, 4], empty_classes=[],
                        class_names=["a", "b"], record_fingerprint="0" * 16, weights_fingerprint=zm.fingerprint())
    forms = [decompose_model(zm, imap)]
    if slim:
        forms.append(slim_model(forms[0], latency_reps=1)[0])
    x = torch.randn(2, 3, 32, 32)
    for form in forms:
        assert form.build_args == args
        save_model(form, tmp_path / "m")
        with torch.no_grad():
            torch.testing.assert_close(load_model(str(tmp_path / "m")).model(x), form.model(x))
