"""Early exit vs. full depth vs. plain Ray Data vs. a bare PyTorch loop, side by side in one run.

    python benchmarks/bench_tagging.py --model DIR --data ../shared/data/debian_sections/test.parquet

(a) offramp, exits at the model's stored thresholds (chosen on dev: <= 1 point below full depth)
(b) offramp, same pipeline and layout, exits disabled (full depth)
(c) plain Ray Data map_batches over AutoModelForSequenceClassification (the user's alternative)
(d) a bare PyTorch loop at full depth over the same model, no Ray

Each variant reads the same rows and reports accuracy, documents/s, peak memory (RSS of the
driver plus every Ray worker process, sampled every 0.2 s), and mean layers. Results go to
OUT/results.json and are printed as a Markdown table for BENCHMARKS.md.

`--repeat N` reads the rows N times (ids made distinct). Ray's start-up and the pipeline's fill
are paid once per variant, so on a short input they hide part of what exits save; a nightly run
of millions of rows pays them once too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from sampling import Sampling  # noqa: E402

from offramp.config import ExitConfig, MlflowConfig, StageConfig, TagConfig  # noqa: E402
from offramp.exits.stage import configure_device  # noqa: E402
from pipelines.run import EMBEDDED_RAY_CPUS, init_ray, local_ray_cpus, run_tagging, validate  # noqa: E402


class PeakRSS(Sampling):
    """Peak summed RSS of this process and all its descendants (Ray's workers are children)."""

    interval = 0.2

    def __init__(self):
        self.peak = 0

    def _total(self) -> int:
        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def sample(self) -> None:
        self.peak = max(self.peak, self._total())


class HFClassifier:
    """(c): what a user writes without offramp: tokenizer + AutoModelForSequenceClassification
    (on a GPU: fp16 or bf16 with SDPA attention, inputs through pinned memory)."""

    def __init__(self, model_dir: str, max_length: int, threads: int = 0, device: str = "cpu", dtype: str = "float32"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        configure_device(self.device)  # the same attention kernels as offramp's stages (no cuDNN SDPA)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        ).to(self.device).eval()
        self.labels = self.model.config.id2label
        self.max_length = max_length

    def probs(self, texts) -> torch.Tensor:
        enc = self.tok(list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        if self.device.type == "cuda":
            enc = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in enc.items()}
        with torch.inference_mode():
            return torch.softmax(self.model(**enc).logits.float(), -1).cpu()

    def predict(self, texts) -> np.ndarray:
        return np.array([self.labels[int(i)] for i in self.probs(texts).argmax(-1)], dtype=object)

    def __call__(self, batch: dict) -> dict:
        probs = self.probs(batch["text"])
        return {
            "id": batch["id"],
            "label": np.array([self.labels[int(i)] for i in probs.argmax(-1)], dtype=object),
            "confidence": probs.max(-1).values.numpy(),
            "gold_label": batch["label"],
        }


def stage_configs(args, exits: bool) -> tuple:
    """Full depth: every stage at the run's batch size; `--actors N`: stage 0's pool (with
    `--rebatch`, the one pool) is N actors, which share the machine's cores."""
    pinned = args.actors or None  # None: offramp's default (one per core on a local CPU), in (a) and (b) alike
    return tuple(StageConfig(batch_size=None if exits else args.batch_size,
                             min_actors=pinned if k == 0 else None, max_actors=pinned if k == 0 else None)
                 for k in range(args.num_stages))


def offramp_variant(name, args, data, out, exits: bool, threshold: float | None = None):
    cfg = TagConfig(
        input=data,
        model=args.model,
        output=os.path.join(out, name),
        overwrite=True,
        label_column="label",
        max_length=args.max_length,
        batch_size=args.batch_size,
        num_stages=args.num_stages,
        stages=stage_configs(args, exits),
        rebatch=args.rebatch,
        dtype=args.dtype,
        exit=ExitConfig(disabled=not exits, threshold=threshold),
        mlflow=MlflowConfig(enabled=False),
    )
    # Ray's own start is outside the timing, as in every run since the first: a fresh session is started
    # here with the logical CPUs the run would size it with (`local_ray_cpus`)
    init_ray(cfg.ray, local_ray_cpus(validate(cfg).stages, cfg.rebatch, cfg.resume))
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = run_tagging(cfg)
        wall = time.perf_counter() - t0
    m = result.metrics
    return {
        "variant": name,
        "rows": m["rows"],
        "accuracy": m["accuracy"],
        "docs_per_s": m["rows"] / wall,
        "wall_s": wall,
        "peak_rss_gb": mem.peak / 2**30,
        "mean_layers": m["mean_layers"],
        "ideal_speedup": m["ideal_speedup"],
        "stage_batch_sizes": [p.batch_size for p in result.layout],
        "stage_actors": [p.max_actors for p in result.layout],
        "torch_threads": [p.spec.torch_threads for p in result.layout],
        "ray_cpus": ray.cluster_resources().get("CPU"),  # the embedded Ray's logical CPUs
        # time the stage actors spent inside __call__ (the rest of the wall is start-up and pipeline fill)
        "stage_busy_s": sum(v for k, v in m.items() if k.endswith("_busy_seconds")),
        "pipeline_wall_s": m["wall_seconds"],  # read to write; the wall above adds validation and metrics
        "pipeline_docs_per_s": m["rows"] / m["wall_seconds"],
        "startup_s": m.get("startup_seconds"),  # until stage 0's first call: a fixed cost in both (a) and (b)
        "startup_parts_s": {p: m.get(f"startup_{p}_seconds") for p in ("actor_process", "model_load", "input_wait")},
    }


def plain_ray_variant(args, data, out, threads: int = 0):
    """threads=0: as a user writes it (Ray's OMP_NUM_THREADS=1 for a 1-CPU actor); else tuned."""
    from ray.data import ActorPoolStrategy

    name = "c_plain_ray_map_batches" + (f"_{threads}_threads" if threads else "")
    path = os.path.join(out, name)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(data, columns=["id", "text", "label"])
        ds = ds.map_batches(
            HFClassifier,
            fn_constructor_kwargs=dict(model_dir=args.model, max_length=args.max_length, threads=threads, dtype=args.dtype),
            batch_size=args.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=1),
        )
        ds.write_parquet(path, mode="overwrite")
        wall = time.perf_counter() - t0
    t = pq.read_table(path)
    acc = float(np.mean(np.array(t["label"].to_pylist(), dtype=object) == np.array(t["gold_label"].to_pylist(), dtype=object)))
    return {"variant": name, "rows": t.num_rows, "accuracy": acc, "docs_per_s": t.num_rows / wall,
            "wall_s": wall, "peak_rss_gb": mem.peak / 2**30, "mean_layers": None, "ideal_speedup": None}


def bare_loop_variant(args, data):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    table = pq.read_table(data, columns=["text", "label"])
    texts, gold = table["text"].to_pylist(), table["label"].to_pylist()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
        labels = model.config.id2label
        pred = []
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = tok(texts[i : i + args.batch_size], truncation=True, max_length=args.max_length, padding=True,
                          return_tensors="pt")
                pred += [labels[int(j)] for j in model(**enc).logits.argmax(-1)]
        wall = time.perf_counter() - t0
    acc = float(np.mean(np.array(pred, dtype=object) == np.array(gold, dtype=object)))
    return {"variant": "d_bare_pytorch_loop", "rows": len(texts), "accuracy": acc, "docs_per_s": len(texts) / wall,
            "wall_s": wall, "peak_rss_gb": mem.peak / 2**30, "mean_layers": None, "ideal_speedup": None}


class Session:
    """The embedded Ray the variants run in: `fresh` starts one per variant and stops it after,
    `shared` one for the whole benchmark. `num_cpus` 0: offramp's run sizes it as a user's run
    does (`pipelines.run.local_ray_cpus`), and the plain variants get the same count."""

    def __init__(self, mode: str, num_cpus: int):
        self.mode, self.num_cpus, self.used = mode, num_cpus, 0

    def start(self):
        if self.num_cpus and not ray.is_initialized():
            ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False)

    def after_variant(self):
        self.used = self.used or int(ray.cluster_resources().get("CPU", 0))
        if self.mode == "fresh":
            ray.shutdown()

    def start_plain(self):
        """For (c): the logical CPUs offramp's runs had."""
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=self.num_cpus or self.used or EMBEDDED_RAY_CPUS, include_dashboard=False)

    def stop(self):
        ray.shutdown()


