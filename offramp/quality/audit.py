"""What the in-run audit shows: agreement of early exit with full depth on the audited rows.

Which rows are audited is `offramp.schema.audit_mask` (decided at tokenization). An
audited row still gets its early-exit answer (the output does not change), and it
also runs the remaining layers, so its full-depth prediction is known; agreement
between the two on the sample estimates agreement on the whole run.
"""

from __future__ import annotations

import numpy as np

from offramp.quality.stats import binomial_interval

PASS, BELOW, NO_TARGET, NO_SAMPLE = "pass", "below_target", "no_target", "no_sample"


def audit_counts(
    exit_layer: np.ndarray,  # (N,) answers' exit layers (1-based)
    label: np.ndarray,  # (N,) early-exit labels
    full_label: np.ndarray,  # (N,) full-depth labels (None where not audited)
    audited: np.ndarray,  # (N,) bool, runnable rows only
    num_layers: int,
    gold: np.ndarray | None = None,  # (N,) gold labels or None
) -> dict:
    """What the audit needs from one batch of output rows, as counts that add up over batches
    (so a run of any size is summarized in bounded memory)."""
    a = np.asarray(audited, dtype=bool)
    layers = np.asarray(exit_layer, dtype=np.int64)
    agree = np.asarray(label, dtype=object)[a] == np.asarray(full_label, dtype=object)[a]
    at = layers[a]
    c = {
        "rows_by_layer": np.bincount(at, minlength=num_layers + 1)[: num_layers + 1],
        "agree_by_layer": np.bincount(at[agree], minlength=num_layers + 1)[: num_layers + 1],
        "extra_row_layers": int((num_layers - at).sum()),
        "answer_layers": int(layers[layers > 0].sum()),
        "gold_rows": 0, "right_exit": 0, "right_full": 0,
    }
    if gold is not None and a.any():
        g = np.asarray(gold, dtype=object)[a]
        has = np.array([x is not None for x in g], dtype=bool)
        c["gold_rows"] = int(has.sum())
        c["right_exit"] = int((np.asarray(label, dtype=object)[a][has] == g[has]).sum())
        c["right_full"] = int((np.asarray(full_label, dtype=object)[a][has] == g[has]).sum())
    return c


def audit_summary(c: dict, confidence: float, target: float | None, alarm: str = "estimate") -> dict:
    """Agreement on the audit sample with a Clopper-Pearson interval, overall and per exit layer,
    from `audit_counts` (summed over the run's batches)."""
    n, k = int(c["rows_by_layer"].sum()), int(c["agree_by_layer"].sum())
    lo, hi = binomial_interval(k, n, confidence)
    out = {
        "rows": n,
        "agree": k,
        "agreement": k / n if n else None,
        "lower": lo,
        "upper": hi,
        "confidence": confidence,
        "target": target,
        "alarm": alarm,
        "by_layer": {},
        # layers the audit ran beyond each audited row's answer, against the answers' own layers
        "extra_row_layers": c["extra_row_layers"],
        "extra_cost_fraction": float(c["extra_row_layers"] / max(1, c["answer_layers"])),
    }
    for layer in np.flatnonzero(c["rows_by_layer"]):
        kl, nl = int(c["agree_by_layer"][layer]), int(c["rows_by_layer"][layer])
        lo_l, hi_l = binomial_interval(kl, nl, confidence)
        out["by_layer"][int(layer)] = {"rows": nl, "agree": kl, "agreement": kl / nl, "lower": lo_l, "upper": hi_l}
    if c["gold_rows"]:
        out["accuracy_exit"] = c["right_exit"] / c["gold_rows"]
        out["accuracy_full_depth"] = c["right_full"] / c["gold_rows"]
    if n == 0:
        out["status"] = NO_SAMPLE
    elif target is None:
        out["status"] = NO_TARGET
    else:
        out["status"] = BELOW if k / n < target else PASS
    out["significant"] = bool(n and target is not None and hi < target)  # even the upper bound misses it
    # what fails the job (audit.fail_below_target): the estimate, or only a significant drop
    out["flagged"] = out["significant"] if alarm == "bound" else out["status"] == BELOW
    return out


def summarize_audit(exit_layer, label, full_label, audited, num_layers: int, confidence: float,
                    target: float | None, alarm: str = "estimate", gold=None) -> dict:
    """The audit of rows held in memory at once: `audit_summary` of their `audit_counts`."""
    return audit_summary(audit_counts(exit_layer, label, full_label, audited, num_layers, gold), confidence, target, alarm)


def flat_metrics(audit: dict) -> dict:
    """The audit as flat MLflow metrics."""
    m = {f"audit_{k}": float(audit[k]) for k in ("rows", "lower", "upper", "extra_row_layers", "extra_cost_fraction")}
    if audit["agreement"] is not None:
        m["audit_agreement"] = audit["agreement"]
    if audit["target"] is not None:
        m["audit_target"] = audit["target"]
    for k in ("accuracy_exit", "accuracy_full_depth"):
        if k in audit:
            m[f"audit_{k}"] = audit[k]
    for layer, v in audit["by_layer"].items():
        m[f"audit_rows_layer{layer}"] = float(v["rows"])
        m[f"audit_agreement_layer{layer}"] = v["agreement"]
    return m


def verdict(audit: dict) -> str:
    """The audit's outcome in words, for the terminal and the report."""
    if audit["status"] == NO_TARGET:
        return "no target (set --audit-target or calibrate the model with jobs/calibrate.py)"
    if audit["status"] == NO_SAMPLE:
        return "no row was sampled; raise --audit-fraction for a small corpus"
    line = f"target {audit['target']:.4f}: "
    if audit["status"] == PASS:
        return line + "PASS (the estimate meets it)"
    return line + "BELOW TARGET " + (
        "(significant: the whole interval is below)" if audit.get("significant") else "(the interval still reaches it)"
    )
