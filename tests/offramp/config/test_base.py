import pytest

import dataclasses
import typing

from offramp.config import CalibrateConfig, ConfigError, PlanConfig, ServeConfig, StageConfig, TagConfig, field_docs, load_config
from offramp.config.base import sections
from offramp.policies import POLICIES, get_policy
from offramp.training import TrainConfig
from offramp.training.token import TokenTrainOptions


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'text_colum'.*did you mean 'text_column'"):
        load_config(TagConfig, write(tmp_path, "text_colum: body\n"))
    with pytest.raises(ConfigError, match=r"exit.treshold.*did you mean 'threshold'"):
        load_config(TagConfig, write(tmp_path, "exit: {treshold: 0.2}\n"))


def test_invalid_values_fail_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="not a valid int"):
        load_config(TagConfig, write(tmp_path, "max_length: lots\n"))
    with pytest.raises(ConfigError, match="dtype 'fp8'"):
        load_config(TagConfig, write(tmp_path, "stages: [{dtype: fp8}]\n"))
    with pytest.raises(ConfigError, match="min_actors <= max_actors"):
        load_config(TagConfig, write(tmp_path, "stages: [{min_actors: 3, max_actors: 1}]\n"))
    with pytest.raises(ConfigError, match="--config"):
        load_config(TagConfig, str(tmp_path / "missing.yaml"))


def test_flags_and_set_override_yaml(tmp_path):
    path = write(tmp_path, "input: a.parquet\nexit: {threshold: 0.5}\nstages: [{layers: [0, 2]}, {layers: [2, 6], max_actors: 3}]\n")
    cfg = load_config(TagConfig, path, {"input": "b.parquet", "exit.threshold": None}, ["ray.num_cpus=4", "stages=[]"])
    assert cfg.input == "b.parquet" and cfg.exit.threshold == 0.5 and cfg.ray.num_cpus == 4 and cfg.stages == ()
    cfg = load_config(TagConfig, path)
    assert cfg.stages[1].layers == (2, 6) and cfg.stages[1].max_actors == 3
    with pytest.raises(ConfigError, match="--output"):
        cfg.require("output")


def test_train_config_defaults_and_checks():
    cfg = load_config(TrainConfig, None, {"train": "t.parquet"}, ["exit_layers=[2, 4]"])
    assert cfg.exit_layers == (2, 4) and cfg.policy is None and cfg.mechanism == "deebert"  # policy: the mechanism's
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        load_config(TrainConfig, None, {}, ["max_accuracy_drop=5"])


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=str(sorted(POLICIES)).replace("[", r"\[").replace("]", r"\]")):
        get_policy("patience_typo")


def test_a_key_that_moved_into_a_section_names_its_new_place(tmp_path):
    """Old flat keys fail at start with the dotted key to write instead."""
    with pytest.raises(ConfigError, match=r"key 'sparsity_weight'.*did you mean 'smartbert.sparsity_weight'"):
        load_config(TrainConfig, None, {}, ["sparsity_weight=0.1"])
    with pytest.raises(ConfigError, match=r"'token_exit_mode'.*did you mean 'token.exit_mode'"):
        load_config(TrainConfig, write(tmp_path, "token_exit_mode: sentence\n"))
    with pytest.raises(ConfigError, match=r"'exit.mode'.*did you mean 'exit.token.mode'"):
        load_config(TagConfig, write(tmp_path, "exit: {mode: sentence}\n"))
    with pytest.raises(ConfigError, match=r"'num_cpus'.*did you mean 'ray.num_cpus'"):
        load_config(TagConfig, None, {}, ["num_cpus=4"])


