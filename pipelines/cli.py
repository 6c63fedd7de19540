"""The `offramp` command: tag a corpus, train a model, calibrate its thresholds, plan capacity,
serve a model online.

    offramp train --train train.parquet --eval dev.parquet --output models/m [--mechanism smartbert] [--register m]
    offramp calibrate --model models/m --data calib.parquet --min-agreement 0.97
    offramp calibrate --model models:/m/1 --data calib.parquet --min-agreement 0.97   # registers version 2
    offramp tag --input corpus/ --model models/m --output out/ [--config conf/demo.yaml]
    offramp tag --input corpus/ --model models:/m@champion --output out/
    offramp plan --run-id RUN --target-docs-per-hour 5000000
    offramp serve --model models/m [--config conf/serve.yaml]

Every setting of a command is a flag generated from its config class (offramp.config), a key
of the YAML given to --config, and a `--set KEY=VALUE`; `offramp COMMAND --help` lists them
with their defaults. jobs/*.py run the same commands from a checkout or under `ray job submit`.

Exit status: 0 done; 2 a configuration problem, found before any work (the message says the
fix); 3 calibrate could not certify the target, or tag --fail-on-error-rows saw a row it could
not label; 4 tag --audit.fail-below-target and the audit found agreement below the target;
5 tag's output is incomplete (blocks failed within --max-errored-blocks): no manifest, and
--resume runs only the missing rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Callable

from offramp.config import CalibrateConfig, ConfigError, MlflowConfig, PlanConfig, ServeConfig, TagConfig
from offramp.config.cli import add_config_flags, config_from_args
from offramp.config.serve import FLAG_ALIASES as SERVE_ALIASES
from offramp.config.tag import FLAG_ALIASES as TAG_ALIASES

# The commands import their library (torch, ray, mlflow) when they run, not at the top:
# `offramp --help` and a configuration error then answer in a fraction of a second.


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- tag


def tag(cfg: TagConfig) -> int:
    from pipelines.output import write_manifest
    from pipelines.registry import link_run, local_model
    from pipelines.run import run_tagging, validate
    from pipelines.store import check_tracking_uri, tracking_uri
    from pipelines.tracking import log_tag_run, start_run

    check_tracking_uri(cfg.mlflow)
    cfg, registered = local_model(cfg)  # models:/NAME@ALIAS -> the version's directory in the model cache
    plan = validate(cfg)  # configuration errors before an MLflow run is opened
    # the run is open while the pipeline runs: MLflow samples CPU, memory (and GPU) into it meanwhile
    with start_run(cfg.mlflow, "offramp-tag", system_metrics=True) if cfg.mlflow.enabled else contextlib.nullcontext():
        if registered and cfg.mlflow.enabled:
            link_run(registered)
        result = run_tagging(cfg, plan=plan)
        run_id = log_tag_run(cfg, result, num_layers=result.layout[-1].spec.end)
    m = result.metrics
    bad = m["rows"] - m["rows_labeled"]
    line = run_line(result.task, cfg, m)
    print(line + (f"; mlflow run {run_id}" if run_id else ""))
    if result.certificate:
        print("warning: the model's certificate does not cover this run: " + "; ".join(result.certificate)
              + " (--strict refuses such runs)")
    if not result.complete:
        print(f"error: the output is incomplete ({incomplete_line(result)}); no manifest was written. "
              "Fix the cause in the log, then run again with --resume: only the missing rows run (exit status 5)",
              file=sys.stderr)
        return 5
    write_manifest(cfg, result.started, result, run_id, tracking_uri(cfg.mlflow) if run_id else None)
    audit = result.audit
    if audit is not None:
        print(audit_line(audit))
    if cfg.fail_on_error_rows and bad:
        return 3
    if audit is not None and audit["flagged"] and cfg.audit.fail_below_target:
        rule = "its upper bound" if cfg.audit.alarm == "bound" else "the estimate"
        print(f"error: the audit found agreement with full depth below the target ({rule}; exit status 4)",
              file=sys.stderr)
        return 4
    return 0


# what the terminal line calls a row and its work, per task
NOUNS = {"sequence": dict(rows="rows", done="labeled", rate="docs"), "token": dict(rows="sentences", done="tagged", rate="sentences")}


def incomplete_line(result) -> str:
    gone = result.missing
    if gone.get("files_unread"):
        return f"{len(gone['files_unread'])} input file(s) not read to the end, e.g. {gone['files_unread'][0]}"
    if gone["rows_missing"] < 0:
        return f"{-gone['rows_missing']} more rows out than in: rows were written twice"
    return f"{gone['rows_missing']} of {result.rows_in} input rows are not in the output (blocks that failed)"


def run_line(task: str, cfg: TagConfig, m: dict) -> str:
    """One line for the terminal: what came out, how fast, what the exits saved, and how good."""
    n, token = NOUNS[task], task == "token"
    line = f"tagged {m['rows']} {n['rows']}" + (f" ({m['words']} words)" if token else "")
    line += (f" -> {cfg.output}: {m['rows_labeled']} {n['done']}, {m['rows'] - m['rows_labeled']} with an error "
             f"status, {m['rows_status_truncated']} truncated")
    line += f" ({m['words_untagged']} words untagged)" if token else ""
    saved = f"{100 * m['token_layer_saving']:.1f}% of token-layers saved" if token else f"mean layers {m['mean_layers']:.2f}"
    line += f"; {m['docs_per_second']:.1f} {n['rate']}/s"
    if "startup_seconds" in m:  # before the first batch reached the model: a short run pays it in full
        line += f" ({m['startup_seconds']:.1f} s of {m['wall_seconds']:.1f} s to the first batch"
        if "startup_model_load_seconds" in m:
            line += (f": stage actor's process {m['startup_actor_process_seconds']:.1f} s, "
                     f"model {m['startup_model_load_seconds']:.1f} s, "
                     f"waiting for input {m['startup_input_wait_seconds']:.1f} s")
        line += ")"
    line += f", {saved} (ideal {m['ideal_speedup']:.2f}x)"
    for key, name in (("accuracy", "word accuracy" if token else "accuracy"), ("entity_f1", "entity F1")):
        if key in m:
            line += f", {name} {m[key]:.4f}"
    if "accuracy_full_depth" in m:
        exits = m.get("accuracy_exit_on_eval_rows")
        line += (f"; on {m['full_depth_eval_rows']} sampled {n['rows']}: full depth {m['accuracy_full_depth']:.4f}"
                 + (f", exits {exits:.4f}" if exits is not None else ""))
    return line


def audit_line(a: dict) -> str:
    from offramp.quality.audit import verdict

    unit = a.get("unit", "rows")  # token models audit words
    if not a["rows"]:
        return f"audit (fraction {a['fraction']}): {verdict(a)}"
    return (
        f"audit: {a['agree']}/{a['rows']} sampled {unit} agree with full depth = {a['agreement']:.4f} "
        f"({100 * a['confidence']:.0f}% interval {a['lower']:.4f}..{a['upper']:.4f}); "
        f"extra cost {100 * a['extra_cost_fraction']:.2f}% of {unit[:-1]}-layers; {verdict(a)}"
    )


# ---------------------------------------------------------------- train


def train(cfg) -> int:
    from offramp.training import save_trained, train_exits
    from pipelines.registry import certificate_tags, register_model_dir
    from pipelines.store import check_tracking_uri
    from pipelines.tracking import log_train_run, start_run

    check_tracking_uri(cfg.mlflow)
    model, tokenizer, report = train_exits(cfg)
    save_trained(model, tokenizer, report, cfg.output)
    run_id = ""
    if cfg.mlflow.enabled:
        with start_run(cfg.mlflow, "offramp-train"):
            run_id = log_train_run(cfg, report, cfg.output)
            if cfg.register:  # the version's run is the training run
                version = register_model_dir(cfg.output, cfg.register, cfg.max_length,
                                             certificate_tags(report.calibration))
                print(f"registered {cfg.output} as models:/{cfg.register}/{version.version}")
    c, full, cert = report.chosen, report.curve[0], report.calibration
    stored = "stored thresholds UNCERTIFIED (see the warning above)"
    if cert:
        saved = (f"{100 * cert['token_layer_saving']:.1f}% of token-layers" if report.task == "token"
                 else f"{cert['mean_layers']:.2f} mean layers")
        stored = (f"stored thresholds certified on {cert['rows']} held-out {'sentences' if report.task == 'token' else 'rows'}: "
                  f"{saved} ({cert['ideal_speedup']:.2f}x ideal), drop bound {100 * cert['risk_bound']:.2f} pt "
                  f"at confidence {cert['confidence']:.2f}")
    if report.task == "token":
        what, key = ("entity F1", "f1") if "f1" in full else ("word accuracy", "accuracy")
        print(
            f"saved {cfg.output}: dev {what} {full[key]:.4f} at full depth, "
            f"{c[key]:.4f} with {model.config.token_exit_mode}-level exits saving "
            f"{100 * c['token_layer_saving']:.1f}% of token-layers ({c['ideal_speedup']:.2f}x ideal); "
            f"{stored}; mlflow run {run_id}"
        )
        return 0
    print(
        f"saved {cfg.output}: dev accuracy {full['accuracy']:.4f} at full depth, "
        f"{c['accuracy']:.4f} with exits at {c['mean_layers']:.2f} mean layers "
        f"({c['ideal_speedup']:.2f}x ideal); {stored}; mlflow run {run_id}"
    )
    return 0


# ---------------------------------------------------------------- calibrate


def calibrate(cfg: CalibrateConfig) -> int:
    from pipelines.calibrate import run_calibration

    outcome = run_calibration(cfg)
    print(outcome.summary)
    return 0 if outcome.calibration.certified else 3


# ---------------------------------------------------------------- plan


def plan(cfg: PlanConfig) -> int:
    from offramp.planning.capacity import format_plan, plan_capacity
    from pipelines.store import tracking_uri
    from pipelines.summary import load_summary_file
    from pipelines.tracking import load_run_summary, log_plan

    uri = tracking_uri(MlflowConfig(tracking_uri=cfg.tracking_uri))
    summary = load_run_summary(cfg.run_id, uri) if cfg.run_id else load_summary_file(cfg.summary)
    result = plan_capacity(
        summary,
        target_docs_per_hour=cfg.target_docs_per_hour,
        budget_gpus=cfg.budget_gpus,
        budget_cpus=cfg.budget_cpus,
        headroom=cfg.headroom,
    )
    print(format_plan(result))
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    if cfg.log:
        log_plan(result, cfg.run_id, uri)
        print(f"logged capacity_plan.json to mlflow run {cfg.run_id}")
    return 0


# ---------------------------------------------------------------- serve


def serve(cfg: ServeConfig) -> int:
    from pipelines.serve import run_serve

    run_serve(cfg)  # blocks until interrupted
    return 0


# ---------------------------------------------------------------- the command line


def _train_config():
    # TrainConfig is assembled from the mechanisms' files, which import torch
    from offramp.training.config import TrainConfig

    return TrainConfig


@dataclass(frozen=True)
class Command:
    config: Callable  # the config class, or a function returning it (imported late)
    run: Callable  # config -> exit status
    help: str  # one line, for `offramp --help`
    description: str  # for `offramp COMMAND --help`
    aliases: dict = field(default_factory=dict)  # extra flag names (offramp.config.cli.add_config_flags)


COMMANDS = {
    "tag": Command(
        TagConfig, tag,
        "label every document of a corpus with an early-exit model on Ray Data; log the run to MLflow",
        """Label every document of a corpus with an early-exit model on Ray Data; log the run to MLflow.

    offramp tag --input corpus/ --model models/m --output out/ [--config conf/demo.yaml]
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/tag_corpus.py --config conf/<job>.yaml

