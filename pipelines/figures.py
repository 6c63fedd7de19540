"""Every figure the runs log and the report embeds: matplotlib, drawn headless.

A leaf of `pipelines/`: tracking and the report both draw from here and neither imports the other's figures.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from offramp.planning.capacity import stage_rate, stage_utilization, survival_by_layer  # noqa: E402
from offramp.quality.calibration import Calibration  # noqa: E402


def exit_histogram_figure(hist: dict[int, int], num_layers: int, title: str):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = list(range(1, num_layers + 1))
    ax.bar(layers, [hist.get(l, 0) for l in layers], color="#3a7bd5")
    ax.set_xlabel("exit layer")
    ax.set_ylabel("documents")
    ax.set_xticks(layers)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def survival_figure(summary: dict):
    survival = survival_by_layer(summary)
    layers = list(range(0, len(survival) + 1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.step(layers, [1.0, *survival], where="post", color="#3a7bd5")
    ax.plot(layers, [1.0, *survival], "o", color="#3a7bd5", ms=4)
    for st in summary.get("stages") or []:
        if st["start"] > 0:
            ax.axvline(st["start"], color="#999", ls="--", lw=0.8)
    ax.set_xlabel("layer (dashed: stage boundary)")
    ax.set_ylabel("fraction still running")
    ax.set_xticks(layers)
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    return fig


def stage_figure(summary: dict):
    stages = summary.get("stages") or []
    names = [f"stage {st['index']}\nlayers {st['start'] + 1}-{st['end']}" for st in stages]
    rates = [stage_rate(st) or 0.0 for st in stages]
    util = [0.0 if math.isnan(u) else u for u in stage_utilization(summary)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.5))
    a1.bar(names, rates, color="#3a7bd5")
    a1.set_ylabel("documents per actor-second")
    a2.bar(names, [100 * u for u in util], color="#e08a3c")
    a2.set_ylabel("utilization (% of actor time busy)")
    a2.set_ylim(0, max([100, *(100 * u for u in util)]) * 1.05)
    fig.tight_layout()
    return fig


def audit_figure(audit: dict):
    rows = [(int(k), v) for k, v in (audit.get("by_layer") or {}).items() if v.get("rows")]
    by_layer = sorted(rows, key=lambda kv: kv[0])  # (exit layer, its audit counts)
    layers = [k for k, _ in by_layer]
    agree = [v["agreement"] for _, v in by_layer]
    lower = [v["agreement"] - v["lower"] for _, v in by_layer]
    upper = [v["upper"] - v["agreement"] for _, v in by_layer]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(layers, agree, yerr=[lower, upper], fmt="o", capsize=4, color="#3a7bd5", label="agreement")
    for layer, v in by_layer:
        ax.annotate(f"n={v['rows']}", (layer, v["agreement"]), xytext=(6, 0), textcoords="offset points", fontsize=8)
    if audit.get("target") is not None:
        ax.axhline(audit["target"], color="#c0392b", ls="--", lw=1, label=f"target {audit['target']:g}")
    ax.set_xlabel("exit layer")
    ax.set_ylabel("agreement with full depth")
    ax.set_xticks(layers)
    ax.set_ylim(min([*(v["lower"] for _, v in by_layer), 0.5]) - 0.02, 1.02)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig



def tradeoff_figure(result: Calibration):
    """Observed risk against mean layers, certified candidates marked, the certified bound where
    the curve has one (agreement targets); the target and the chosen point."""
    t = result.target
    pts = result.curve[1:] or result.curve
    scale, unit = (100, "points") if t.mode == "accuracy" else (100, "% of rows")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = [q["mean_layers"] for q in pts]
    ax.plot(x, [scale * q["risk"] for q in pts], ".-", ms=3, label="observed")
    cert = [q for q in pts if q["certified"]]
    ax.plot([q["mean_layers"] for q in cert], [scale * q["risk"] for q in cert], "o", ms=4, mfc="none",
            label=f"certified at confidence {t.confidence:.2f}")
    bound = [q for q in pts if np.isfinite(q.get("risk_bound", np.nan))]
    if bound:
        ax.plot([q["mean_layers"] for q in bound], [scale * q["risk_bound"] for q in bound], ".-", ms=3,
                label=f"bound at confidence {t.confidence:.2f}")
    ax.axhline(scale * t.max_risk, color="k", ls="--", lw=1, label="target")
    if result.certified:
        ax.plot([result.point["mean_layers"]], [scale * result.point["risk"]], "r*", ms=14, label="chosen")
    ax.invert_xaxis()
    ax.set_xlabel("mean layers executed (calibration set)")
    ax.set_ylabel(("accuracy drop" if t.mode == "accuracy" else "disagreement with full depth") + f" ({unit})")
    ax.set_ylim(bottom=min(0, scale * min(q["risk"] for q in pts)) - 0.2, top=max(4 * scale * t.max_risk, 1))
    ax.legend(fontsize=8)
    ax.set_title(f"{t.describe()} ({result.path} path)")
    fig.tight_layout()
    return fig


def trend_figure(trend: dict):
    """One panel per series: the earlier runs (oldest left), this run (red when it dropped) and the
    floor it was judged against (offramp.quality.trend)."""
    series = trend["series"]
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3.2), squeeze=False)
    for ax, s in zip(axes[0], series.values()):
        x = list(range(-len(s["values"]), 1))
        ax.plot(x, [*s["values"], s["value"]], ".-", color="#3a7bd5", ms=5)
        ax.plot([0], [s["value"]], "o", color="#c0392b" if s["drop"] else "#27ae60", ms=8)
        ax.axhline(s["floor"], color="#999", ls="--", lw=1, label="floor")
        ax.set_title(s["label"], fontsize=9)
        ax.set_xlabel("runs before this one")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
