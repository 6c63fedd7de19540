"""Sequence labeling with early exit: SENTEE vs TOKEE on debian_pos (BENCHMARKS.md).

    python benchmarks/bench_tokens.py --model pos=DIR --model ner=DIR \
        --test ../shared/data/debian_pos/test.parquet [--test-rows 3000] [--pipeline-rows 2000]

1. Curves (offline, the real TokenShard, test sample): for each model and exit mode, one
   global threshold swept; word accuracy (POS) or entity F1 (NER) against the share of
   token-layers saved. A token-layer is one token computed as a query through one layer; a
   halted token still costs its key/value projections, which this count leaves out and the
   pipeline timing includes.
2. Operating point: with --dev, the cheapest threshold within --max-drop of full depth on a
   seeded dev sample (training's finer grid, both modes); without, the thresholds the model
   stored from dev at training. Also the cheapest test point within --max-drop (oracle).
3. Pipeline: the real Ray pipeline on a seeded test sample at the operating thresholds (2.) and
   at full depth, adjacent in one process, plus a plain Ray Data map_batches over the Hugging
   Face token classifier in the same directory. Realized: the share of the token-layer saving
   that shows up as wall time saved.
One figure (OUT/tokens_tradeoff.png) and OUT/tokens.json, both logged to MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.config import AuditConfig, ExitConfig, MlflowConfig, TagConfig, TokenExitConfig  # noqa: E402
from offramp.quality.entities import is_bio  # noqa: E402
from offramp.models.profile import load_profile  # noqa: E402
from offramp.exits.token_pass import tag_pass  # noqa: E402
from offramp.quality.token_scores import score_pass  # noqa: E402
from offramp.models.checkpoint import load_model  # noqa: E402
from offramp.training.token import choose, sweep_thresholds, word_labels  # noqa: E402
from offramp.text.words import encode_words  # noqa: E402

SWEEP = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.275, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)


def sample(path: str, rows: int, seed: int = 0) -> pa.Table:
    t = pq.read_table(path)
    t = t.filter(pc.greater(pc.fill_null(pc.list_value_length(t["tokens"]), 0), 0))  # debian_pos has none empty; a test copy may
    if rows and rows < t.num_rows:
        t = t.take(np.sort(np.random.default_rng(seed).choice(t.num_rows, rows, replace=False)))
    return t


def quality(p: dict) -> float:
    """The task's score: entity F1 for BIO tag sets, word accuracy otherwise."""
    return p["f1"] if "f1" in p else p["accuracy"]


def curves(name, model_dir, table, args) -> dict:
    model = load_model(model_dir)
    tag_col = args.tags[name]
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = encode_words(tok, table["tokens"].to_pylist(), args.max_length)
    gold = word_labels(table[tag_col].to_pylist(), {n: i for i, n in enumerate(model.labels)})
    L, out = model.num_layers, {"metric": "entity_f1" if is_bio(model.labels) else "accuracy", "tags": tag_col}
    full = score_pass(tag_pass(model, enc, "token", None), gold, model.labels, L)
    out["full_depth"] = {k: v for k, v in full.items() if k != "entity"}
    stored = model.config.exit_thresholds[0]
    for mode in ("token", "sentence"):
        pts = []
        for t in SWEEP:
            p = score_pass(tag_pass(model, enc, mode, t), gold, model.labels, L)
            pts.append({"threshold": t, **{k: v for k, v in p.items() if k != "entity"}})
            print(f"{name} {mode} {t}: {quality(pts[-1]):.4f} saving {pts[-1]['token_layer_saving']:.3f}", flush=True)
        ok = [p for p in pts if quality(p) >= quality(full) - args.max_drop]
        out[mode] = {"curve": pts, "test_oracle": max(ok, key=lambda p: p["token_layer_saving"]) if ok else None}
    chosen = load_profile(model_dir).get("token_chosen", {})
    out["threshold_source"] = "stored at training"
    if args.dev:
        dev = sample(args.dev, args.dev_rows, seed=2)
        dev_enc = encode_words(tok, dev["tokens"].to_pylist(), args.max_length)
        dev_gold = word_labels(dev[tag_col].to_pylist(), {n: i for i, n in enumerate(model.labels)})
        chosen = {mode: choose(sweep_thresholds(model, dev_enc, dev_gold, model.labels, mode), args.max_drop)
                  for mode in ("token", "sentence")}
        out["threshold_source"] = f"dev sweep, {dev.num_rows} rows"
        print(f"{name}: dev-chosen thresholds {({m: c['threshold'] for m, c in chosen.items()})}", flush=True)
    for mode in ("token", "sentence"):
        t = (chosen.get(mode) or {}).get("threshold")
        if args.dev and t is None:
            t = -1.0  # dev kept full depth: a threshold no word goes below
        t = stored if t is None and mode == model.config.token_exit_mode else t
        if t is not None:
            p = score_pass(tag_pass(model, enc, mode, t), gold, model.labels, L)
            out[mode]["dev_chosen"] = {"threshold": t, **{k: v for k, v in p.items() if k != "entity"}}
    return out