Exit status 3 with --fail-on-error-rows when a row could not be labeled; 4 with
--fail-below-target when the audit finds agreement with full depth below the target.""",
        TAG_ALIASES,
    ),
    "train": Command(
        _train_config, train,
        "fine-tune an early-exit classifier or tagger and save it for tagging",
        """Fine-tune an early-exit classifier or tagger and save it for `offramp tag`.

    offramp train --train train.parquet --eval dev.parquet --output models/m \\
        [--mechanism deebert|pabee|berxit|de3|smartbert] [--base-model DIR | --init-from MODEL] \\
        [--config conf/train.yaml] [--set stage1_epochs=1] [--smartbert.sparsity-weight 0.1]

--register NAME logs the saved model with the MLflow run and registers it as NAME's next version
(models:/NAME/VERSION for calibrate, tag and serve).

Sequence labeling (a list of tags per row, e.g. ../shared/data/debian_pos) is detected from the
label column, or forced with --task token:

    offramp train --train train.parquet --eval dev.parquet --output models/pos \\
        --text-column tokens --label-column pos [--token.exit-mode sentence]""",
    ),
    "calibrate": Command(
        CalibrateConfig, calibrate,
        "certify exit thresholds for a quality target and write them into the model directory",
        """Certify exit thresholds for a quality target and write them into the model directory.

    offramp calibrate --model M --data calib.parquet --min-agreement 0.97 [--confidence 0.9]
    offramp calibrate --model M --data calib.parquet --label-column label --max-accuracy-drop 0.01
    offramp calibrate --model models:/NAME/3 --data calib.parquet --min-agreement 0.97

