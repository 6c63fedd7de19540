"""The papers' exit mechanisms side by side: accuracy against layers computed, and what the pipeline realizes.

    python benchmarks/bench_mechanisms.py \
        --model deebert=DIR --model pabee=DIR --model berxit=DIR --model de3=DIR --model smartbert=DIR \
        --dev ../shared/data/debian_sections/dev.parquet --test ../shared/data/debian_sections/test.parquet

Per model, each with its mechanism's own exit policy (offramp.training.mechanisms; the policy in
config.json is whatever the training config set, and it once pinned entropy for all):
1. One full-depth pass over dev and test rows gives every head's output (and SmartBERT's
   gate decisions); cached in OUT/mech_cache/.
2. Test curve: accuracy vs mean layers *computed* (skipped layers are free) over a sweep of
   one global threshold. Operating point: the fastest threshold on dev within --max-drop of
   dev full depth, then measured on test. Oracle: the same rule applied to the test curve
   itself (the issue's "best ideal speed-up at most 1 point below its full-depth accuracy").
   Dev and test rows are seeded random samples (the files are ordered by package).
3. Pipeline: the real Ray pipeline on a seeded sample of --pipeline-rows test rows, at the operating
   threshold and at full depth (exits off, gates off: every layer for every row), adjacent
   in one process; plus, first, a plain Ray Data map_batches over the DeeBERT model's directory
   as a Hugging Face classifier. SmartBERT: rows that skipped a layer before their exit.
One figure (OUT/mechanisms_tradeoff.png) and OUT/mechanisms.json; both logged to MLflow.
--combine A.json B.json: no measurement, one figure (OUT/mechanisms_all.png) over earlier runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.exits import simulate  # noqa: E402
from offramp.config import AuditConfig, ExitConfig, MlflowConfig, TagConfig  # noqa: E402
from offramp.training.mechanisms import get_mechanism  # noqa: E402
from offramp.models.checkpoint import ModelInfo, load_model  # noqa: E402
from offramp.policies import get_policy  # noqa: E402
from offramp.training.loop import full_pass  # noqa: E402


def rows(path: str) -> pa.Table:
    t = pq.read_table(path, columns=["id", "text", "label"])
    return t.filter(pc.is_valid(t["text"]))


def sample(t: pa.Table, limit: int, seed: int = 0) -> pa.Table:
    """A seeded random sample of `limit` rows in file order (all when 0). The files are ordered by
    package, so their first rows are not representative: dev's first 1,500 score 10 points lower."""
    if not limit or limit >= t.num_rows:
        return t
    return t.take(np.sort(np.random.default_rng(seed).choice(t.num_rows, limit, replace=False)))


def head_pass(name, model_dir, table, split, max_length, cache_dir) -> tuple[simulate.HeadPass, np.ndarray]:
    """The model's full-depth HeadPass on `table` and gold ids, cached per (model, split).

    The cache is reused only for the same row ids and max length: a row count alone would
    silently reuse a pass over a different sample."""
    path = os.path.join(cache_dir, f"{name}_{split}.npz")
    info = ModelInfo.read(model_dir)
    ids = np.asarray(table["id"].to_pylist()).astype(str)  # (N,)
    gold = np.array([info.labels.index(g) if g in info.labels else -1 for g in table["label"].to_pylist()])  # (N,)
    if os.path.exists(path):
        d = np.load(path)
        if "ids" in d and np.array_equal(d["ids"], ids) and int(d["max_length"]) == max_length:
            return simulate.HeadPass(d["logits"], d["signal"] if d["signal"].size else None, d["skipped"] if d["skipped"].size else None), gold
    model = load_model(model_dir)
    hp = full_pass(model, AutoTokenizer.from_pretrained(model_dir), table["text"].to_pylist(), max_length)
    empty = np.zeros(0)
    np.savez(path, logits=hp.logits, signal=hp.signal if hp.signal is not None else empty,
             skipped=hp.skipped if hp.skipped is not None else empty, ids=ids, gold=gold, max_length=max_length)
    return hp, gold


def point_at(hp, gold, exit_layers, policy, threshold) -> dict:
    """Accuracy, layers computed and SmartBERT skip counts on `hp` at one threshold."""
    scores = simulate.head_scores(policy, hp, exit_layers)
    first = simulate.first_exit(scores, policy, threshold)  # (N,)
    computed = simulate.computed_layers(simulate.layer_costs(hp, exit_layers), first)
    pred = hp.preds[np.arange(len(hp)), first]
    p = {"threshold": float(threshold), "accuracy": float((pred == gold).mean()), "mean_layers": float(computed.mean()),
         "ideal_speedup": exit_layers[-1] / float(computed.mean())}
    if hp.skipped is not None:
        p.update(skip_stats(hp.skipped, np.asarray(exit_layers)[first]))
    return p