def steady_rate(r: dict) -> float:
    """Rows per second of the pipeline after its start-up (until stage 0's first call)."""
    return r["rows"] / (r["pipeline_wall_s"] - (r["startup_s"] or 0.0))


def pooled(runs: list[dict]) -> dict:
    """One variant's rounds as one result: rates over the summed rows and walls, the rest from the
    first round (accuracy, layers and layout are the same in every round: the same rows, the same model)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    rows = sum(r["rows"] for r in runs)
    for key in ("wall_s", "pipeline_wall_s", "stage_busy_s", "startup_s"):
        out[key] = sum(r[key] or 0.0 for r in runs)
    out["rows"] = rows
    out["docs_per_s"] = rows / out["wall_s"]
    out["pipeline_docs_per_s"] = rows / out["pipeline_wall_s"]
    out["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    return out


def paired_rounds(args, data: str, session: Session) -> tuple[dict, dict, list[dict]]:
    """(a) and (b) `args.rounds` times, in turn a-b, b-a, ... -> pooled (a), pooled (b), each round's pair."""
    runs = {True: [], False: []}
    rounds = []
    for k in range(args.rounds):
        for exits in ((True, False) if k % 2 == 0 else (False, True)):
            session.start()
            name = "a_offramp_exits" if exits else "b_offramp_full_depth"
            runs[exits].append(offramp_variant(name, args, data, args.out, exits=exits))
            session.after_variant()
        a, b = runs[True][-1], runs[False][-1]
        rounds.append({"a_docs_per_s": a["docs_per_s"], "b_docs_per_s": b["docs_per_s"],
                       "realized_over_ideal": a["docs_per_s"] / b["docs_per_s"] / a["ideal_speedup"]})
    return pooled(runs[True]), pooled(runs[False]), rounds