def test_mechanism_options_live_in_their_section_and_are_checked_there():
    sets = ["de3.prototype_dim=16", "token.exit_window=1"]
    cfg = load_config(TrainConfig, None, {"smartbert.sparsity_weight": 0.5}, sets)
    assert cfg.smartbert.sparsity_weight == 0.5 and cfg.de3.prototype_dim == 16 and cfg.token.exit_window == 1
    assert cfg.smartbert.hard_weight_epochs == 1.0 and cfg.berxit.predictor_epochs == 10.0  # the others keep defaults
    with pytest.raises(ConfigError, match=r"de3.*prototype_dim must be >= 2"):
        load_config(TrainConfig, None, {}, ["de3.prototype_dim=1"])
    with pytest.raises(ConfigError, match=r"token exit mode 'word'"):
        load_config(TrainConfig, None, {}, ["token.exit_mode=word"])
    # a cross-field check runs for the chosen mechanism only
    with pytest.raises(ConfigError, match=r"smartbert.hard_weight_epochs=3.0 must lie in \[0, stage1_epochs=1"):
        load_config(TrainConfig, None, {}, ["mechanism=smartbert", "stage1_epochs=1", "smartbert.hard_weight_epochs=3"])
    other = load_config(TrainConfig, None, {}, ["stage1_epochs=1", "smartbert.hard_weight_epochs=3"])
    assert other.mechanism == "deebert"
    with pytest.raises(ConfigError, match=r"unknown exit mechanism 'smartbort'; valid mechanisms: \["):
        load_config(TrainConfig, None, {"mechanism": "smartbort"})


def test_tag_config_token_exit_section_and_job_flags():
    flags = {"exit.token.mode": "sentence", "exit.token.window": 0, "fail_on_error_rows": True}
    cfg = load_config(TagConfig, None, flags)
    assert (cfg.exit.token.mode, cfg.exit.token.window, cfg.exit.token.sentence_pool) == ("sentence", 0, None)
    assert cfg.fail_on_error_rows and not TagConfig().fail_on_error_rows
    with pytest.raises(ConfigError, match="exit_window=-1 must be >= 0"):
        load_config(TagConfig, None, {"exit.token.window": -1})


CONFIGS = [TagConfig, TrainConfig, CalibrateConfig, PlanConfig, ServeConfig]


def all_sections(cls) -> list:
    """cls and every dataclass its fields hold (sections, tuples of sections), recursively."""

    def types_in(tp):
        yield tp
        for arg in typing.get_args(tp):
            yield from types_in(arg)

    found = [cls]
    for hint in typing.get_type_hints(cls).values():
        for tp in types_in(hint):
            if dataclasses.is_dataclass(tp) and tp not in found:
                found += [t for t in all_sections(tp) if t not in found]
    return found


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_default_and_a_one_line_description(cls):
    assert StageConfig in all_sections(TagConfig) and TokenTrainOptions in all_sections(TrainConfig)
    for section in all_sections(cls):
        docs = field_docs(section)
        for f in dataclasses.fields(section):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            assert has_default, f"{section.__name__}.{f.name} has no default"
            assert docs.get(f.name, "").strip(), f"{section.__name__}.{f.name} has no docstring"
            assert "\n" not in docs[f.name]
    assert sections(TrainConfig).keys() >= {"smartbert", "de3", "berxit", "token", "mlflow"}


def test_setting_only_the_maximum_rows_per_file_is_enough():
    from offramp.config import ConfigError, TagConfig

    assert TagConfig().rows_per_file == (50_000, 500_000)
    assert TagConfig(max_rows_per_file=1_000).rows_per_file == (1_000, 1_000)  # the default minimum follows
    assert TagConfig(min_rows_per_file=10, max_rows_per_file=1_000).rows_per_file == (10, 1_000)
    with pytest.raises(ConfigError, match="min_rows_per_file"):
        TagConfig(min_rows_per_file=2_000, max_rows_per_file=1_000)


def test_training_device_resolves_and_refuses_a_missing_gpu():
    import torch

    from offramp.config import ConfigError, TrainSettings

    with pytest.raises(ConfigError, match="device 'gpu'"):
        TrainSettings(device="gpu")
    assert TrainSettings(device="cpu").torch_device() == "cpu"
    assert TrainSettings().torch_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            TrainSettings(device="cuda").torch_device()