def skip_stats(skipped: np.ndarray, exit_layer: np.ndarray) -> dict:
    """SmartBERT: skipping without exiting. `skipped` (N, L) from the full pass, `exit_layer` (N,).

    Only gates a row meets before its exit count; a gate at a layer the row never reaches
    decided nothing. The per-layer rate is over the rows that reach that layer."""
    reached = np.arange(1, skipped.shape[1] + 1)[None, :] <= exit_layer[:, None]  # (N, L)
    before_exit = skipped & reached  # (N, L)
    per_row = before_exit.sum(1)  # (N,)
    rate = before_exit.sum(0) / np.maximum(reached.sum(0), 1)  # (L,)
    return {"rows": len(skipped), "rows_skipping": int((per_row > 0).sum()), "layers_saved_by_skipping": int(per_row.sum()),
            "skip_rate_by_layer": [float(r) for r in rate],
            "skip_rate_by_layer_full_depth": [float(r) for r in skipped.mean(0)]}


def offline(name, model_dir, dev, test, args, cache_dir) -> dict:
    info = ModelInfo.read(model_dir)
    # each mechanism with its own exit rule unless --policy names another for this model
    policy = get_policy(args.policies.get(name) or get_mechanism(info.mechanism).policy)
    layers = info.exit_layers
    hp_dev, gold_dev = head_pass(name, model_dir, dev, "dev", args.max_length, cache_dir)
    hp_test, gold_test = head_pass(name, model_dir, test, "test", args.max_length, cache_dir)
    dev_curve = simulate.sweep(hp_dev, gold_dev, layers, policy, points=120)
    test_curve = simulate.sweep(hp_test, gold_test, layers, policy, points=120)
    chosen = simulate.choose(dev_curve, args.max_drop)
    return {
        "policy": policy.name,
        "mechanism": info.mechanism,
        "full_depth_accuracy": test_curve[0]["accuracy"],
        "full_depth_ideal_speedup": test_curve[0]["ideal_speedup"],
        "dev_full_depth_accuracy": dev_curve[0]["accuracy"],
        "dev_chosen": chosen,
        "test_at_dev_choice": point_at(hp_test, gold_test, layers, policy, chosen["threshold"]),
        "test_oracle": simulate.choose(test_curve, args.max_drop),
        "test_curve": test_curve,
    }


def pipeline_run(name, model_dir, data, out, args, exit_cfg) -> dict:
    cfg = TagConfig(
        input=data, model=model_dir, output=os.path.join(out, "mech_runs", name), overwrite=True, label_column="label",
        max_length=args.max_length, batch_size=args.batch_size, num_stages=1, exit=exit_cfg,
        audit=AuditConfig(fraction=0.0), mlflow=MlflowConfig(enabled=False),
    )
    from pipelines.run import run_tagging

    t0 = time.perf_counter()
    m = run_tagging(cfg).metrics
    wall = time.perf_counter() - t0
    keep = ("rows", "accuracy", "mean_layers", "mean_layers_computed", "rows_skipping", "layers_saved_by_skipping")
    return {**{k: m.get(k) for k in keep}, "docs_per_s": m["rows"] / wall, "wall_s": wall}


def pipelines(models, results, args, subset) -> dict:
    import ray
    from bench_tagging import plain_ray_variant

    ray.init(address="local", num_cpus=8, include_dashboard=False)
    runs = {}
    # DeeBERT adds nothing but exit heads, which AutoModelForSequenceClassification ignores: its
    # directory is the plain classifier a user without offramp would run
    plain_dir = next((d for _, d in models if ModelInfo.read(d).mechanism == "deebert"), models[0][1])
    base = argparse.Namespace(model=plain_dir, max_length=args.max_length, batch_size=args.batch_size)
    # threads = cores, as offramp's local run shares them: Ray's default of 1 thread would flatter the ratios
    runs["plain_ray_map_batches"] = {**plain_ray_variant(base, subset, args.out, threads=os.cpu_count() or 1),
                                     "model": plain_dir}
    for name, model_dir in models:
        # dev: what a deployment would pick; oracle: the test point within --max-drop (the table's best)
        threshold = results[name]["dev_chosen" if args.operating_point == "dev" else "test_oracle"]["threshold"]
        full = pipeline_run(f"{name}_full", model_dir, subset, args.out, args, ExitConfig(disabled=True, skip_gates=False))
        policy = results[name]["policy"]
        early = pipeline_run(f"{name}_exit", model_dir, subset, args.out, args, ExitConfig(policy=policy, threshold=threshold))
        runs[name] = {"full": full, "exit": early, "realized_speedup": early["docs_per_s"] / full["docs_per_s"],
                      "vs_plain_ray": early["docs_per_s"] / runs["plain_ray_map_batches"]["docs_per_s"]}
        print(f"{name}: {early['docs_per_s']:.1f} docs/s with exits, {full['docs_per_s']:.1f} at full depth", flush=True)
    ray.shutdown()
    return runs


