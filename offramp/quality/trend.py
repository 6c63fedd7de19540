"""Is this run worse than the recent ones? The nightly trend's rule, on numbers only (the earlier
runs are read from MLflow by pipelines/trend.py).

Every series is better higher. A run drops when its value is below the floor the earlier runs set:

- with at least MIN_HISTORY earlier runs, mean − SIGMAS × sd of them, the sd taken as at least
  NOISE of the mean (earlier runs that agree to the last digit would otherwise flag float noise);
- with fewer, their spread says little: a fixed share of their mean, the series' `tolerance`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

MIN_HISTORY = 5  # earlier runs needed before their spread sets the floor
SIGMAS = 3.0  # a normal night falls below mean − 3 sd about once in 740
NOISE = 0.005  # the least run-to-run spread assumed, as a share of the mean


@dataclass(frozen=True)
class Series:
    metric: str  # the run metric
    label: str  # for the report
    tolerance: float  # with few earlier runs: a drop of more than this share of their mean is flagged


SERIES = (
    Series("audit_agreement", "audit agreement", 0.02),
    Series("early_exit_share", "share exiting before the last layer", 0.10),
    Series("docs_per_second", "docs/s", 0.25),
)


def early_exit_share(histogram: dict[int, int], num_layers: int) -> float:
    """Share of labeled rows that left before the last layer: the exit profile in one number."""
    total = sum(histogram.values())
    return 1 - histogram.get(num_layers, 0) / total if total else 0.0


def floor(history: list[float], series: Series) -> tuple[float, str]:
    """(the lowest value that is not a drop, the rule that set it) for earlier values `history`."""
    mean = statistics.fmean(history)
    if len(history) >= MIN_HISTORY:
        sd = max(statistics.stdev(history), NOISE * abs(mean))
        return mean - SIGMAS * sd, f"mean - {SIGMAS:g} sd of {len(history)} earlier runs"
    return mean * (1 - series.tolerance), f"{100 * series.tolerance:g}% below the mean of {len(history)} earlier runs"


def check_trend(history: list[dict], current: dict) -> dict:
    """Each series across `history` (earlier runs' metrics, oldest first) and this run's `current`:
    {"runs": earlier runs, "series": {metric: {label, values, value, floor, rule, drop}}, "drops": [metric]}.
    A series this run lacks, or no earlier run has, is left out."""
    out = {"runs": len(history), "series": {}, "drops": []}
    for s in SERIES:
        values = [h[s.metric] for h in history if h.get(s.metric) is not None]
        value = current.get(s.metric)
        if value is None or not values:
            continue
        low, rule = floor(values, s)
        drop = value < low
        out["series"][s.metric] = {"label": s.label, "values": values, "value": value, "floor": low, "rule": rule,
                                   "drop": drop}
        if drop:
            out["drops"].append(s.metric)
    return out
