"""Is a model's final layer worse than its middle ones, or only its stock [CLS]-pooler classifier?

    python benchmarks/probe_layers.py --model models/pabee_joint --out benchmarks/results/joint/probe_layers.json

A fresh mean-pool ExitHead per layer, trained on that layer's frozen features of the 5,000
training rows the benchmark models train on (`load_labeled`, seed 0) with the stage-2 recipe
(AdamW 1e-3, 30 epochs, batch 32), scored on all of debian_sections test. It gives a fair
full-depth reference for a model whose stock classifier reads the [CLS] pooler
(BENCHMARKS.md, issue 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.training.data import load_labeled  # noqa: E402
from offramp.models.heads import ExitHead
from offramp.models.checkpoint import load_model
from offramp.models.sequence import masked_mean  # noqa: E402
from offramp.training.loop import _encode  # noqa: E402


@torch.inference_mode()
def layer_features(model, tok, texts, max_length: int) -> torch.Tensor:
    """(N, L, H) mean-pooled state of every layer."""
    out = []
    for i in range(0, len(texts), 64):
        enc = _encode(tok, texts[i : i + 64], max_length)
        hidden = model.bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
        states = model.run_layers(hidden, enc["attention_mask"]).states
        out.append(torch.stack([masked_mean(states[l], enc["attention_mask"]) for l in range(1, model.num_layers + 1)], 1))
    return torch.cat(out)


def probe(config, train_x, train_y, test_x, test_y, epochs: int = 30) -> float:
    head = ExitHead(config)
    optim = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(epochs):
        head.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            loss = torch.nn.functional.cross_entropy(head.classify(train_x[idx]), train_y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
    head.eval()
    with torch.no_grad():
        return float((head.classify(test_x).argmax(-1) == test_y).float().mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train", default="../shared/data/debian_sections/train.parquet")
    p.add_argument("--test", default="../shared/data/debian_sections/test.parquet")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--out")
    args = p.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(args.model).eval(), AutoTokenizer.from_pretrained(args.model)
    label2id = model.config.label2id
    train_texts, train_labels = load_labeled(args.train, "text", "label", 5000, 0)
    test_texts, test_labels = load_labeled(args.test, "text", "label", None, 0)
    train_y = torch.tensor([label2id[y] for y in train_labels])
    test_y = torch.tensor([label2id[y] for y in test_labels])
    train_f = layer_features(model, tok, train_texts, args.max_length)
    test_f = layer_features(model, tok, test_texts, args.max_length)
    acc = {}
    for k in range(model.num_layers):
        acc[k + 1] = probe(model.config, train_f[:, k], train_y, test_f[:, k], test_y)
        print(f"layer {k + 1}: fresh mean-pool head, test accuracy {acc[k + 1]:.4f}", flush=True)
    summary = {"model": args.model, "test_rows": len(test_y), "fresh_mean_pool_head_accuracy": acc}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
