import pytest

from offramp.config import ConfigError, TagConfig, TrainConfig, load_config
from offramp.policies import POLICIES, get_policy


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
