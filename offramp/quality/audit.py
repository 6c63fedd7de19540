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


def summarize_audit(
    exit_layer: np.ndarray,  # (N,) answers' exit layers (1-based)
    label: np.ndarray,  # (N,) early-exit labels
    full_label: np.ndarray,  # (N,) full-depth labels (None where not audited)
    audited: np.ndarray,  # (N,) bool, runnable rows only
    num_layers: int,
    confidence: float,
    target: float | None,
    alarm: str = "estimate",
    gold: np.ndarray | None = None,  # (N,) gold labels or None
) -> dict:
    """Agreement on the audit sample with a Clopper-Pearson interval, overall and per exit layer."""
    a = np.asarray(audited, dtype=bool)
    layers = np.asarray(exit_layer, dtype=np.int64)
    agree = np.asarray(label, dtype=object)[a] == np.asarray(full_label, dtype=object)[a]
    n, k = int(a.sum()), int(agree.sum())
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
        "extra_row_layers": int((num_layers - layers[a]).sum()),
        "extra_cost_fraction": float((num_layers - layers[a]).sum() / max(1, layers[layers > 0].sum())),
    }
    for layer in range(1, num_layers + 1):
        at = layers[a] == layer
        if at.any():
            kl, nl = int(agree[at].sum()), int(at.sum())
            lo_l, hi_l = binomial_interval(kl, nl, confidence)
            out["by_layer"][layer] = {"rows": nl, "agree": kl, "agreement": kl / nl, "lower": lo_l, "upper": hi_l}
    if gold is not None and n:
        g = np.asarray(gold, dtype=object)[a]
        has = np.array([x is not None for x in g])
        if has.any():
            out["accuracy_exit"] = float((np.asarray(label, dtype=object)[a][has] == g[has]).mean())
            out["accuracy_full_depth"] = float((np.asarray(full_label, dtype=object)[a][has] == g[has]).mean())
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
