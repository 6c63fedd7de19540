"""What early exit buys online: the Ray Serve endpoint with exits vs the same endpoint at full
depth, at fixed client concurrency, on loopback.

    python benchmarks/bench_serve.py --model DIR --data ../shared/data/debian_sections/test.parquet

Two applications of one model run side by side on one local Serve (`pipelines.serve`): the
model's stored (certified) thresholds at /exits, and exits disabled at /full. For each
concurrency level, C client threads send the same --rows texts (one text per request) to one
application, then to the other; each request's latency is timed at the client. Reported per
level and application: texts/s, p50 and p99 latency, accuracy against the gold labels and the
mean exit layer; and the exits / full-depth ratios. Results: OUT/serve.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import requests  # noqa: E402
from ray import serve  # noqa: E402

from offramp.config import ExitConfig, ServeConfig  # noqa: E402
from pipelines.serve import build_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def level(endpoint: str, texts: list[str], gold: list[str], concurrency: int) -> dict:
    """All `texts`, one per request, from `concurrency` client threads."""
    def one(i: int):
        t0 = time.perf_counter()
        r = requests.post(endpoint, json={"texts": [texts[i]]}, timeout=120)
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["results"][0]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(one, range(len(texts))))
    wall = time.perf_counter() - t0
    lat = np.array([o[0] for o in out])
    answers = [o[1] for o in out]
    return {
        "concurrency": concurrency, "texts": len(texts), "wall_s": wall, "texts_per_s": len(texts) / wall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)), "p99_ms": 1000 * float(np.percentile(lat, 99)),
        "accuracy": float(np.mean([a["label"] == g for a, g in zip(answers, gold)])),
        "mean_exit_layer": float(np.mean([a["exit_layer"] for a in answers])),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data/debian_sections/test.parquet")
    p.add_argument("--rows", type=int, default=600, help="texts per level (a seeded sample of --data)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    table = pq.read_table(args.data, columns=["text", "label"]).to_pylist()
    pick = np.random.default_rng(0).choice(len(table), size=min(args.rows, len(table)), replace=False)
    texts, gold = [table[i]["text"] for i in pick], [table[i]["label"] for i in pick]

    ray.init(address="local", num_cpus=8, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = dict(model=args.model, port=port, max_length=args.max_length, num_cpus=1, torch_threads=args.torch_threads,
                max_batch_tokens=4096, max_ongoing_requests=128, batch_wait_timeout_s=0.005)
    apps = {"exits": ServeConfig(**base, name="exits", route_prefix="/exits"),
            "full": ServeConfig(**base, name="full", route_prefix="/full", exit=ExitConfig(disabled=True)),
            # the same exits, each text answered right after its exit layer: what answering at the exit buys
            "exits_answer_at_exit": ServeConfig(**base, name="exits_answer_at_exit", route_prefix="/exits_answer_at_exit",
                                                answer_at_exit=True)}
    for name, cfg in apps.items():
        serve.run(build_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)
    endpoints = {name: f"http://127.0.0.1:{port}/{name}/v1/classify" for name in apps}
    for e in endpoints.values():  # warm-up: first batches, connection pools
        level(e, texts[:32], gold[:32], 4)
    results = []
    for c in (int(x) for x in args.concurrency.split(",")):
        row = {"concurrency": c}
        for name, e in endpoints.items():  # adjacent in time: the machine's noise hits both alike
            row[name] = level(e, texts, gold, c)
            print(f"c={c} {name}: {row[name]['texts_per_s']:.1f} texts/s, p50 {row[name]['p50_ms']:.0f} ms, "
                  f"p99 {row[name]['p99_ms']:.0f} ms, accuracy {row[name]['accuracy']:.4f}, "
                  f"mean exit layer {row[name]['mean_exit_layer']:.2f}", flush=True)
        row["throughput_ratio"] = row["exits"]["texts_per_s"] / row["full"]["texts_per_s"]
        row["p50_ratio"] = row["exits"]["p50_ms"] / row["full"]["p50_ms"]
        results.append(row)
    serve.shutdown()
    ray.shutdown()
    with open(os.path.join(args.out, "serve.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print("\n| clients | exits texts/s | full texts/s | ratio | exits p50 / p99 ms | full p50 / p99 ms | "
          "exits answered at the exit: texts/s, p50 / p99 ms | accuracy exits / full | mean exit layer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a, b, e = r["exits"], r["full"], r["exits_answer_at_exit"]
        print(f"| {r['concurrency']} | {a['texts_per_s']:.1f} | {b['texts_per_s']:.1f} | {r['throughput_ratio']:.2f}× | "
              f"{a['p50_ms']:.0f} / {a['p99_ms']:.0f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} | "
              f"{e['texts_per_s']:.1f}, {e['p50_ms']:.0f} / {e['p99_ms']:.0f} | "
              f"{a['accuracy']:.4f} / {b['accuracy']:.4f} | {a['mean_exit_layer']:.2f} |")


if __name__ == "__main__":
    main()
