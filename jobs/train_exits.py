"""Fine-tune an early-exit classifier or tagger and save it for tag_corpus.py.

    python jobs/train_exits.py --train train.parquet --eval dev.parquet --output models/m \
        [--mechanism deebert|pabee|berxit|de3|smartbert] [--base-model DIR | --init-from MODEL] \
        [--config conf/train.yaml] [--set stage1_epochs=1]

Sequence labeling (a list of tags per row, e.g. ../shared/data/debian_pos) is detected from the
label column, or forced with --task token:

    python jobs/train_exits.py --train train.parquet --eval dev.parquet --output models/pos \
        --text-column tokens --label-column pos [--set token_exit_mode=sentence]
"""

import argparse

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import fail, setup_logging

from offramp.config import ConfigError, TrainConfig, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file (see conf/); flags override it")
    p.add_argument("--train", help="labeled training data (Parquet/JSONL/CSV or hub name)")
    p.add_argument("--eval", help="labeled dev data for per-layer accuracy and thresholds")
    p.add_argument("--output", help="model directory to write")
    p.add_argument("--base-model", help="local Hugging Face BERT checkpoint (default: pip-shipped MiniLM-L6)")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--mechanism", help="exit mechanism and training recipe: deebert, pabee, berxit, de3, smartbert")
    p.add_argument("--init-from", help="warm start from an offramp model directory with the same labels")
    p.add_argument("--policy", help="exit policy stored with the model (default: the mechanism's own)")
    p.add_argument("--task", help="sequence, token (a tag per word) or auto (default: from the label column)")
    p.add_argument("--max-train-rows", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. lr=3e-5")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        cfg = load_config(
            TrainConfig,
            args.config,
            {
                "train": args.train,
                "eval": args.eval,
                "output": args.output,
                "base_model": args.base_model,
                "text_column": args.text_column,
                "label_column": args.label_column,
                "policy": args.policy,
                "mechanism": args.mechanism,
                "init_from": args.init_from,
                "max_train_rows": args.max_train_rows,
                "task": args.task,
            },
            args.set,
        )
        from offramp.training.token import is_token_data
        from pipelines.tracking import log_train_run

        cfg.require("train", "eval", "output")
        token = cfg.task == "token" or (cfg.task == "auto" and is_token_data(cfg.train, cfg.label_column))
        if token:
            from offramp.training.token import save_token_trained as save, train_token_exits as train
        else:
            from offramp.training.loop import save_trained as save, train_early_exit as train
        model, tokenizer, report = train(cfg)
    except ConfigError as e:
        fail(str(e))
    save(model, tokenizer, report, cfg.output)
    run_id = log_train_run(cfg, report, cfg.output)
    if token:
        c, full = report.chosen, report.curve[0]
        what, key = ("entity F1", "f1") if "f1" in full else ("word accuracy", "accuracy")
        print(
            f"saved {cfg.output}: dev {what} {full[key]:.4f} at full depth, "
            f"{c[key]:.4f} with {model.config.token_exit_mode}-level exits saving "
            f"{100 * c['token_layer_saving']:.1f}% of token-layers ({c['ideal_speedup']:.2f}x ideal); mlflow run {run_id}"
        )
        return 0
    print(
        f"saved {cfg.output}: dev accuracy {report.curve[0]['accuracy']:.4f} at full depth, "
        f"{report.chosen['accuracy']:.4f} with exits at {report.chosen['mean_layers']:.2f} mean layers "
        f"({report.chosen['ideal_speedup']:.2f}x ideal); mlflow run {run_id}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
