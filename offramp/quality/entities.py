"""Entity-level scores for BIO tag sequences (conlleval's span rule); no torch, so the
pipeline driver and Ray tasks use it freely."""

from __future__ import annotations


def entity_spans(tags) -> set[tuple[int, int, str]]:
    """BIO(ES) tags -> {(start, end, type)} spans, conlleval's rule: an I- that does not continue
    an entity of its type starts one; O, None and a new B- end it."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        tag = tag or "O"
        prefix, _, t = tag.partition("-")
        continues = prefix in ("I", "E") and kind == t
        if start is not None and not continues:
            spans.add((start, i, kind))
            start = kind = None
        if prefix in ("B", "S") or (prefix in ("I", "E") and not continues):
            start, kind = i, t
    return spans


def entity_counts(gold: list, pred: list) -> tuple[int, int, int]:
    """(matching spans, gold spans, predicted spans) over sentences: counts that add up over batches."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        gs, ps = entity_spans(g), entity_spans(p)
        tp, n_gold, n_pred = tp + len(gs & ps), n_gold + len(gs), n_pred + len(ps)
    return tp, n_gold, n_pred


def entity_f1(gold: list, pred: list) -> dict:
    """Micro precision / recall / F1 of exact entity spans over sentences."""
    return f1_of(*entity_counts(gold, pred))


def f1_of(tp: int, n_gold: int, n_pred: int) -> dict:
    """Micro precision / recall / F1 from span counts."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold_entities": n_gold}


def is_bio(labels) -> bool:
    """A tag set is a BIO scheme when every tag is O or prefixed B-/I- (E-/S- allowed)."""
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in labels) and any(t != "O" for t in labels)
