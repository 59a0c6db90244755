"""Options declared once on the config dataclasses: one validation path, keyword names in Python, flags on
the command line, and --help generated from the same declarations."""

import argparse
import dataclasses

import pytest

from inspectnet.cli import build_parser, main
from inspectnet.cli.options import add_config_options, config_from_args
from inspectnet.core.errors import InspectnetError, InvalidParameterError
from inspectnet.core.options import option, validate
from inspectnet.pipelines.audit.config import AuditConfig
from inspectnet.training.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class _Config:
    steps: int = option(10, help="curve steps", minimum=1)
    rate: float = option(0.5, help="a rate", above=0, below=1, finite=True)
    share: float = option(0.1, help="a share", minimum=0.0, maximum=1.0)
    mode: str = option("blur", help="what fills", choices=("blur", "mean"))
    limit: int | None = option(None, help="at most N", minimum=1)
    names: list[str] | None = option(None, help="comma-separated names")
    fast: bool = option(False, help="go fast")
    fractions: tuple[float, ...] = option((0.5,), help="fractions", above=0, below=1, cli=False)

    def __post_init__(self) -> None:
        validate(self)


@pytest.mark.parametrize("values, message", [
    (dict(steps=0), "steps= must be at least 1, got 0"),
    (dict(rate=0.0), "rate= must be within (0, 1), got 0.0"),
    (dict(rate=float("nan")), "rate= must be a finite number, got nan"),
    (dict(share=1.5), "share= must be within [0.0, 1.0], got 1.5"),
    (dict(mode="noise"), "mode= must be blur or mean, got 'noise'"),
    (dict(fractions=(0.5, 1.0)), "every value of fractions= must be within (0, 1), got 1.0"),
    (dict(limit=0), "limit= must be at least 1, got 0"),
])
def test_a_bad_value_is_refused_when_the_config_is_built_naming_the_keyword(values, message):
    with pytest.raises(InvalidParameterError) as info:
        _Config(**values)
    assert str(info.value) == message and info.value.parameter == next(iter(values))
    assert isinstance(info.value, ValueError) and isinstance(info.value, InspectnetError)


def test_values_on_the_bounds_and_unset_optionals_are_accepted():
    assert _Config(steps=1, rate=0.999, share=1.0, mode="mean", limit=None).share == 1.0


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(lr=-1.0), "lr= must be positive, got -1.0"),
    (lambda: TrainConfig(weight_decay=float("inf")), "weight_decay= must be a finite number, got inf"),
    (lambda: AuditConfig(data="digits", attribution_images=0), "attribution_images= must be at least 1, got 0"),
    (lambda: AuditConfig(data="digits", export_max_drop=1.5), "export_max_drop= must be within [0.0, 1.0], got 1.5"),
])
def test_library_configs_name_the_keyword_the_python_caller_wrote(make, message):
    with pytest.raises(InvalidParameterError) as info:
        make()
    assert str(info.value) == message and "--" not in str(info.value)


def test_a_model_dependent_check_names_keywords_too(tiny_digits_model):
    from inspectnet.pipelines.audit.config import check_config

    with pytest.raises(InvalidParameterError, match=r"^k1=600 is larger than the feature dimension 512$"):
        check_config(AuditConfig(data="digits", k1=600), tiny_digits_model)
    with pytest.raises(InvalidParameterError, match=r"^layer='layer\*' names"):
        check_config(AuditConfig(data="digits", layer="layer*"), tiny_digits_model)


@pytest.mark.parametrize("argv, message", [
    (["audit", "resnet18", "digits", "--out", "{out}", "--images", "0"], "--images must be at least 1, got 0"),
    (["audit", "resnet18", "digits", "--out", "{out}", "--export-max-drop", "2"],
     "--export-max-drop must be within [0.0, 1.0], got 2.0"),
    (["audit", "resnet18", "digits", "--out", "{out}", "--k1", "2", "--k2", "3"], "--k2 3 is larger than --k1 2"),
    (["train", "resnet18", "digits", "--out", "{out}", "--lr", "-1"], "--lr must be positive, got -1.0"),
    (["finetune", "resnet18", "digits", "--out", "{out}", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_the_command_line_names_the_flag_the_user_typed(argv, message, tmp_path, capsys):
    assert main([a.format(out=tmp_path / "out") for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "=" not in err.split("error: ")[1].split(" ")[0], err
    assert not (tmp_path / "out").exists()


def test_generated_help_shows_each_fields_help_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--k1 K1 top features per sample (Algorithm 1) (default: 5)" in text
    assert "--images IMAGES images to explain with IG / Grad-CAM (default: 6)" in text
    assert "--baseline {blur,mean} what deleted pixels become: a blurred image or its mean colour (default: blur)" in text
    assert "--eval-limit EVAL_LIMIT samples of --eval data to use --k1" in text  # no default shown for None
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--lr LR learning rate (default: 0.05)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command, config, required", [
    ("audit", AuditConfig, dict(data="digits")), ("train", TrainConfig, {}), ("finetune", TrainConfig, {}),
])
def test_the_command_line_defaults_are_the_configs_defaults(command, config, required):
    args = build_parser([command]).parse_args([command, "resnet18", "digits", "--out", "o"])
    assert config_from_args(config, args, **({"command": ""} if config is AuditConfig else {})) == config(**required)


def test_the_generator_reads_types_switches_lists_and_positionals():
    p = argparse.ArgumentParser()
    add_config_options(p, _Config)
    args = p.parse_args(["--names", "a, b,", "--fast", "--limit", "3", "--rate", "0.25"])
    assert config_from_args(_Config, args) == _Config(names=["a", "b"], fast=True, limit=3, rate=0.25)
    p = argparse.ArgumentParser()
    add_config_options(p, AuditConfig)
    assert p.parse_args(["d", "--layers", "layer3,layer4"]).layers == ["layer3", "layer4"]