class HFTagger:
    """What a user writes without offramp: AutoModelForTokenClassification, tags at first sub-words."""

    def __init__(self, model_dir: str, max_length: int, tags: str, threads: int):
        from transformers import AutoModelForTokenClassification

        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
        self.labels = self.model.config.id2label
        self.max_length, self.tags = max_length, tags

    def __call__(self, batch: dict) -> dict:
        words = [list(w) for w in batch["tokens"]]
        enc = self.tok(words, is_split_into_words=True, truncation=True, max_length=self.max_length, padding=True,
                       return_tensors="pt")
        with torch.inference_mode():
            pred = self.model(**enc).logits.argmax(-1)
        tags = []
        for i, w in enumerate(words):
            first = {}
            for pos, wid in enumerate(enc.word_ids(i)):
                if wid is not None and wid not in first:
                    first[wid] = self.labels[int(pred[i, pos])]
            tags.append(json.dumps([first.get(k) for k in range(len(w))]))
        return {"id": batch["id"], "tags": np.array(tags, dtype=object),
                "gold": np.array([json.dumps(list(g)) for g in batch[self.tags]], dtype=object)}


def plain_ray(model_dir, data, tags, args) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    path = os.path.join(args.out, "tok_runs", "plain")
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(data, columns=["id", "tokens", tags]).map_batches(
        HFTagger, fn_constructor_kwargs=dict(model_dir=model_dir, max_length=args.max_length, tags=tags,
                                             threads=os.cpu_count() or 1),
        batch_size=args.batch_size, batch_format="numpy", compute=ActorPoolStrategy(min_size=1, max_size=1))
    ds.write_parquet(path, mode="overwrite")
    wall = time.perf_counter() - t0
    t = pq.read_table(path)
    pairs = [(json.loads(p), json.loads(g)) for p, g in zip(t["tags"].to_pylist(), t["gold"].to_pylist())]
    acc = sum(a == b for p, g in pairs for a, b in zip(p, g)) / sum(len(g) for _, g in pairs)
    return {"rows": t.num_rows, "accuracy": acc, "docs_per_s": t.num_rows / wall, "wall_s": wall}


def pipeline_run(name, model_dir, data, tags, args, exit_cfg) -> dict:
    from pipelines.run import run_tagging

    cfg = TagConfig(input=data, model=model_dir, output=os.path.join(args.out, "tok_runs", name), overwrite=True,
                    words_column="tokens", label_column=tags, max_length=args.max_length, batch_size=args.batch_size,
                    num_stages=args.num_stages, exit=exit_cfg, audit=AuditConfig(fraction=0.0),
                    mlflow=MlflowConfig(enabled=False))
    t0 = time.perf_counter()
    m = run_tagging(cfg).metrics
    wall = time.perf_counter() - t0
    keep = ("rows", "accuracy", "entity_f1", "token_layer_saving", "ideal_speedup", "mean_layers", "words_untagged")
    return {**{k: m[k] for k in keep if k in m}, "docs_per_s": m["rows"] / wall, "wall_s": wall}


def pipelines(models, args, results) -> dict:
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False)
    data = os.path.join(args.out, "tok_pipeline_input.parquet")
    pq.write_table(sample(args.test, args.pipeline_rows, seed=1), data)
    runs = {}
    for name, model_dir in models:
        tags = args.tags[name]
        plain = plain_ray(model_dir, data, tags, args)
        full = pipeline_run(f"{name}_full", model_dir, data, tags, args, ExitConfig(disabled=True))
        tokee_t = results[name]["token"].get("dev_chosen", {}).get("threshold")
        tokee = pipeline_run(f"{name}_tokee", model_dir, data, tags, args, ExitConfig(threshold=tokee_t, token=TokenExitConfig(mode="token")))
        sentee_t = results[name]["sentence"].get("dev_chosen", {}).get("threshold")
        sentee = (pipeline_run(f"{name}_sentee", model_dir, data, tags, args, ExitConfig(threshold=sentee_t, token=TokenExitConfig(mode="sentence")))
                  if sentee_t is not None else None)
        r = {"plain_ray_map_batches": plain, "full": full, "tokee": tokee, "sentee": sentee}
        for key in ("tokee", "sentee"):
            run = r[key]
            if run is None:
                continue
            run["realized_speedup"] = run["docs_per_s"] / full["docs_per_s"]
            run["vs_plain_ray"] = run["docs_per_s"] / plain["docs_per_s"]
            # share of the token-layer saving that became wall time saved
            run["realized_share_of_saving"] = (1 - 1 / run["realized_speedup"]) / max(run["token_layer_saving"], 1e-9)
        runs[name] = r
        print(f"{name}: tokee {tokee['docs_per_s']:.1f}/s, full {full['docs_per_s']:.1f}/s, plain {plain['docs_per_s']:.1f}/s",
              flush=True)
    ray.shutdown()
    return runs


