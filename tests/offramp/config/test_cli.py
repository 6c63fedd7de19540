"""Flags generated from the config classes: every field is on the command line with its help,
and flags, aliases and --set override the YAML of --config."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import typing

import pytest

from offramp.config import CalibrateConfig, ConfigError, PlanConfig, ServeConfig, TagConfig
from offramp.config.base import sections, strip_optional
from offramp.config.cli import add_config_flags, config_from_args, overrides_from_args
from offramp.config.tag import FLAG_ALIASES
from offramp.training import TrainConfig


def parser_for(cls, aliases=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_config_flags(p, cls, aliases)
    return p


def flag_keys(cls, prefix: str = "") -> list[str]:
    """Dotted keys of every field that should have a flag (all but tuples of sections)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = strip_optional(hints[f.name])
        if f.name in sections(cls):
            keys += flag_keys(tp, f"{prefix}{f.name}.")
        elif not any(dataclasses.is_dataclass(a) for a in typing.get_args(tp)):
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("cls", [TagConfig, TrainConfig, CalibrateConfig, PlanConfig, ServeConfig], ids=lambda c: c.__name__)
def test_every_field_has_a_flag_with_help(cls):
    actions = {a.dest: a for a in parser_for(cls)._actions}
    keys = flag_keys(cls)
    assert len(keys) > 5
    for key in keys:
        assert key in actions, f"{cls.__name__}.{key} has no flag"
        head, _, leaf = key.rpartition(".")
        assert f"--{head + '.' if head else ''}{leaf.replace('_', '-')}" in actions[key].option_strings
        assert actions[key].help and "default: " in actions[key].help
    assert all(a.help for a in actions.values()), "every flag, --config and --set included, says what it does"


def test_stages_have_no_flag_and_the_help_says_where_they_go():
    p = parser_for(TagConfig)
    assert not [a for a in p._actions if a.dest.startswith("stages")]
    assert "stages" in p.format_help()


def test_nested_flags_and_aliases_override_yaml_and_set_overrides_flags(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("input: a.parquet\nexit: {policy: entropy, threshold: 0.5, token: {mode: token}}\n"
                    "audit: {fraction: 0.2}\nray: {num_cpus: 2}\n")
    p = parser_for(TagConfig, FLAG_ALIASES)
    args = p.parse_args(["--config", str(yaml), "--exit.threshold", "0.25", "--exit-mode", "sentence",
                         "--audit-fraction", "0.05", "--passthrough", "a,b", "--set", "ray.num_cpus=4"])
    assert overrides_from_args(args) == {"exit.threshold": 0.25, "exit.token.mode": "sentence", "audit.fraction": 0.05,
                                         "passthrough_columns": ("a", "b")}
    cfg = config_from_args(TagConfig, args)
    assert cfg.input == "a.parquet" and cfg.exit.policy == "entropy"  # from the YAML, no flag given
    assert cfg.exit.threshold == 0.25 and cfg.exit.token.mode == "sentence" and cfg.audit.fraction == 0.05
    assert cfg.passthrough_columns == ("a", "b") and cfg.ray.num_cpus == 4
    args = p.parse_args(["--config", str(yaml), "--policy", "max_prob", "--set", "exit.threshold=0.1"])
    cfg = config_from_args(TagConfig, args)
    assert cfg.exit.policy == "max_prob" and cfg.exit.threshold == 0.1


def test_bools_override_only_when_given_both_ways(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("overwrite: true\nexit: {skip_gates: false}\nmlflow: {enabled: false}\n")
    p = parser_for(TagConfig, FLAG_ALIASES)
    cfg = config_from_args(TagConfig, p.parse_args(["--config", str(yaml)]))
    assert cfg.overwrite and not cfg.exit.skip_gates and not cfg.mlflow.enabled
    cfg = config_from_args(TagConfig, p.parse_args(["--config", str(yaml), "--no-overwrite", "--exit.skip-gates",
                                                    "--mlflow.enabled"]))
    assert not cfg.overwrite and cfg.exit.skip_gates and cfg.mlflow.enabled
    # the flags kept from before: --no-exits sets exit.disabled, --no-skip-gates clears exit.skip_gates
    cfg = config_from_args(TagConfig, p.parse_args(["--no-exits", "--no-skip-gates", "--fail-below-target"]))
    assert cfg.exit.disabled and not cfg.exit.skip_gates and cfg.audit.fail_below_target
    assert not config_from_args(TagConfig, p.parse_args([])).exit.disabled


def test_mechanism_and_token_sections_have_flags():
    p = parser_for(TrainConfig)
    cfg = config_from_args(TrainConfig, p.parse_args(
        ["--mechanism", "smartbert", "--smartbert.sparsity-weight", "0.3", "--token.exit-mode", "sentence",
         "--exit-layers", "2,4"]))
    assert cfg.smartbert.sparsity_weight == 0.3 and cfg.token.exit_mode == "sentence" and cfg.exit_layers == (2, 4)


def test_a_bad_value_is_refused_by_the_parser_naming_the_flag(capsys):
    p = parser_for(TagConfig)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--max-length", "lots"])
    assert e.value.code == 2 and "--max-length" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="did you mean 'exit.token.mode'"):
        config_from_args(TagConfig, p.parse_args(["--set", "exit.mode=token"]))


def test_an_alias_for_a_key_without_a_flag_is_a_programming_error():
    with pytest.raises(ValueError, match="stages"):
        parser_for(TagConfig, {"stages": "--stage"})


def test_the_config_package_imports_neither_torch_nor_ray():
    """`offramp --help` and a configuration error answer before anything heavy loads."""
    code = "import sys, offramp.config, offramp.config.cli; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
