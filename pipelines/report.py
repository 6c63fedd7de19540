"""One self-contained HTML page per tagging run, written for a person: what the run did, where
documents exited, how busy each stage was, how the audit sample agreed, and what to provision.

Plots are matplotlib PNGs embedded as data URIs; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib.pyplot as plt

from offramp.planning.capacity import (
    TABLE_HEADER,
    CapacityPlan,
    exit_histogram,
    num_layers,
    plan_table,
    projection_lines,
)
from offramp.quality.audit import verdict
from pipelines.figures import audit_figure, exit_histogram_figure, stage_figure, survival_figure, trend_figure

NO_PLAN = (
    "No capacity plan was made for this run. Make one with "
    "python jobs/plan_capacity.py --run-id RUN_ID --target-docs-per-hour N (or --budget-gpus / --budget-cpus)."
)
CSS = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.headline { display: flex; flex-wrap: wrap; gap: 1em; }
.headline div { background: #f3f6fa; padding: .5em 1em; border-radius: 4px; }
.headline b { display: block; font-size: 1.4em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .2em .7em; border-bottom: 1px solid #eee; }
#recommendation td, #recommendation th { text-align: right; } img { max-width: 100%; } .muted { color: #666; }
.warn { background: #fdf0e6; border-left: 4px solid #d35400; padding: .5em 1em; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _png(fig) -> str:
    """The figure as a PNG data URI; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(slug: str, title: str, fig) -> str:
    return f'<img id="{slug}" alt="{_e(title)}" src="{_png(fig)}">'


