"""Would a torch-only forward of the encoder layers run faster than transformers' own? (issue
15: the stage actor's start-up is its imports, transformers' modeling code among them, and a
torch-only forward is the lever named for it; this measures whether it would also buy speed.)

    python benchmarks/bench_layer_forward.py --out benchmarks/results/layer_forward_cpu.json

Six BERT layers, stock (`BertLayer`, SDPA attention) against the same weights run through
`torch.nn.functional` calls written out (linear, scaled_dot_product_attention, layer_norm, gelu),
at three (rows, tokens, hidden) shapes: the overhead benchmark's hidden-32 model on 1,024 rows,
and MiniLM-L6's shape on a full and on a small pass. Interleaved, --rounds times, best per side;
the largest difference over real tokens is reported beside the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertModel

SHAPES = [  # name, hidden, heads, ffn, rows, tokens
    ("hidden32_1024x85", 32, 2, 37, 1024, 85),
    ("minilm_64x96", 384, 12, 1536, 64, 96),
    ("minilm_16x40", 384, 12, 1536, 16, 40),
]


def functional_layer(layer, hidden: torch.Tensor, mask, heads: int) -> torch.Tensor:
    """BertLayer's forward in functional calls on its own weights: (B, T, H) -> (B, T, H)."""
    sa, out = layer.attention.self, layer.attention.output
    B, T, H = hidden.shape

    def split(linear):  # (B, T, H) -> (B, heads, T, H / heads)
        return F.linear(hidden, linear.weight, linear.bias).view(B, T, heads, H // heads).transpose(1, 2)

    ctx = F.scaled_dot_product_attention(split(sa.query), split(sa.key), split(sa.value), attn_mask=mask)
    ctx = ctx.transpose(1, 2).reshape(B, T, H)
    ln = out.LayerNorm
    a = F.layer_norm(F.linear(ctx, out.dense.weight, out.dense.bias) + hidden, (H,), ln.weight, ln.bias, ln.eps)
    inner = F.gelu(F.linear(a, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    o = layer.output
    return F.layer_norm(F.linear(inner, o.dense.weight, o.dense.bias) + a, (H,), o.LayerNorm.weight, o.LayerNorm.bias,
                        o.LayerNorm.eps)


def measure(name, hidden_size, heads, ffn, rows, tokens, rounds: int, calls: int) -> dict:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden_size, num_attention_heads=heads, intermediate_size=ffn,
                        num_hidden_layers=6, attn_implementation="sdpa")
    layers = BertModel(config).eval().encoder.layer
    hidden = torch.randn(rows, tokens, hidden_size)
    lengths = torch.randint(tokens // 2, tokens + 1, (rows,))
    lengths[0] = tokens
    mask2d = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask2d)

    def stock():
        x = hidden
        for layer in layers:
            x = layer(x, mask)
            x = x[0] if isinstance(x, tuple) else x
        return x

    def functional():
        x = hidden
        for layer in layers:
            x = functional_layer(layer, x, mask, heads)
        return x

    with torch.inference_mode():
        err = (stock() - functional())[mask2d.bool()].abs().max().item()
        best = {"stock": float("inf"), "functional": float("inf")}
        for _ in range(rounds):
            for label, f in (("stock", stock), ("functional", functional)):
                t = time.perf_counter()
                for _ in range(calls):
                    f()
                best[label] = min(best[label], (time.perf_counter() - t) / calls * 1000)
    return {"shape": name, "rows": rows, "tokens": tokens, "hidden": hidden_size, "stock_ms": best["stock"],
            "functional_ms": best["functional"], "stock_over_functional": best["stock"] / best["functional"],
            "max_abs_difference": err}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/layer_forward_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(*shape, args.rounds, args.calls) for shape in SHAPES]
    for r in results:
        print(f"{r['shape']}: stock {r['stock_ms']:.1f} ms, functional {r['functional_ms']:.1f} ms, "
              f"stock/functional {r['stock_over_functional']:.2f}, max difference {r['max_abs_difference']:.1e}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