A registered model (models:/NAME/VERSION or models:/NAME@ALIAS) is calibrated in a copy, registered
as NAME's next version with the certificate as its tags; the source version is left unchanged.

With probability at least --confidence over the draw of the calibration rows, the written
thresholds meet the target on the traffic those rows were drawn from (Learn then Test,
fixed-sequence along a threshold path, exact tests: see offramp/quality/calibration.py). By
default a seeded 30% of the rows shapes a per-layer path (one threshold per head, moved by one
parameter) and the rest certify; --path global tests one threshold for every head. The record
keeps the policy, max_length and dtype it was made under: a tagging run that differs warns,
and --strict refuses it. Exit status 3 when not
even the most conservative exiting threshold can be certified (the model is left unchanged);
the message says how many rows would be needed.""",
    ),
    "plan": Command(
        PlanConfig, plan,
        "size the actor pools for a throughput target or a GPU/CPU budget, from a measured tagging run",
        """Size the actor pools for a throughput target or a GPU/CPU budget, from a measured tagging run.

    offramp plan --run-id ID --target-docs-per-hour 5000000
    offramp plan --run-id ID --budget-gpus 8 [--headroom 1.25] [--json plan.json] [--log]
    offramp plan --summary run_summary.json --budget-gpus 8""",
    ),
    "serve": Command(
        ServeConfig, serve,
        "answer texts over HTTP with an early-exit model on Ray Serve, batched by tokens; blocks",
        """Answer texts over HTTP with an early-exit model on Ray Serve; blocks until Ctrl-C.

    offramp serve --model models/m [--config conf/serve.yaml] [--port 8000] [--num-replicas 2]
    curl -s localhost:8000/v1/classify -H 'content-type: application/json' -d '{"texts": ["a text"]}'

Each text gets the label, confidence and exit layer a tagging run gives it (token models: words,
tags and each word's layer): the same tokenize step, stage runner and finalize step. Texts of
concurrent requests are batched until max_batch_tokens. Routes: POST /v1/classify, GET /healthz,
GET /readyz, GET /v1/stats (under --route-prefix). The same application for `serve run`:
`serve run pipelines.serve:app_builder model=models/m`.""",
        SERVE_ALIASES,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `offramp` parser: every command listed, the flags of `command` only (building the
    train command's flags imports its mechanisms, and with them torch)."""
    parser = argparse.ArgumentParser(
        prog="offramp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, c in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=c.help,
            description=c.description,
            usage="%(prog)s [--config YAML] [--set KEY=VALUE] [--FLAG VALUE ...]",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == command:
            cls = c.config if isinstance(c.config, type) else c.config()
            add_config_flags(p, cls, c.aliases)
            p.set_defaults(config_cls=cls, run=c.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (2: a configuration problem, reported on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    setup_logging()
    try:
        return args.run(config_from_args(args.config_cls, args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
