"""The GPU benchmark (issue 15): early exit vs full depth vs plain Ray Data vs a bare fp16 loop,
on one device, the same rows, in one run.

    python benchmarks/bench_gpu.py --device cuda --model MODEL_DIR --out OUT

For each model and input length:
  (a) offramp with exits (the model's stored thresholds; the BERT-base-shaped model gets
      thresholds fitted to the benchmark model's dev exit profile, --profile)
  (b) offramp, the same pipeline at full depth
  (c) plain Ray Data: read_parquet -> map_batches(HF tokenizer + AutoModelForSequenceClassification
      in fp16 with SDPA, one GPU actor) -> write_parquet
  (d) a bare fp16 PyTorch loop without Ray (tokenize, forward, argmax)
Models: MODEL_DIR (the shipped MiniLM-L6 with trained exits) and, with --bert-base, a random
12-layer hidden-768 BERT-base-shaped model built here. Inputs: debian_sections texts at
--max-length (128), and long texts (descriptions of one section joined to ~3,000
characters) at --long-max-length (512).

Reported per variant: rows, accuracy (for the random model: agreement with its own full depth
is the meaningful figure), docs/s, wall, GPU utilisation (NVML, sampled every 50 ms: mean over
the wall and over the span where the GPU was in use), mean layers and ideal speed-up. Summary
ratios: (b)/(d), (a)/(c) against the ideal speed-up, realized (a)/(b) against ideal. Results
go to OUT/gpu_results.json as each variant ends (a crash loses nothing measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from bench_tagging import HFClassifier, PeakRSS  # noqa: E402
from offramp.config import AuditConfig, ExitConfig, MlflowConfig, RayConfig, StageConfig, TagConfig  # noqa: E402
from offramp.exits.simulate import head_scores  # noqa: E402
from offramp.models.sequence import EarlyExitBertForSequenceClassification  # noqa: E402
from offramp.policies import get_policy  # noqa: E402
from pipelines.run import run_tagging  # noqa: E402
from pipelines.summary import run_params, run_summary  # noqa: E402



# ---------------------------------------------------------------- GPU utilisation


class GpuSampler:
    """NVML utilisation (share of the last sample period a kernel ran) every `every` seconds."""

    def __init__(self, device: str, every: float = 0.05):
        self.samples: list[tuple[float, int, int]] = []
        self._stop, self.every = threading.Event(), every
        self.handle = None
        if device == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception as e:  # noqa: BLE001 - no NVML: utilisation is simply not reported
                print(f"no GPU utilisation: {e}", flush=True)

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.handle is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            u = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
            self.samples.append((time.perf_counter() - self.t0, int(u.gpu), int(mem), time.time()))
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._t.join()

    def report(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_active": None, "gpu_mem_peak_gb": None}
        u = np.array([s[1] for s in self.samples], dtype=float)
        busy = np.flatnonzero(u > 0)
        active = u[busy[0] : busy[-1] + 1] if len(busy) else u
        return {
            "gpu_util_mean": float(u.mean()),  # over the whole wall, start-up included
            "gpu_util_active": float(active.mean()),  # from the first to the last sample with a kernel running
            "gpu_active_s": float(len(active) * self.every),
            "gpu_mem_peak_gb": max(s[2] for s in self.samples) / 2**30,
        }

    def util_between(self, start: float, end: float) -> float | None:
        """Mean utilisation over the samples taken between two time.time() instants."""
        u = [s[1] for s in self.samples if start <= s[3] <= end]
        return float(np.mean(u)) if u else None


# ---------------------------------------------------------------- inputs and models


def make_corpus(data_dir: str, out: str, rows: int, long: bool, files: int = 16, seed: int = 0) -> tuple[str, int]:
    """`rows` rows of debian_sections (every split, repeated with new ids) in `files` Parquet
    files. long=True: each text joins descriptions of one section up to ~3,000 characters."""
    path = os.path.join(out, f"corpus_{'long' if long else 'short'}_{rows}")
    if os.path.isdir(path):
        return path, rows
    t = pa.concat_tables([pq.read_table(f"{data_dir}/{s}.parquet", columns=["id", "text", "label"])
                          for s in ("train", "dev", "test")])
    ids, texts, labels = t["id"].to_pylist(), t["text"].to_pylist(), t["label"].to_pylist()
    rng = np.random.default_rng(seed)
    if long:
        by_label: dict[str, list[str]] = {}
        for text, label in zip(texts, labels):
            by_label.setdefault(label, []).append(text)
        texts2, labels2, ids2 = [], [], []
        for k in range(len(texts)):
            label = labels[k]
            pool, parts, n = by_label[label], [], 0
            while n < 3000:
                parts.append(pool[int(rng.integers(len(pool)))])
                n += len(parts[-1]) + 1
            texts2.append(" ".join(parts))
            labels2.append(label)
            ids2.append(f"{ids[k]}+long")
        ids, texts, labels = ids2, texts2, labels2
    order = rng.permutation(rows) % len(ids)
    reps = np.arange(rows) // len(ids)
    table = pa.table({
        "id": [f"{ids[i]}#{r}" for i, r in zip(order, reps)],
        "text": [texts[i] for i in order],
        "label": [labels[i] for i in order],
    })
    os.makedirs(path)
    per = -(-rows // files)
    for f in range(files):
        pq.write_table(table.slice(f * per, per), os.path.join(path, f"part-{f:02d}.parquet"))
    return path, rows


def build_bert_base(model_dir: str, out: str, seed: int = 0) -> str:
    """A random 12-layer, hidden-768 BERT-base-shaped early-exit classifier with MODEL_DIR's
    labels and tokenizer. Its heads' last layers are scaled so their entropies spread out
    (random heads are otherwise all near-uniform, and thresholds could not shape a profile)."""
    from transformers import AutoConfig, AutoTokenizer

    path = os.path.join(out, "bert_base_random")
    if os.path.isdir(path):
        return path
    small = AutoConfig.from_pretrained(model_dir)
    cfg = type(small)(
        vocab_size=small.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, num_labels=small.num_labels,
        id2label=small.id2label, label2id=small.label2id, exit_layers=list(range(1, 13)),
        exit_policy="entropy", exit_mechanism="deebert",
    )
    torch.manual_seed(seed)
    model = EarlyExitBertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for head in list(model.exit_heads.values()) + [model.classifier]:
            last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.mul_(40.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(path)
    return path


def fit_profile(model_dir: str, texts: list[str], survival: list[float], max_length: int, device: str) -> list[float]:
    """Entropy thresholds per head so that, on `texts`, the share of rows still running after
    head k follows `survival` (given at 6 layers, the benchmark model's; stretched over this
    model's depth). Each threshold sits midway between two observed scores."""
    from transformers import AutoTokenizer

    model = EarlyExitBertForSequenceClassification.from_pretrained(model_dir).to(device).eval()
    if device == "cuda":
        model = model.half()
    tok, logits = AutoTokenizer.from_pretrained(model_dir), []
    with torch.inference_mode():  # every head at full depth (offramp.training.loop.full_pass, without `datasets`)
        for i in range(0, len(texts), 128):
            enc = tok(texts[i : i + 128], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            out = model(**{k: v.to(device) for k, v in enc.items()})
            logits.append(torch.stack(out.exit_logits, dim=1).float().cpu().numpy())
    layers = model.exit_layers
    scores = head_scores(get_policy("entropy"), np.concatenate(logits), layers)  # (N, K)
    depth = np.linspace(0, 1, len(survival) + 1)[1:]
    target = np.interp(np.array(layers) / layers[-1], depth, survival)
    alive = np.ones(len(texts), dtype=bool)
    out = []
    for k in range(len(layers) - 1):
        s = np.sort(scores[alive, k])
        keep = int(round(target[k] * len(texts)))
        n_exit = int(alive.sum()) - keep
        if n_exit <= 0:
            out.append(float("-inf"))
            continue
        thr = float((s[n_exit - 1] + s[min(n_exit, len(s) - 1)]) / 2) if n_exit < len(s) else float(s[-1]) + 1.0
        out.append(thr)
        alive &= ~(scores[:, k] < thr)
    out.append(out[-1] if out else 0.0)  # the last head always answers; its threshold is not used
    del model
    return out


def set_thresholds(model_dir: str, thresholds: list[float]) -> None:
    path = os.path.join(model_dir, "config.json")
    cfg = json.load(open(path))
    cfg["exit_thresholds"] = [t if np.isfinite(t) else -1e9 for t in thresholds]
    json.dump(cfg, open(path, "w"), indent=1)


# ---------------------------------------------------------------- the variants


def offramp_variant(name, model_dir, data, out, args, max_length, batch, exits: bool, stages: int = 1,
                    actors: int = 1, rebatch: int = 0, tokenize_cpus: float | None = None,
                    stage_calls: int | None = None):
    """offramp on `data`; `actors`: each pool's (None: offramp's default, one per core for a local CPU
    stage 0); `rebatch` > 0: one pool of actors holding all `stages`, merging survivors;
    `tokenize_cpus`: what a tokenize task asks Ray for (None: offramp's default, 1.0 beside a GPU);
    `stage_calls`: batches a stage actor takes at once (None: offramp's default, 2 on a GPU)."""
    share = (actors or 1) if rebatch else stages * (actors or 1)  # actors that split the GPU
    gpus = (1.0 / share) if args.device == "cuda" else 0.0
    layers = args._layers[model_dir]
    split = np.linspace(0, layers, stages + 1).astype(int)
    cfg = TagConfig(
        input=data, model=model_dir, output=os.path.join(out, name), overwrite=True, label_column="label",
        max_length=max_length, batch_size=batch, tokenize_batch_size=args.tokenize_batch_size, num_stages=stages,
        stages=tuple(
            StageConfig(layers=(int(split[k]), int(split[k + 1])), num_gpus=gpus, min_actors=actors, max_actors=actors,
                        dtype=args.dtype, batch_size=batch if not exits or k == 0 else None)
            for k in range(stages)
        ),
        carry_dtype=args.dtype,
        rebatch=rebatch,
        tokenize_cpus=tokenize_cpus,
        stage_calls=stage_calls,
        exit=ExitConfig(disabled=not exits),
        audit=AuditConfig(fraction=0.0),  # (c) and (d) audit nothing either
        mlflow=MlflowConfig(enabled=False),
        ray=RayConfig(num_cpus=args.ray_cpus),
    )
    with PeakRSS() as mem, GpuSampler(args.device) as gpu:
        t0 = time.perf_counter()
        result = run_tagging(cfg)
        wall = time.perf_counter() - t0
    m = result.metrics
    with open(os.path.join(args.out, "ray_stats.txt"), "a") as f:
        f.write(f"\n\n======== {out} {name}\n{result.ray_stats}")
    busy = {k: v for k, v in m.items() if k.endswith("_busy_seconds")}
    spans = [t for t in result.stage_timings.values() if t.get("last_end")]
    steady = {}
    if spans:  # after start-up: from the first stage call's start to the last one's end (one node: one clock)
        start, end = min(t["first_start"] for t in spans), max(t["last_end"] for t in spans)
        steady = {"steady_s": end - start, "steady_docs_per_s": m["rows"] / (end - start),
                  "gpu_util_steady": gpu.util_between(start, end)}
    return {
        "variant": name, "rows": m["rows"], "accuracy": m["accuracy"], "docs_per_s": m["rows"] / wall,
        "wall_s": wall, "peak_rss_gb": mem.peak / 2**30, "mean_layers": m["mean_layers"],
        "ideal_speedup": m["ideal_speedup"], "stage_busy_s": busy,
        "stage_batch_sizes": [p.batch_size for p in result.layout], **gpu.report(), **steady,
        "startup_s": m.get("startup_seconds"),
        # what `offramp plan --summary` plans GPU capacity from (the run's run_summary.json, as MLflow keeps it)
        "run_summary": run_summary(result, layers, run_params(cfg, result, layers)),
    }


def plain_ray_variant(model_dir, data, out, args, max_length, batch, actors: int = 1):
    """(c) as a user writes it: one actor, Ray's threads (1 per 1-CPU actor); `actors` > 1: a pool
    of that many, as a user who sized it to the cores would."""
    from ray.data import ActorPoolStrategy

    suffix = f"_{actors}_actors" if actors > 1 else ""
    path = os.path.join(out, "c_plain_ray" + suffix)
    with PeakRSS() as mem, GpuSampler(args.device) as gpu:
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(data, columns=["id", "text", "label"])
        ds = ds.map_batches(
            HFClassifier,
            fn_constructor_kwargs=dict(model_dir=model_dir, max_length=max_length, device=args.device, dtype=args.dtype),
            batch_size=batch, batch_format="numpy", compute=ActorPoolStrategy(min_size=actors, max_size=actors),
            num_gpus=1 if args.device == "cuda" else 0,
        )
        ds.write_parquet(path, mode="overwrite")
        wall = time.perf_counter() - t0
    t = pq.read_table(path, columns=["label", "gold_label"])
    acc = float(np.mean(np.array(t["label"].to_pylist(), dtype=object) == np.array(t["gold_label"].to_pylist(), dtype=object)))
    return {"variant": "c_plain_ray_map_batches" + suffix, "rows": t.num_rows, "accuracy": acc, "docs_per_s": t.num_rows / wall,
            "wall_s": wall, "peak_rss_gb": mem.peak / 2**30, **gpu.report()}


def bare_loop_variant(model_dir, data, args, max_length, batch):
    table = pq.read_table(data, columns=["text", "label"])
    texts, gold = table["text"].to_pylist(), table["label"].to_pylist()
    with PeakRSS() as mem, GpuSampler(args.device) as gpu:
        t0 = time.perf_counter()
        clf = HFClassifier(model_dir, max_length, device=args.device, dtype=args.dtype)
        pred = []
        for i in range(0, len(texts), batch):
            pred += list(clf.predict(texts[i : i + batch]))
        wall = time.perf_counter() - t0
    acc = float(np.mean(np.array(pred, dtype=object) == np.array(gold, dtype=object)))
    return {"variant": f"d_bare_{args.dtype}_loop", "rows": len(texts), "accuracy": acc, "docs_per_s": len(texts) / wall,
            "wall_s": wall, "peak_rss_gb": mem.peak / 2**30, **gpu.report()}


def agreement(out: str, x: str, y: str) -> float | None:
    """Share of rows whose label in variant x's output equals variant y's (joined by id)."""
    try:
        tx = pq.read_table(os.path.join(out, x), columns=["id", "label"]).sort_by("id")
        ty = pq.read_table(os.path.join(out, y), columns=["id", "label"]).sort_by("id")
    except Exception:  # noqa: BLE001 - a variant that failed has no output
        return None
    if tx["id"].to_pylist() != ty["id"].to_pylist():
        return None
    return float(np.mean(np.array(tx["label"].to_pylist(), dtype=object) == np.array(ty["label"].to_pylist(), dtype=object)))


def summarize(res: dict, out: str) -> dict:
    a, b, c, d = (res.get(k) for k in ("a", "b", "c", "d"))
    s = {}
    if a and b:
        s["agreement_a_with_b"] = agreement(out, "a_offramp_exits", "b_offramp_full_depth")
    if b and c:
        s["agreement_b_with_c"] = agreement(out, "b_offramp_full_depth", "c_plain_ray")  # full depth = the stock model
    if a and b:
        s["realized_a_over_b"] = a["docs_per_s"] / b["docs_per_s"]
        s["ideal_speedup"] = a["ideal_speedup"]
        s["realized_over_ideal"] = s["realized_a_over_b"] / a["ideal_speedup"]
        s["accuracy_drop_points"] = 100 * (b["accuracy"] - a["accuracy"])
    if b and d:
        s["b_over_d"] = b["docs_per_s"] / d["docs_per_s"]  # target >= 0.9
    if a and c:
        s["a_over_c"] = a["docs_per_s"] / c["docs_per_s"]
        s["a_over_c_over_ideal"] = s["a_over_c"] / a["ideal_speedup"]  # target >= 0.9
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained early-exit model directory (MiniLM-L6)")
    p.add_argument("--bert-base", action="store_true", help="also the random 12-layer hidden-768 model")
    p.add_argument("--only-bert-base", action="store_true", help="only the random BERT-base-shaped model")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dtype", default="float16")
    p.add_argument("--rows", type=int, default=200_000, help="rows of the short-text input")
    p.add_argument("--long-rows", type=int, default=50_000, help="rows of the long-text input (0 = none)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--long-max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4096, help="rows per batch at --max-length (long: /4)")
    p.add_argument("--tokenize-batch-size", type=int, default=1024)
    p.add_argument("--variants", default="a,b,c,d")
    p.add_argument("--layouts", action="store_true",
                   help="also: 2 actors x 0.5 GPU, 2 stages x 0.5 GPU, and one actor holding 2 (3) stages that "
                        "merges survivors of --rebatch input batches at each boundary (E3)")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count(),
                   help="logical CPUs of the local Ray (on a 2-core CPU machine: 8, as the embedded default, "
                        "so that 2 actors and the tasks fit)")
    p.add_argument("--repeat", type=int, default=1, help="run the variants this many times, interleaved")
    p.add_argument("--rebatch", type=int, default=8, help="input batches a rebatching actor merges survivors across")
    p.add_argument("--profile", default="benchmarks/results/model_exit_profile.json")
    p.add_argument("--cudnn-sdp", action="store_true",
                   help="keep cuDNN's SDPA on in every variant (offramp turns it off on GPUs): the A/B of that choice")
    p.add_argument("--data-dir", default="../shared/data/debian_sections")
    p.add_argument("--fit-rows", type=int, default=4000, help="dev rows the BERT-base thresholds are fitted on")
    p.add_argument("--out", default="benchmarks/results/gpu")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cudnn_sdp:
        os.environ["OFFRAMP_CUDNN_SDP"] = "1"  # before ray.init: the local cluster's workers inherit it
    os.makedirs(args.out, exist_ok=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    ray.init(address="local", num_cpus=args.ray_cpus, num_gpus=1 if args.device == "cuda" else 0,
             include_dashboard=False)
    models = [] if args.only_bert_base else [("minilm_l6", args.model)]
    if args.bert_base or args.only_bert_base:
        base = build_bert_base(args.model, args.out)
        survival = json.load(open(args.profile))["dev_survival"]
        dev = pq.read_table(f"{args.data_dir}/dev.parquet", columns=["text"])["text"].to_pylist()[: args.fit_rows]
        thr = fit_profile(base, dev, survival, args.max_length, args.device)
        set_thresholds(base, thr)
        models.append(("bert_base_random", base))
    from transformers import AutoConfig

    args._layers = {d: AutoConfig.from_pretrained(d).num_hidden_layers for _, d in models}
    inputs = [("short", *make_corpus(args.data_dir, args.out, args.rows, False), args.max_length, args.batch_size)]
    if args.long_rows:
        inputs.append(("long", *make_corpus(args.data_dir, args.out, args.long_rows, True), args.long_max_length,
                       max(1, args.batch_size // 4)))
    results_path = os.path.join(args.out, "gpu_results.json")
    report = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
              "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "runs": []}
    wanted = set(args.variants.split(","))
    for mname, mdir in models:
        for iname, data, rows, max_length, batch in inputs:
            res: dict = {}
            out = os.path.join(args.out, f"{mname}_{iname}")
            plan = [
                ("a", lambda: offramp_variant("a_offramp_exits", mdir, data, out, args, max_length, batch, True)),
                ("b", lambda: offramp_variant("b_offramp_full_depth", mdir, data, out, args, max_length, batch, False)),
                ("c", lambda: plain_ray_variant(mdir, data, out, args, max_length, batch)),
                ("d", lambda: bare_loop_variant(mdir, data, args, max_length, batch)),
                # tokenize tasks at half a CPU: more of them fit Ray Data's CPU budget (run only when named)
                ("a_tok05", lambda: offramp_variant("a_offramp_exits_tokenize_half_cpu", mdir, data, out, args,
                                                    max_length, batch, True, tokenize_cpus=0.5)),
                ("b_tok05", lambda: offramp_variant("b_offramp_full_depth_tokenize_half_cpu", mdir, data, out, args,
                                                    max_length, batch, False, tokenize_cpus=0.5)),
                # a stage actor taking one batch at a time (Ray Data's default; offramp takes 2 on a GPU)
                ("a_calls1", lambda: offramp_variant("a_offramp_exits_one_call", mdir, data, out, args, max_length,
                                                     batch, True, stage_calls=1)),
                ("b_calls1", lambda: offramp_variant("b_offramp_full_depth_one_call", mdir, data, out, args,
                                                     max_length, batch, False, stage_calls=1)),
            ]
            if args.layouts and iname == "short":
                plan += [
                    ("a_2actors", lambda: offramp_variant("a_2actors_half_gpu", mdir, data, out, args, max_length,
                                                          batch, True, actors=2)),
                    ("a_2stages", lambda: offramp_variant("a_2stages_half_gpu", mdir, data, out, args, max_length,
                                                          batch, True, stages=2)),
                    ("a_2rebatch", lambda: offramp_variant("a_rebatch_2stages", mdir, data, out, args, max_length,
                                                           batch, True, stages=2, rebatch=args.rebatch)),
                    ("a_2rebatch3", lambda: offramp_variant("a_rebatch_3stages", mdir, data, out, args, max_length,
                                                            batch, True, stages=3, rebatch=args.rebatch)),
                ]
            # --layouts runs every layout, unless --variants names some (e.g. a,a_2stages,a_2rebatch)
            named = any(w.startswith("a_2") for w in wanted)
            plan = [(k, fn) for k, fn in plan if k in wanted or (k.startswith("a_2") and not named)]
            for rep in range(args.repeat):  # repeats interleave the variants: the machine's drift hits each alike
                for key, fn in plan:
                    name = key if rep == 0 else f"{key}#{rep}"
                    print(f"== {mname} {iname} ({rows} rows, max_length {max_length}): {name}", flush=True)
                    try:
                        res[name] = fn()
                        print(json.dumps({k: v for k, v in res[name].items() if k != "run_summary"}), flush=True)
                    except Exception:  # noqa: BLE001 - one variant's failure is reported, the rest still run
                        res[name] = {"error": traceback.format_exc()[-3000:]}
                        print(res[name]["error"], flush=True)
            ok = {k: v for k, v in res.items() if "error" not in v}
            report["runs"].append({"model": mname, "input": iname, "rows": rows, "max_length": max_length,
                                   "batch_size": batch, "results": res, "summary": summarize(ok, out)})
            print(json.dumps(report["runs"][-1]["summary"], indent=1), flush=True)
            with open(results_path, "w") as f:
                json.dump(report, f, indent=1)
    print_table(report)


def print_table(report: dict) -> None:
    print("| model | input | variant | accuracy | docs/s | GPU util (wall / active) | mean layers | ideal |")
    print("|---|---|---|---|---|---|---|---|")
    for run in report["runs"]:
        for key, r in run["results"].items():
            if "error" in r:
                print(f"| {run['model']} | {run['input']} | {key} | error | | | | |")
                continue
            util = (f"{r['gpu_util_mean']:.0f}% / {r['gpu_util_active']:.0f}%" if r.get("gpu_util_mean") is not None
                    else "n/a")
            ml = f"{r['mean_layers']:.2f}" if r.get("mean_layers") is not None else "full"
            ideal = f"{r['ideal_speedup']:.2f}" if r.get("ideal_speedup") is not None else ""
            print(f"| {run['model']} | {run['input']} | {r['variant']} | {r['accuracy']:.4f} | {r['docs_per_s']:.0f} "
                  f"| {util} | {ml} | {ideal} |")


if __name__ == "__main__":
    main()