def figure(results) -> plt.Figure:
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        full = 100 * quality(r["full_depth"])
        for mode, label in (("token", "TOKEE"), ("sentence", "SENTEE")):
            c = r[mode]["curve"]
            line, = ax.plot([100 * p["token_layer_saving"] for p in c], [100 * quality(p) for p in c], "o-", ms=3, label=label)
            if "dev_chosen" in r[mode]:
                p = r[mode]["dev_chosen"]
                ax.plot([100 * p["token_layer_saving"]], [100 * quality(p)], "*", ms=12, color=line.get_color())
        ax.axhline(full, color="k", lw=0.8, label="full depth")
        ax.axhline(full - 0.5, color="k", lw=0.8, ls=":", label="full depth - 0.5 pt")
        ax.axvline(50, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("token-layers saved (%)")
        ax.set_ylabel(("entity F1" if r["metric"] == "entity_f1" else "word accuracy") + " (%)")
        ax.set_title(f"debian_pos {name} ({r['tags']}): stars = dev-chosen thresholds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def table(results, runs) -> str:
    lines = ["| model | mode | full depth | dev-chosen threshold: test score (Δ), saving (ideal) | best within 0.5 pt (test) "
             "| pipeline sentences/s exit / full / plain | realized speed-up | share of saving realized |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for mode, label in (("token", "TOKEE"), ("sentence", "SENTEE")):
            p, o = r[mode].get("dev_chosen"), r[mode]["test_oracle"]
            pt = (f"{p['threshold']}: {100 * quality(p):.2f} ({100 * (quality(p) - quality(r['full_depth'])):+.2f}), "
                  f"{100 * p['token_layer_saving']:.1f}% ({p['ideal_speedup']:.2f}×)") if p else "-"
            ot = f"{100 * o['token_layer_saving']:.1f}% ({100 * quality(o):.2f})" if o else "-"
            run = runs.get(name, {}).get("tokee" if mode == "token" else "sentee")
            pipe = real = share = "-"
            if run:
                pipe = (f"{run['docs_per_s']:.1f} / {runs[name]['full']['docs_per_s']:.1f} / "
                        f"{runs[name]['plain_ray_map_batches']['docs_per_s']:.1f}")
                real, share = f"{run['realized_speedup']:.2f}×", f"{100 * run['realized_share_of_saving']:.0f}%"
            lines.append(f"| {name} | {label} | {100 * quality(r['full_depth']):.2f} | {pt} | {ot} | {pipe} | {real} | {share} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--tags", action="append", default=[], metavar="NAME=COLUMN", help="default: pos, ner by name")
    p.add_argument("--test", required=True)
    p.add_argument("--test-rows", type=int, default=3000)
    p.add_argument("--dev", help="choose the operating thresholds on a sample of this split (else: as stored)")
    p.add_argument("--dev-rows", type=int, default=1500)
    p.add_argument("--pipeline-rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-stages", type=int, default=1)
    p.add_argument("--max-drop", type=float, default=0.005)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db")
    p.add_argument("--skip-pipeline", action="store_true")
    args = p.parse_args()
    models = [tuple(m.split("=", 1)) for m in args.model]
    args.tags = {**{n: n if n in ("pos", "ner") else "pos" for n, _ in models}, **dict(t.split("=", 1) for t in args.tags)}
    os.makedirs(args.out, exist_ok=True)
    test = sample(args.test, args.test_rows)
    results = {name: curves(name, d, test, args) for name, d in models}
    runs = {} if args.skip_pipeline else pipelines(models, args, results)
    fig = figure(results)
    fig.savefig(os.path.join(args.out, "tokens_tradeoff.png"), dpi=120)
    summary = {"test_rows": test.num_rows, "pipeline_rows": args.pipeline_rows, "models": dict(models),
               "results": results, "pipeline": runs}
    with open(os.path.join(args.out, "tokens.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = table(results, runs)
    print(md)
    mlflow.set_tracking_uri(args.mlflow_uri)
    mlflow.set_experiment("offramp-bench-tokens")
    with mlflow.start_run():
        mlflow.log_params({"test_rows": test.num_rows, "pipeline_rows": args.pipeline_rows, **{f"model_{n}": d for n, d in models}})
        for name, r in results.items():
            for mode in ("token", "sentence"):
                for p in r[mode]["curve"]:
                    step = int(round(1000 * p["threshold"]))
                    mlflow.log_metric(f"{name}_{mode}_quality", quality(p), step=step)
                    mlflow.log_metric(f"{name}_{mode}_token_layer_saving", p["token_layer_saving"], step=step)
            for key, run in runs.get(name, {}).items():
                if run:
                    mlflow.log_metric(f"{name}_{key}_docs_per_s", run["docs_per_s"])
                    if "realized_speedup" in run:
                        mlflow.log_metric(f"{name}_{key}_realized_speedup", run["realized_speedup"])
        mlflow.log_figure(fig, "tokens_tradeoff.png")
        mlflow.log_dict(summary, "tokens.json")
        mlflow.log_text(md, "tokens_table.md")


if __name__ == "__main__":
    main()
