"""Which per-word signal should decide when a word leaves (issue 16)? Offline, from one
full-depth pass: every head's logits for every word.

    .venv/bin/python benchmarks/token_signals.py --model MODEL_DIR --dev ../shared/data/debian_pos/dev.parquet \
        --data ../shared/data/debian_pos/test.parquet --out benchmarks/results/issue16/token_signals_pos6k.json

Each word leaves at the first head whose signal is under the threshold (no window: the word's
own head decides), and takes that head's tag. Signals:
- **entropy**: normalized entropy (Li et al.'s word uncertainty);
- **max_prob**: 1 - the top tag's probability;
- **learned**: 1 - P(this head's tag is full depth's), a logistic model per layer over the head's
  entropy, top probability and margin, the previous head's entropy and top probability, and
  whether the tag agrees with the previous one or two heads. It is fitted on `--dev`, where
  the threshold is also chosen.
The threshold is the largest on the grid within `--max-drop` of full depth on `--dev`; the
table reports it applied to `--data`. The cost is counted in word-layers, and in token-layers
estimated from the words' sub-word counts ([CLS] and [SEP] run until the sentence's last word
leaves). What the estimate leaves out, later layers seeing halted words' frozen states, cost
TOKEE 4.5 points of saving at window 0 in `token_breakdown.py`'s real passes (49.1% estimated,
44.6% real, entropy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from token_breakdown import tagged_sample  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.exits.token_pass import word_head_logits  # noqa: E402
from offramp.models.checkpoint import ModelInfo, load_model  # noqa: E402

GRID = np.round(np.arange(0.01, 0.9, 0.01), 3)


def sentences(path, columns, info, model, tokenizer, rows, max_length) -> list[dict]:
    """Each sentence's gold tags, sub-words per word and length, and every head's signals."""
    encoded, gold = tagged_sample(path, columns, rows, 0, tokenizer, info.labels, max_length, path)
    out = []
    for e, g in zip(encoded, gold):
        ends = np.append(e.starts[1:], len(e.ids) - 1)
        out.append({"gold": np.asarray(g), "tokens": np.clip(ends - e.starts, 1, None), "length": len(e.ids)})
    add_signals(out, word_head_logits(model, encoded))
    return out


def add_signals(rows, logits):
    for r, lg in zip(rows, logits):
        p = torch.softmax(torch.from_numpy(lg), -1).numpy()  # (L, W, C)
        top2 = np.sort(p, -1)[..., -2:]
        r.update(tags=lg.argmax(-1), maxp=top2[..., 1], margin=top2[..., 1] - top2[..., 0],
                 entropy=-(p * np.log(p + 1e-12)).sum(-1) / np.log(p.shape[-1]))


def features(r, k: int) -> np.ndarray:
    """(W, F) what head k and the heads before it say about each word."""
    zero = np.zeros_like(r["maxp"][k])
    prev = (lambda x: x[k - 1]) if k else (lambda x: zero)
    f = [r["entropy"][k], r["maxp"][k], r["margin"][k], prev(r["entropy"]), prev(r["maxp"]),
         (r["tags"][k] == r["tags"][k - 1]) if k else zero, (r["tags"][k] == r["tags"][k - 2]) if k > 1 else zero]
    x = np.stack(f, -1).astype(np.float32)
    return np.concatenate([x, x**2, np.ones((len(x), 1), np.float32)], -1)


def fit_learned(rows, heads: int) -> list[torch.Tensor]:
    """Per early head, logistic weights for P(its tag is full depth's)."""
    weights = []
    for k in range(heads - 1):
        x = torch.from_numpy(np.concatenate([features(r, k) for r in rows]))
        y = torch.from_numpy(np.concatenate([r["tags"][k] == r["tags"][-1] for r in rows]).astype(np.float32))
        w = torch.zeros(x.shape[1], requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200)

        def loss():
            opt.zero_grad()
            value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 1e-4 * (w**2).sum()
            value.backward()
            return value

        opt.step(loss)
        weights.append(w.detach())
    return weights


def signal(r, name: str, weights) -> np.ndarray:
    """(L, W): lower = surer; the last head always answers."""
    if name == "entropy":
        return r["entropy"]
    if name == "max_prob":
        return 1 - r["maxp"]
    learned = [1 - torch.sigmoid(torch.from_numpy(features(r, k)) @ w).numpy() for k, w in enumerate(weights)]
    return np.stack([*learned, np.zeros_like(r["maxp"][-1])])


def exits(rows, name, weights, threshold) -> dict:
    right = words = word_layers = token_layers = full_tokens = 0
    heads = rows[0]["tags"].shape[0]
    for r in rows:
        s = signal(r, name, weights)
        leave = s < threshold
        leave[-1] = True
        k = leave.argmax(0)  # (W,) the head each word leaves at
        tag = r["tags"][k, np.arange(len(k))]
        on = r["gold"] >= 0
        right, words = right + int((tag[on] == r["gold"][on]).sum()), words + int(on.sum())
        word_layers += int((k + 1).sum())
        token_layers += int((r["tokens"] * (k + 1)).sum()) + 2 * int(k.max() + 1 if len(k) else 0)
        full_tokens += r["length"]
    n_words = sum(len(r["gold"]) for r in rows)
    return {"accuracy": right / words, "word_layer_saving": 1 - word_layers / (heads * n_words),
            "token_layer_saving": 1 - token_layers / (heads * full_tokens)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dev", required=True, help="fits the learned signal and chooses every threshold")
    p.add_argument("--data", required=True, help="where the chosen thresholds are measured")
    p.add_argument("--words-column", default="tokens")
    p.add_argument("--tags-column", default="pos")
    p.add_argument("--dev-rows", type=int, default=2000)
    p.add_argument("--rows", type=int, default=1500)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-drop", type=float, default=0.005)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    info, model = ModelInfo.read(args.model), load_model(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    columns = (args.words_column, args.tags_column)
    dev = sentences(args.dev, columns, info, model, tokenizer, args.dev_rows, args.max_length)
    test = sentences(args.data, columns, info, model, tokenizer, args.rows, args.max_length)
    weights = fit_learned(dev, len(info.exit_layers))
    full_dev, full_test = exits(dev, "entropy", weights, -1.0), exits(test, "entropy", weights, -1.0)
    result = {"command": " ".join(sys.argv), "full_depth_accuracy": {"dev": full_dev["accuracy"],
              "data": full_test["accuracy"]}, "signals": {}}
    for name in ("entropy", "max_prob", "learned"):
        ok = [t for t in GRID if exits(dev, name, weights, t)["accuracy"] >= full_dev["accuracy"] - args.max_drop]
        chosen = float(max(ok)) if ok else None
        at = exits(test, name, weights, chosen) if chosen is not None else full_test
        drop = full_test["accuracy"] - at["accuracy"]
        result["signals"][name] = {"threshold": chosen, **at, "drop": drop}
        print(f"{name:9s} threshold {chosen}: word accuracy {at['accuracy']:.4f} (drop {100 * drop:.2f} pt), "
              f"{100 * at['word_layer_saving']:.1f}% word-layers, "
              f"~{100 * at['token_layer_saving']:.1f}% token-layers saved")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