def input_rows(path: str, rows: int, repeat: int) -> pa.Table:
    """The first `rows` rows of `path` (0 = all), `repeat` times over, each copy's ids suffixed #k."""
    t = pq.read_table(path)
    t = t.slice(0, rows) if rows else t
    if repeat <= 1:
        return t
    ids = t["id"].cast(pa.string())
    copies = [t.set_column(t.schema.get_field_index("id"), "id", pc.binary_join_element_wise(ids, pa.scalar(f"#{k}"), ""))
              for k in range(repeat)]
    return pa.concat_tables(copies)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/test.parquet")
    p.add_argument("--rows", type=int, default=0, help="first N rows of --data (0 = all)")
    p.add_argument("--repeat", type=int, default=1,
                   help="read the rows this many times (ids made distinct): a fixed start-up cost weighs as it does on a "
                        "long run, and every copy of a row exits where the row does (exit decisions are batch-invariant)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-stages", type=int, default=1)
    p.add_argument("--actors", type=int, default=0,
                   help="actors in stage 0's pool (0: offramp's default); they share the machine's cores")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of every variant (bfloat16: native on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--rebatch", type=int, default=0,
                   help="N > 0: one actor holds every stage and merges the survivors of up to N batches "
                        "(TagConfig.rebatch)")
    p.add_argument("--variants", default="abcd",
                   help="which variants to run (default all four; 'ab' re-measures exits against full depth alone)")
    p.add_argument("--session", default="fresh", choices=["fresh", "shared"],
                   help="fresh: (a) and (b) each in its own embedded Ray, as a user's two runs (default); shared: one "
                        "Ray for all, where the first variant also pays the session's own start (its idle workers and "
                        "Ray Data's actors), as every run before 2026-11-26 (stop 39) measured")
    p.add_argument("--ray-cpus", type=int, default=0,
                   help="logical CPUs of the embedded Ray (0: as a local run sizes it from its stage actors; "
                        "runs before 2026-11-26, stop 39, had 8)")
    p.add_argument("--rounds", type=int, default=1,
                   help="pairs of (a) and (b), in turn a-b, b-a, ...; the figures are over all rounds' rows and walls")
    p.add_argument("--extra-threshold", type=float, help="also run exits at this global threshold (variant a2)")
    args = p.parse_args()
    if not set(args.variants) <= set("abcd") or not {"a", "b"} <= set(args.variants):
        p.error(f"--variants {args.variants!r}: letters from abcd, with a and b (every ratio is against them)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    data = args.data
    if args.rows or args.repeat > 1:
        data = os.path.join(args.out, "bench_input.parquet")
        pq.write_table(input_rows(args.data, args.rows, args.repeat), data)
    session = Session(args.session, args.ray_cpus)
    a, b, rounds = paired_rounds(args, data, session)
    results = [a, b]
    summary = {
        "realized_speedup_a_over_b": a["docs_per_s"] / b["docs_per_s"],
        "ideal_speedup": a["ideal_speedup"],
        "realized_over_ideal": a["docs_per_s"] / b["docs_per_s"] / a["ideal_speedup"],
        "stage_busy_speedup_a_over_b": b["stage_busy_s"] / a["stage_busy_s"],
        # the same from the pipeline's own wall (read to write), without validation and the metrics pass
        "pipeline_realized_over_ideal": a["pipeline_docs_per_s"] / b["pipeline_docs_per_s"] / a["ideal_speedup"],
        # after start-up (until stage 0's first call): what a run long enough to make start-up negligible gets
        "steady_realized_over_ideal": steady_rate(a) / steady_rate(b) / a["ideal_speedup"],
        "accuracy_drop_points": 100 * (b["accuracy"] - a["accuracy"]),
    }
    if len(rounds) > 1:
        summary["rounds_realized_over_ideal"] = [r["realized_over_ideal"] for r in rounds]
    session.start_plain()
    if "c" in args.variants:
        c = plain_ray_variant(args, data, args.out)
        c_tuned = plain_ray_variant(args, data, args.out, threads=os.cpu_count() or 1)
        results += [c, c_tuned]
        summary.update({"realized_speedup_a_over_c": a["docs_per_s"] / c["docs_per_s"],
                        "realized_speedup_a_over_c_tuned": a["docs_per_s"] / c_tuned["docs_per_s"]})
    if "d" in args.variants:
        d = bare_loop_variant(args, data)
        results.append(d)
        summary["b_over_d"] = b["docs_per_s"] / d["docs_per_s"]
    if args.extra_threshold is not None:
        a2 = offramp_variant(f"a2_offramp_exits_threshold_{args.extra_threshold:g}", args, data, args.out,
                             exits=True, threshold=args.extra_threshold)
        results.append(a2)
        summary.update({
            "a2_realized_speedup_over_b": a2["docs_per_s"] / b["docs_per_s"],
            "a2_ideal_speedup": a2["ideal_speedup"],
            "a2_realized_over_ideal": a2["docs_per_s"] / b["docs_per_s"] / a2["ideal_speedup"],
            "a2_accuracy_drop_points": 100 * (b["accuracy"] - a2["accuracy"]),
        })
    session.stop()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "torch_threads": torch.get_num_threads(), "results": results,
                   "rounds": rounds, "summary": summary}, f, indent=1)
    print("| variant | rows | accuracy | docs/s | wall s | peak RSS GiB | mean layers |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ml = f"{r['mean_layers']:.2f}" if r["mean_layers"] is not None else "6 (full)"
        print(f"| {r['variant']} | {r['rows']} | {r['accuracy']:.4f} | {r['docs_per_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | {ml} |")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
