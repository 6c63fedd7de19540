import math

import numpy as np
import pytest
import torch

from offramp.exits import simulate
from offramp.policies import get_policy


def test_entropy_and_max_prob_scores():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    ent = get_policy("entropy").score(logits)
    assert math.isclose(ent[0].item(), math.log(2), rel_tol=1e-6) and ent[1].item() < 1e-6
    mp = get_policy("max_prob").score(logits)
    assert math.isclose(mp[0].item(), 0.5) and mp[1].item() > 0.999


def test_decisions_are_per_row():
    d, _ = get_policy("entropy").decide(torch.tensor([[0.0, 0.0], [10.0, -10.0], [0.1, 0.0]]), threshold=0.3)
    assert d.exited.tolist() == [False, True, False]
    d, _ = get_policy("max_prob").decide(torch.tensor([[0.0, 0.0], [10.0, -10.0]]), threshold=0.9)
    assert d.exited.tolist() == [False, True]


def test_sweep_and_choose_on_a_toy_problem():
    # 4 rows, 2 heads, 2 classes. Head 1 is confident and right on rows 0-1, unsure on 2-3.
    logits = np.array(
        [
            [[9, 0], [9, 0]],
            [[0, 9], [0, 9]],
            [[0.1, 0], [0, 9]],
            [[0, 0.1], [9, 0]],
        ],
        dtype=np.float32,
    )
    gold = np.array([0, 1, 1, 0])
    policy = get_policy("entropy")
    curve = simulate.sweep(logits, gold, [1, 2], policy)
    assert curve[0]["accuracy"] == 1.0 and curve[0]["mean_layers"] == 2.0  # never exit
    best = simulate.choose(curve, max_drop=0.0)
    assert best["mean_layers"] == 1.5 and best["accuracy"] == 1.0  # rows 0-1 exit at layer 1
    scores = simulate.head_scores(policy, logits)
    assert simulate.survival(scores, logits.argmax(-1), [1, 2], policy, best["threshold"], 2) == [0.5, 0.0]


def test_margin_reads_the_top_two_classes_only():
    pol = get_policy("margin")
    sure = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    spread = torch.tensor([[5.0, 0.0, 3.0, 3.0]])  # entropy rises with the tail; the lead over the runner-up counts
    p = torch.softmax(spread, -1)[0]
    assert pol.score(spread).item() == pytest.approx((p[0] - p[2]).item())
    assert pol.score(sure).item() > pol.score(spread).item()
    assert pol.score(torch.tensor([[1.0, 1.0, -9.0]])).item() == pytest.approx(0.0, abs=1e-6)  # a tie: no lead
    d, _ = pol.decide(torch.cat([sure, spread]), threshold=0.8)
    assert d.exited.tolist() == [True, False]
    words = torch.tensor([[[5.0, 0.0], [0.0, 0.0]]])  # (sentences, words, classes)
    lead = torch.softmax(words[0, 0], -1)
    # float32 softmax: agreement to 1e-6
    assert pol.word_uncertainty(words)[0].tolist() == pytest.approx([1 - (lead[0] - lead[1]).item(), 1.0], abs=1e-6)
