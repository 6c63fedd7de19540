"""The framework ceiling (issue 15): the whole pipeline around a near-free model.

    python benchmarks/bench_overhead.py --rows 100000 --out benchmarks/results/overhead [--dtype bfloat16]

A tiny random BERT (6 layers, hidden 32) with the MiniLM tokenizer makes the model's cost
close to nothing, so what is left is the pipeline: read, tokenize, the stage's packing,
finalize, write. Side by side, on the same rows (debian_sections, 16 Parquet files):
  offramp at full depth (one stage, its default actors), plain Ray Data (read_parquet ->
  map_batches(HF tokenizer + the same model) -> write_parquet; one actor as a user writes it, and
  a pool of one actor per core) and a bare loop (tokenize + forward, no Ray).
Per-step times come from Ray Data's own stats (remote wall and CPU seconds per operator) and
the stage actor's busy time; they go to OUT/overhead.json with docs/s for each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ray  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig  # noqa: E402

from bench_gpu import bare_loop_variant, make_corpus, offramp_variant, plain_ray_variant  # noqa: E402
from offramp.models.checkpoint import default_base_model  # noqa: E402
from offramp.models.sequence import EarlyExitBertForSequenceClassification  # noqa: E402

LABELS = ["admin", "devel", "doc", "fonts", "games", "gnome", "gnu-r", "golang", "graphics", "haskell", "java",
          "javascript", "libdevel", "libs", "lisp", "math", "misc", "net", "ocaml", "perl", "php", "python", "ruby",
          "rust", "science", "sound", "text", "utils", "web", "x11"]


def tiny_model(out: str) -> str:
    path = os.path.join(out, "tiny_model")
    if os.path.isdir(path):
        return path
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=512, num_labels=len(LABELS),
                     id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(0)
    EarlyExitBertForSequenceClassification(cfg).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(path)
    return path


def operator_times(stats: str) -> dict:
    """Ray Data's stats text -> {operator: {wall_s, cpu_s}} (remote time summed over tasks)."""
    out, name = {}, None
    for line in stats.splitlines():
        m = re.match(r"Operator \d+ (.+?): \d+ tasks executed", line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"\* Remote (wall|cpu) time: .* ([\d.]+)(us|ms|s) total", line)
        if m and name:
            scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(3)]
            out.setdefault(name, {})[f"{m.group(1)}_s"] = round(float(m.group(2)) * scale, 3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--data-dir", default="../shared/data/debian_sections")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--tokenize-batch-size", type=int, default=1024)
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray")
    p.add_argument("--actors", type=int, default=0,
                   help="offramp's stage actors (0: its default, one per core on one thread each)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of all three variants (bfloat16: native on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--out", default="benchmarks/results/overhead")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.out, exist_ok=True)
    model = tiny_model(args.out)
    data, rows = make_corpus(args.data_dir, args.out, args.rows, False)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    opts = SimpleNamespace(device="cpu", dtype=args.dtype, ray_cpus=args.num_cpus,
                           tokenize_batch_size=args.tokenize_batch_size, out=args.out, _layers={model: 6})
    runs = os.path.join(args.out, "runs")
    open(os.path.join(args.out, "ray_stats.txt"), "w").close()
    results = [offramp_variant("offramp_full_depth", model, data, runs, opts, args.max_length, args.batch_size, False,
                               actors=args.actors or None)]
    stats = open(os.path.join(args.out, "ray_stats.txt")).read()
    results[0]["steps"] = operator_times(stats)
    results[0]["actors"] = results[0]["run_summary"]["stages"][0]["max_actors"]
    results.append(plain_ray_variant(model, data, runs, opts, args.max_length, args.batch_size))
    cores = os.cpu_count() or 1
    if cores > 1:  # plain Ray Data as a user who sized its pool to the cores would write it
        results.append(plain_ray_variant(model, data, runs, opts, args.max_length, args.batch_size, actors=cores))
    results.append(bare_loop_variant(model, data, opts, args.max_length, args.batch_size))
    off, plain, bare = results[0], results[1], results[-1]
    summary = {"offramp_over_plain_ray": off["docs_per_s"] / plain["docs_per_s"],
               "offramp_over_bare_loop": off["docs_per_s"] / bare["docs_per_s"],
               "stage_busy_share": sum(off["stage_busy_s"].values()) / off["wall_s"] / off["actors"]}
    if cores > 1:
        summary["offramp_over_plain_ray_per_core_pool"] = off["docs_per_s"] / results[2]["docs_per_s"]
    with open(os.path.join(args.out, "overhead.json"), "w") as f:
        json.dump({"args": vars(args), "cores": os.cpu_count(), "results": results, "summary": summary}, f, indent=1)
    print("| variant | docs/s | wall s |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['docs_per_s']:.0f} | {r['wall_s']:.1f} |")
    print("| step (offramp) | remote wall s | remote CPU s |")
    print("|---|---|---|")
    for name, t in off["steps"].items():
        print(f"| {name} | {t.get('wall_s', 0):.1f} | {t.get('cpu_s', 0):.1f} |")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
