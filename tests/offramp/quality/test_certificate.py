"""A model's certificate covers a tagging run only under the conditions it was made under."""

from offramp.quality.certificate import certificate_gaps

RECORD = {"thresholds": [0.2, 0.3, 0.0], "policy": "entropy", "mechanism": "deebert", "max_length": 96, "dtype": "float32"}
STORED = {1: 0.2, 2: 0.3, 3: 0.0}


def gaps(record=RECORD, certified=True, **run):
    conditions = dict(policy="entropy", mechanism="deebert", max_length=96, dtypes={"float32"}, thresholds=dict(STORED))
    conditions.update(run)
    return certificate_gaps(record, certified, stored=STORED, **conditions)


def test_a_run_as_certified_is_covered():
    assert gaps() == []
    assert gaps(thresholds={1: 0.2, 2: 0.3, 3: 5.0}) == []  # the last head always exits: its value is moot


def test_each_difference_is_named():
    assert gaps(certified=False) == gaps(record=None) and "uncertified" in gaps(certified=False)[0]
    assert "thresholds are not the certified ones" in gaps(thresholds={1: 0.25, 2: 0.3, 3: 0.0})[0]
    assert gaps(max_length=128) == ["max_length is 128 but the certificate was made with 96"]
    assert "policy is 'max_prob'" in gaps(policy="max_prob")[0]
    assert gaps(dtypes={"float32", "float16"}) == ["stages compute in float16 but the certificate was made in float32"]
    assert len(gaps(max_length=64, dtypes={"bfloat16"})) == 2


def test_records_from_before_conditions_were_stored_check_what_they_have():
    old = {"thresholds": [0.2, 0.3, 0.0]}
    assert gaps(record=old, max_length=512, dtypes={"float16"}) == []


def test_a_token_models_certificate_holds_for_its_exit_mode_and_window():
    """The run's token exit settings come from its config, else the model's (TokenTask.exit_conditions)."""
    from offramp.config import ExitConfig, TagConfig, TokenExitConfig
    from offramp.models.checkpoint import ModelInfo
    from offramp.tasks import get_task

    token = get_task("token")
    info = ModelInfo(path="/m", num_layers=3, exit_layers=[1, 2, 3], thresholds=STORED, policy="entropy", labels=["O"], survival=None,
                     task="token", token_exit_mode="token", exit_window=2, sentence_pool="max")
    record = {**RECORD, "mechanism": "token", "token_exit_mode": "token", "exit_window": 2, "sentence_pool": "max"}

    def run(**token_exit):
        cfg = TagConfig(exit=ExitConfig(token=TokenExitConfig(**token_exit)))
        return gaps(record=record, mechanism="token", token=token.exit_conditions(cfg, info))

    assert run() == [] and run(window=2) == [] and run(sentence_pool="mean") == []  # pooling is SENTEE's
    assert run(window=0) == ["exit_window is 0 but the certificate was made with 2"]
    assert run(mode="sentence") == ["token_exit_mode is 'sentence' but the certificate was made with 'token'"]
    assert run(mode="sentence", sentence_pool="mean")[1] == "sentence_pool is 'mean' but the certificate was made with 'max'"