def _table(header, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ---------------------------------------------------------------- sections


def _headline(summary: dict) -> str:
    m = summary.get("metrics") or {}
    items = [
        ("rows", m.get("rows"), "{:,}"),
        ("labeled", m.get("rows_labeled"), "{:,}"),
        ("docs/s", m.get("docs_per_second"), "{:.1f}"),
        ("mean layers", m.get("mean_layers"), "{:.2f}"),
        ("ideal speed-up", m.get("ideal_speedup"), "{:.2f}x"),
        ("accuracy", m.get("accuracy"), "{:.4f}"),
    ]
    cells = [f"<div><b>{_e(fmt.format(v))}</b>{_e(name)}</div>" for name, v, fmt in items if v is not None]
    return f'<div class="headline">{"".join(cells)}</div>'


def _certificate(summary: dict) -> str:
    gaps = summary.get("certificate")
    if gaps is None:
        return ""
    if not gaps:
        c = summary.get("calibration") or {}
        return (f"<p>Thresholds certified: {_e(c.get('mode'))} target {_e(c.get('target'))} at confidence "
                f"{_e(c.get('confidence'))} ({_e(c.get('path', 'global'))} path); this run is covered.</p>")
    return "<p class='warn'><b>Not covered by the model's certificate:</b> " + _e("; ".join(gaps)) + "</p>"


def _settings(summary: dict) -> str:
    run = summary.get("run") or {}
    rows = [(k, v) for k, v in run.items()]
    if summary.get("calibration"):
        rows += [(f"calibration.{k}", v) for k, v in summary["calibration"].items()]
    return f"<details><summary>Run settings</summary>{_table(('setting', 'value'), rows)}</details>" if rows else ""


def _audit_section(summary: dict) -> str:
    audit = summary.get("audit")
    head = "<h2>Audit agreement by exit layer</h2>"
    if not audit or not audit.get("rows"):
        return f"{head}<p>No audit sample: {_e(_no_audit_reason(audit))}</p>"
    text = (
        f"{audit['agree']} of {audit['rows']} audited rows ({100 * audit.get('fraction', 0):g}% sample) got the "
        f"same label at full depth: agreement {audit['agreement']:.3f}, "
        f"{100 * audit.get('confidence', 0.95):g}% interval [{audit['lower']:.3f}, {audit['upper']:.3f}]; "
        f"{verdict(audit)}"
    )
    if audit.get("extra_cost_fraction") is not None:
        text += f". The audit cost {100 * audit['extra_cost_fraction']:.1f}% extra layer work"
    note = "<p class='muted'>Bars show each exit layer's confidence interval; n = audited rows.</p>"
    plot = _img("audit-agreement", "audit agreement by exit layer", audit_figure(audit))
    return f"{head}<p>{_e(text)}.</p>{note}{plot}"


def _no_audit_reason(audit: dict | None) -> str:
    if not audit:
        return "the run did not audit its early exits against full depth."
    return "the audit fraction selected no rows (status no_sample); raise the audit fraction."


def _trend_section(summary: dict) -> str:
    """The nightly trend: this run against the experiment's earlier runs (pipelines/trend.py)."""
    trend = summary.get("trend")
    if trend is None:
        return ""
    head = "<h2>Nightly trend</h2>"
    if not trend["series"]:
        return f"{head}<p>No earlier finished runs in this experiment to compare with.</p>"
    lines = [f"{s['label']}: {s['value']:.4g} against a floor of {s['floor']:.4g} ({s['rule']})"
             + (" — DROP" if s["drop"] else "") for s in trend["series"].values()]
    verdict = ("<p class='warn'><b>This run dropped against the trend:</b> "
               + _e(", ".join(trend["series"][k]["label"] for k in trend["drops"])) + "</p>") if trend["drops"] else ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return f"{head}{verdict}<ul>{items}</ul>{_img('nightly-trend', 'nightly trend', trend_figure(trend))}"


def _recommendation(plan: CapacityPlan | None, no_plan_reason: str | None) -> str:
    if plan is None:
        return f"<h2>Recommendation</h2><p>{_e(no_plan_reason or NO_PLAN)}</p>"
    projections = "".join(f"<li>{_e(line)}</li>" for line in projection_lines(plan))
    assumptions = "".join(f"<li>{_e(a)}</li>" for a in plan.assumptions)
    return (
        '<h2>Recommendation</h2><div id="recommendation">'
        f"{_table(TABLE_HEADER, plan_table(plan))}<ul>{projections}</ul>"
        f"<p>The plan assumes:</p><ul class='muted'>{assumptions}</ul></div>"
    )


def render_report(summary: dict, plan: CapacityPlan | None, no_plan_reason: str | None = None) -> str:
    """The run's report as one HTML page (no external resources)."""
    run = summary.get("run") or {}
    title = f"offramp tagging run {run.get('run_id') or ''}".strip()
    subtitle = " · ".join(f"{k} {run[k]}" for k in ("input", "model", "policy") if run.get(k) is not None)
    hist = exit_histogram(summary)
    L = num_layers(summary)
    parts = [
        f"<h1>{_e(title)}</h1><p class='muted'>{_e(subtitle)}</p>",
        _headline(summary),
        _certificate(summary),
        _settings(summary),
        "<h2>Survival by layer</h2><p>Fraction of labeled documents still running after each layer; "
        "the rest exited early.</p>",
        _img("survival-by-layer", "survival by layer", survival_figure(summary)),
        "<h2>Exit-layer histogram</h2><p>Labeled documents by the layer they exited at.</p>",
        _img("exit-histogram", "exit-layer histogram", exit_histogram_figure(hist, L, "")),
        "<h2>Per-stage throughput and utilization</h2><p>Measured documents per actor-second of each "
        "stage, and the share of wall time its actors spent in batch calls.</p>",
        _img("stage-throughput", "per-stage throughput and utilization", stage_figure(summary)),
        _audit_section(summary),
        _trend_section(summary),
        _recommendation(plan, no_plan_reason),
    ]
    body = "\n".join(p for p in parts if p)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(summary: dict, plan: CapacityPlan | None, path: str, no_plan_reason: str | None = None) -> str:
    """Render the report to `path`; returns the path."""
    Path(path).write_text(render_report(summary, plan, no_plan_reason), encoding="utf-8")
    return str(path)
