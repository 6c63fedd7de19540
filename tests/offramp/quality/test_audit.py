"""The audit summary on hand-made rows with known answers."""

import numpy as np
import pytest

from offramp.quality.audit import BELOW, NO_SAMPLE, NO_TARGET, PASS, flat_metrics, summarize_audit
from offramp.quality.stats import binomial_interval


def rows():
    # 10 audited rows: 4 answered at layer 1 (3 agree), 6 at layer 4 (full depth: agree by construction)
    exit_layer = np.array([1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 2, 2])
    label = np.array(list("aabbccddeeff"), dtype=object)
    full = np.array(["a", "a", "b", "x", "c", "c", "d", "d", "e", "e", None, None], dtype=object)
    audited = np.array([True] * 10 + [False] * 2)
    gold = np.array(["a", "b", "b", "x", "c", "c", "d", "d", "e", "e", "f", "f"], dtype=object)
    return exit_layer, label, full, audited, gold


def test_agreement_interval_per_layer_and_cost():
    exit_layer, label, full, audited, gold = rows()
    a = summarize_audit(exit_layer, label, full, audited, 4, 0.95, 0.95, gold=gold)
    assert (a["rows"], a["agree"], a["agreement"]) == (10, 9, 0.9)
    assert (a["lower"], a["upper"]) == pytest.approx(binomial_interval(9, 10, 0.95))
    assert a["by_layer"][1] == {"rows": 4, "agree": 3, "agreement": 0.75, **dict(zip(("lower", "upper"), binomial_interval(3, 4, 0.95)))}
    assert a["by_layer"][4]["agreement"] == 1.0 and 2 not in a["by_layer"]
    # the audit ran layers 2..4 for the 4 rows answered at layer 1: 12 extra against 4+24+4 answer layers
    assert a["extra_row_layers"] == 12 and a["extra_cost_fraction"] == pytest.approx(12 / 32)
    assert a["accuracy_exit"] == pytest.approx(0.8) and a["accuracy_full_depth"] == pytest.approx(0.9)
    assert a["status"] == BELOW and not a["significant"]  # estimate 0.90 < 0.95, but the interval reaches it
    assert a["flagged"]  # the default alarm fires on the estimate
    m = flat_metrics(a)
    assert m["audit_agreement"] == 0.9 and m["audit_agreement_layer1"] == 0.75 and m["audit_rows_layer4"] == 6


def test_status_rules():
    exit_layer, label, full, audited, _ = rows()
    assert summarize_audit(exit_layer, label, full, audited, 4, 0.95, 0.85)["status"] == PASS
    by_bound = summarize_audit(exit_layer, label, full, audited, 4, 0.95, 0.95, alarm="bound")
    assert by_bound["status"] == BELOW and not by_bound["flagged"]  # tagged, but not significant enough to fail
    assert summarize_audit(exit_layer, label, full, audited, 4, 0.95, None)["status"] == NO_TARGET
    none = np.zeros(12, dtype=bool)
    assert summarize_audit(exit_layer, label, full, none, 4, 0.95, 0.9)["status"] == NO_SAMPLE
    # a clear drop: 2 of 10 agree, target 0.95 -> flagged under either alarm, and significant
    bad = full.copy()
    bad[2:10] = "z"
    s = summarize_audit(exit_layer, label, bad, audited, 4, 0.95, 0.95, alarm="bound")
    assert s["status"] == BELOW and s["significant"] and s["flagged"]
