"""Is a trained model's full-depth head undertrained? (issue 16)

    .venv/bin/python benchmarks/final_head_refit.py --model demo/model --train demo/data/train.parquet \\
        --dev demo/data/dev.parquet --max-length 64

Refits only the final head's stock modules (from their trained weights) on the frozen last layer,
pooled as the head pools it, of up to --rows training rows, with AdamW as training's stage 2 trains
the exit heads; prints dev accuracy of the head as trained and after 5, 10 and 20 epochs of refit.
Training now does this itself (`offramp.training.loop.refit_final_head`); this measures it on a
model trained before."""

from __future__ import annotations

import argparse
import copy
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from offramp.models.checkpoint import load_model  # noqa: E402


def features(model, tokenizer, path, rows, max_length):
    t = pq.read_table(path).to_pandas().sample(frac=1, random_state=0).head(rows)
    out = []
    with torch.no_grad():
        for i in range(0, len(t), 128):
            enc = tokenizer(list(t.text[i : i + 128]), truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            h = model.run_layers(model.embed(enc["input_ids"]), enc["attention_mask"]).states[-1]
            out.append(model.final_head().pool(h, enc["attention_mask"]))
    return torch.cat(out), torch.tensor([model.config.label2id.get(l, -1) for l in t.label])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    model = load_model(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    xtr, ytr = features(model, tokenizer, args.train, args.rows, args.max_length)
    xdv, ydv = features(model, tokenizer, args.dev, args.rows, args.max_length)
    head = model.final_head().head
    acc = lambda h: float((h(xdv).argmax(-1) == ydv).float().mean())  # noqa: E731
    print(f"dev accuracy of the final head as trained: {acc(head.eval()):.4f}")
    h = copy.deepcopy(head).train()
    opt = torch.optim.AdamW(h.parameters(), lr=args.lr, weight_decay=0.01)
    keep = ytr >= 0
    x, y = xtr[keep], ytr[keep]
    for epoch in range(1, 21):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), 32):
            loss = torch.nn.functional.cross_entropy(h(x[perm[i : i + 32]]), y[perm[i : i + 32]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in (5, 10, 20):
            print(f"refit, epoch {epoch}: dev accuracy {acc(h.eval()):.4f}")
            h.train()


if __name__ == "__main__":
    main()
