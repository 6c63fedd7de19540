"""The nightly trend read back from MLflow: a run after several good runs is flagged when it drops,
not when it is usual; the verdict is a tag and a metric of the run, and a figure in the report."""

from __future__ import annotations

import mlflow
import pytest

from offramp.config import MlflowConfig
from pipelines.report import render_report
from pipelines.tracking import log_trend, start_run
from tests.conftest import make_summary

USUAL = {"audit_agreement": 0.95, "early_exit_share": 0.6, "docs_per_second": 100.0}


@pytest.fixture
def good_nights(tmp_path):
    """Six finished tagging runs with steady figures, and one that failed with terrible ones."""
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    for i in range(6):
        with start_run(cfg, "offramp-tag"):
            mlflow.log_metrics({"audit_agreement": 0.95 + 0.003 * (i % 2), "early_exit_share": 0.6 + 0.01 * (i % 3),
                                "docs_per_second": 100.0 + 2.0 * i})
    with pytest.raises(RuntimeError), start_run(cfg, "offramp-tag"):  # a FAILED run is not a night to compare with
        mlflow.log_metric("docs_per_second", 1.0)
        raise RuntimeError("crashed")
    return cfg


def night(cfg, metrics: dict) -> tuple[dict, mlflow.entities.Run]:
    with start_run(cfg, "offramp-tag") as run:
        mlflow.log_metrics(metrics)
        trend = log_trend(run.info.run_id, metrics, n=14)
    return trend, mlflow.get_run(run.info.run_id)


def test_a_drop_after_good_runs_is_flagged_and_a_usual_run_is_not(good_nights):
    trend, run = night(good_nights, {**USUAL, "docs_per_second": 104.0})
    assert trend["runs"] == 6 and trend["drops"] == []
    assert run.data.tags["offramp.trend"] == "ok" and run.data.metrics["trend_drop"] == 0.0
    trend, run = night(good_nights, {**USUAL, "docs_per_second": 40.0, "audit_agreement": 0.80})  # a forced drop
    assert trend["runs"] == 7 and sorted(trend["drops"]) == ["audit_agreement", "docs_per_second"]
    assert run.data.tags["offramp.trend"] == "drop: audit_agreement, docs_per_second"
    assert run.data.metrics["trend_drop"] == 1.0 and run.data.metrics["trend_drop_docs_per_second"] == 1.0
    assert run.data.metrics["trend_drop_early_exit_share"] == 0.0
    page = render_report({**make_summary(), "trend": trend}, None)
    assert '<img id="nightly-trend" alt="nightly trend" src="data:image/png;base64,' in page
    assert "dropped against the trend" in page and "docs/s: 40 against a floor of" in page


def test_the_first_run_of_an_experiment_has_nothing_to_compare_with(tmp_path):
    trend, run = night(MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"), USUAL)
    assert trend["series"] == {} and run.data.tags["offramp.trend"] == "no earlier runs"
    assert "No earlier finished runs" in render_report({**make_summary(), "trend": trend}, None)