def figure(results, path, data: str, max_drop: float) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, r in results.items():
        c = sorted(r["test_curve"], key=lambda p: p["mean_layers"])  # patience's full-depth point comes first
        line, = ax.plot([p["mean_layers"] for p in c], [100 * p["accuracy"] for p in c], "-", lw=1.3, label=name)
        p = r["test_at_dev_choice"]
        ax.plot([p["mean_layers"]], [100 * p["accuracy"]], "o", color=line.get_color(), ms=7)
        ax.axhline(100 * (r["full_depth_accuracy"] - max_drop), color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("mean layers computed per row (test)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{os.path.basename(os.path.dirname(os.path.abspath(data)))}: one global threshold swept; "
                 f"dots = dev-chosen, dotted = full depth − {100 * max_drop:g} pt", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def table(results, runs) -> str:
    lines = ["| method | policy | full-depth acc | dev-chosen: test acc (Δ pts), ideal × | test oracle ideal × within 1 pt (acc) "
             "| pipeline docs/s exit / full | realized × |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        full, p, o = r["full_depth_accuracy"], r["test_at_dev_choice"], r["test_oracle"]
        run = runs.get(name)
        pipe = f"{run['exit']['docs_per_s']:.1f} / {run['full']['docs_per_s']:.1f}" if run else "-"
        realized = f"{run['realized_speedup']:.2f}×" if run else "-"
        # SmartBERT's never-exit point already skips layers: show what that alone buys
        skip = f" ({r['full_depth_ideal_speedup']:.2f}× by skipping)" if r["full_depth_ideal_speedup"] > 1 else ""
        lines.append(
            f"| {name} | {r['policy']} | {100 * full:.2f}{skip} | {100 * p['accuracy']:.2f} ({100 * (p['accuracy'] - full):+.2f}), "
            f"{p['ideal_speedup']:.2f}× | {o['ideal_speedup']:.2f}× ({100 * o['accuracy']:.2f}) | {pipe} | {realized} |"
        )
    plain = runs.get("plain_ray_map_batches")
    if plain:
        lines.append(f"\nplain Ray Data map_batches ({plain['model']}): {plain['docs_per_s']:.1f} docs/s, accuracy "
                     f"{100 * plain['accuracy']:.2f}; exit runs over it: "
                     + ", ".join(f"{n} {runs[n]['vs_plain_ray']:.2f}×" for n in results if n in runs))
    return "\n".join(lines)


def skip_table(results, runs) -> str:
    """SmartBERT rows that skipped a layer before their exit, offline at the dev-chosen threshold and in the pipeline."""
    lines = ["| method | rows skipping (test) | layers saved | skip rate by layer (of rows reaching it) "
             "| pipeline: rows skipping, layers saved |", "|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["test_at_dev_choice"]
        if "rows_skipping" not in s:
            continue
        e = runs.get(name, {}).get("exit")
        pipe = f"{e['rows_skipping']}/{e['rows']}, {e['layers_saved_by_skipping']}" if e else "-"
        rates = " ".join(f"{x:.2f}" for x in s["skip_rate_by_layer"])
        lines.append(f"| {name} | {s['rows_skipping']}/{s['rows']} | {s['layers_saved_by_skipping']} | {rates} | {pipe} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def combine(paths: list[str], args) -> None:
    """One figure (OUT/mechanisms_all.png, logged to MLflow) from earlier runs' summaries on the
    same test set: the curves are deterministic, so runs made in different sessions compare."""
    results, models, test_rows = {}, {}, set()
    for path in paths:
        with open(path) as f:
            summary = json.load(f)
        clash = set(summary["results"]) & set(results)
        if clash:
            raise SystemExit(f"{path}: models {sorted(clash)} already come from an earlier file; rename one run")
        results.update(summary["results"])
        models.update(summary["models"])
        test_rows.add(summary["test_rows"])
    if len(test_rows) != 1:
        raise SystemExit(f"the files were measured on different test sets ({sorted(test_rows)} rows); rerun on one")
    fig = figure(results, os.path.join(args.out, "mechanisms_all.png"), args.test or "debian_sections/test.parquet", args.max_drop)
    mlflow.set_tracking_uri(args.mlflow_uri)
    mlflow.set_experiment("offramp-bench-mechanisms")
    with mlflow.start_run(run_name="combined"):
        mlflow.log_params({"combined_from": json.dumps(paths), "models": json.dumps(models), "max_drop": args.max_drop})
        mlflow.log_figure(fig, "mechanisms_all.png")
        mlflow.log_dict({"models": models, "results": results}, "mechanisms_all.json")
    print(f"wrote {os.path.join(args.out, 'mechanisms_all.png')} ({len(results)} curves)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="no new measurement: draw one figure from these mechanisms.json files (same test set)")
    p.add_argument("--policy", action="append", default=[], metavar="NAME=POLICY",
                   help="run model NAME with this exit policy instead of its mechanism's (e.g. a PABEE model with entropy)")
    p.add_argument("--dev")
    p.add_argument("--test")
    p.add_argument("--dev-rows", type=int, default=1500)
    p.add_argument("--test-rows", type=int, default=0, help="0 = all")
    p.add_argument("--pipeline-rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-drop", type=float, default=0.01)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--mlflow-uri", default="sqlite:///mlflow.db")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--operating-point", choices=("dev", "oracle"), default="dev",
                   help="pipeline exit runs at the dev-chosen threshold or at the test oracle point")
    args = p.parse_args()
    if args.combine:
        return combine(args.combine, args)
    if not (args.model and args.dev and args.test):
        p.error("--model, --dev and --test are required (or --combine JSON ...)")
    models = [tuple(m.split("=", 1)) for m in args.model]
    args.policies = dict(p.split("=", 1) for p in args.policy)
    cache = os.path.join(args.out, "mech_cache")
    os.makedirs(cache, exist_ok=True)
    dev, test = sample(rows(args.dev), args.dev_rows), sample(rows(args.test), args.test_rows)
    results = {}
    for name, model_dir in models:
        results[name] = offline(name, model_dir, dev, test, args, cache)
        print(f"{name}: offline done", flush=True)
    runs = {}
    if not args.skip_pipeline:
        subset = os.path.join(args.out, "mech_pipeline_input.parquet")
        pq.write_table(sample(test, args.pipeline_rows), subset)
        runs = pipelines(models, results, args, subset)
    fig = figure(results, os.path.join(args.out, "mechanisms_tradeoff.png"), args.test, args.max_drop)
    summary = {"dev_rows": dev.num_rows, "test_rows": test.num_rows, "pipeline_rows": min(args.pipeline_rows, test.num_rows),
               "models": dict(models), "results": results, "pipeline": runs}
    suffix = "" if args.operating_point == "dev" else "_oracle"  # the oracle run keeps the dev run's file
    with open(os.path.join(args.out, f"mechanisms{suffix}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = table(results, runs)
    print(md)
    skips = skip_table(results, runs)
    if skips:
        md += "\n\n" + skips
        print("\n" + skips)
    mlflow.set_tracking_uri(args.mlflow_uri)
    mlflow.set_experiment("offramp-bench-mechanisms")
    with mlflow.start_run():
        mlflow.log_params({"models": json.dumps(dict(models)), "dev_rows": dev.num_rows, "test_rows": test.num_rows,
                           "pipeline_rows": args.pipeline_rows, "max_drop": args.max_drop})
        for name, r in results.items():
            mlflow.log_metrics({f"{name}_full_depth_accuracy": r["full_depth_accuracy"],
                                f"{name}_ideal_speedup_dev_chosen": r["test_at_dev_choice"]["ideal_speedup"],
                                f"{name}_accuracy_dev_chosen": r["test_at_dev_choice"]["accuracy"],
                                f"{name}_ideal_speedup_oracle": r["test_oracle"]["ideal_speedup"]})
            if name in runs:
                run = runs[name]
                mlflow.log_metrics({f"{name}_realized_speedup": run["realized_speedup"], f"{name}_vs_plain_ray": run["vs_plain_ray"],
                                    f"{name}_docs_per_s_exit": run["exit"]["docs_per_s"],
                                    f"{name}_docs_per_s_full": run["full"]["docs_per_s"]})
        if runs:
            mlflow.log_metric("plain_ray_docs_per_s", runs["plain_ray_map_batches"]["docs_per_s"])
        mlflow.log_figure(fig, "mechanisms_tradeoff.png")
        mlflow.log_dict(summary, "mechanisms.json")
        mlflow.log_text(md, "mechanisms_table.md")


if __name__ == "__main__":
    main()
