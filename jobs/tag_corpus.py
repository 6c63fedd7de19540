"""Label every document of a corpus with an early-exit model on Ray Data; log the run to MLflow.

    python jobs/tag_corpus.py --input corpus/ --model models/m --output out/ [--config conf/tag.yaml]
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/tag_corpus.py --config conf/<job>.yaml
"""

import argparse
import sys

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import fail, setup_logging

from offramp.config import ConfigError, TagConfig, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file (see conf/); flags override it")
    p.add_argument("--input", help="Parquet/JSONL/text file or directory, local or a pyarrow URI")
    p.add_argument("--model", help="model directory from jobs/train_exits.py")
    p.add_argument("--output", help="output directory (Parquet)")
    p.add_argument("--input-format", help="auto, parquet, jsonl or text")
    p.add_argument("--text-column")
    p.add_argument("--words-column", help="token models: a column with each row's words (list of str)")
    p.add_argument("--id-column")
    p.add_argument("--label-column", help="gold labels: accuracy is measured and logged")
    p.add_argument("--passthrough", help="comma-separated input columns copied to the output")
    p.add_argument("--policy", help="exit policy (default: the model's): entropy, max_prob, patience, learned, hybrid")
    p.add_argument("--threshold", type=float, help="one exit threshold for every head")
    p.add_argument("--no-exits", action="store_true", help="run every row to full depth")
    p.add_argument("--exit-mode", help="token models: token (TOKEE, per word) or sentence (SENTEE)")
    p.add_argument("--window", type=int, help="token models, TOKEE: words on each side of a word's window")
    p.add_argument("--no-skip-gates", action="store_true", help="SmartBERT models: every row runs every layer it reaches")
    p.add_argument("--num-stages", type=int, help="split the layers over this many actor pools")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--fail-on-error-rows", action="store_true", help="exit 3 if any row could not be labeled")
    p.add_argument("--audit-fraction", type=float, help="share of rows also run to full depth (default 0.01)")
    p.add_argument("--audit-target", type=float, help="minimum agreement with full depth (default: the calibrated one)")
    p.add_argument(
        "--fail-below-target", action="store_true", help="exit 4 if the audit finds agreement below the target"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. ray.num_cpus=4")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    overrides = {
        "input": args.input,
        "model": args.model,
        "output": args.output,
        "input_format": args.input_format,
        "text_column": args.text_column,
        "words_column": args.words_column,
        "exit.mode": args.exit_mode,
        "exit.window": args.window,
        "id_column": args.id_column,
        "label_column": args.label_column,
        "passthrough_columns": args.passthrough,
        "exit.policy": args.policy,
        "exit.threshold": args.threshold,
        "exit.disabled": True if args.no_exits else None,
        "exit.skip_gates": False if args.no_skip_gates else None,
        "num_stages": args.num_stages,
        "overwrite": True if args.overwrite else None,
        "audit.fraction": args.audit_fraction,
        "audit.target_agreement": args.audit_target,
        "audit.fail_below_target": True if args.fail_below_target else None,
    }
    try:
        cfg = load_config(TagConfig, args.config, overrides, args.set)
        from pipelines.run import run_tagging
        from pipelines.tracking import log_tag_run

        result = run_tagging(cfg)
    except ConfigError as e:
        fail(str(e))
    m = result.metrics
    run_id = log_tag_run(cfg, result, num_layers=result.layout[-1].spec.end)
    bad = m["rows"] - m["rows_labeled"]
    if "token_layers" in m:
        print(token_line(cfg, m) + (f"; mlflow run {run_id}" if run_id else ""))
        return 3 if args.fail_on_error_rows and bad else 0
    line = (
        f"tagged {m['rows']} rows -> {cfg.output}: {m['rows_labeled']} labeled, {bad} with an error status, "
        f"{m['rows_status_truncated']} truncated; {m['docs_per_second']:.1f} docs/s, "
        f"mean layers {m['mean_layers']:.2f} (ideal {m['ideal_speedup']:.2f}x)"
    )
    if "accuracy" in m:
        line += f", accuracy {m['accuracy']:.4f}"
    if "accuracy_full_depth" in m:
        line += f" (full depth {m['accuracy_full_depth']:.4f} on {m['full_depth_eval_rows']} rows)"
    print(line + (f"; mlflow run {run_id}" if run_id else ""))
    audit = result.audit
    if audit is not None:
        print(audit_line(audit))
    if args.fail_on_error_rows and bad:
        return 3
    if audit is not None and audit["flagged"] and cfg.audit.fail_below_target:
        rule = "its upper bound" if cfg.audit.alarm == "bound" else "the estimate"
        print(f"error: the audit found agreement with full depth below the target ({rule}; exit status 4)",
              file=sys.stderr)
        return 4
    return 0


def token_line(cfg, m: dict) -> str:
    line = (
        f"tagged {m['rows']} sentences ({m['words']} words) -> {cfg.output}: {m['rows_labeled']} tagged, "
        f"{m['rows'] - m['rows_labeled']} with an error status, {m['rows_status_truncated']} truncated "
        f"({m['words_untagged']} words untagged); {m['docs_per_second']:.1f} sentences/s, "
        f"{100 * m['token_layer_saving']:.1f}% of token-layers saved (ideal {m['ideal_speedup']:.2f}x)"
    )
    if "accuracy" in m:
        line += f", word accuracy {m['accuracy']:.4f}"
    if "entity_f1" in m:
        line += f", entity F1 {m['entity_f1']:.4f}"
    if "accuracy_full_depth" in m:
        line += f" (full depth {m['accuracy_full_depth']:.4f} on {m['full_depth_eval_rows']} sentences)"
    return line


def audit_line(a: dict) -> str:
    from offramp.quality.audit import verdict

    if not a["rows"]:
        return f"audit (fraction {a['fraction']}): {verdict(a)}"
    return (
        f"audit: {a['agree']}/{a['rows']} sampled rows agree with full depth = {a['agreement']:.4f} "
        f"({100 * a['confidence']:.0f}% interval {a['lower']:.4f}..{a['upper']:.4f}); "
        f"extra cost {100 * a['extra_cost_fraction']:.2f}% of row-layers; {verdict(a)}"
    )

if __name__ == "__main__":
    sys.exit(main())
