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
