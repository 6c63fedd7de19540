"""The nightly trend of a tagging run: the experiment's last finished runs read back from MLflow
(driver only) and judged by `offramp.quality.trend`."""

from __future__ import annotations

from mlflow import MlflowClient

from offramp.quality.trend import SERIES, check_trend


def earlier_runs(client: MlflowClient, experiment_id: str, n: int) -> list[dict]:
    """The trend metrics of the experiment's last `n` finished runs, oldest first. The run being
    logged is still RUNNING, so it is not among them."""
    runs = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=n,
    )
    wanted = [s.metric for s in SERIES]
    return [{k: r.data.metrics.get(k) for k in wanted} | {"run_id": r.info.run_id} for r in reversed(runs)]


def run_trend(run_id: str, metrics: dict, n: int) -> dict:
    """This run's trend metrics against the last `n` finished runs of its experiment."""
    client = MlflowClient()
    if n <= 0:
        return check_trend([], metrics)
    return check_trend(earlier_runs(client, client.get_run(run_id).info.experiment_id, n), metrics)
