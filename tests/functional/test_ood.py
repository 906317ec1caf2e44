"""OOD scores and detection metrics against slow, obvious references and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nlpcal.functional.ood import OODScore, ood_detection_metrics, ood_score
from nlpcal.functional.ova import ova_probabilities

SETTINGS = settings(max_examples=50, deadline=None)


def slow_auroc(score_in, score_out) -> float:
    wins = sum((a > b) + 0.5 * (a == b) for a in score_in for b in score_out)
    return wins / (len(score_in) * len(score_out))


def slow_average_precision(positive_scores, negative_scores) -> float:
    total = len(positive_scores)
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(positive_scores) | set(negative_scores), reverse=True):
        tp = sum(s >= t for s in positive_scores)
        fp = sum(s >= t for s in negative_scores)
        recall = tp / total
        ap += (recall - previous_recall) * tp / (tp + fp)
        previous_recall = recall
    return ap


def slow_fpr_at_95_tpr(score_in, score_out) -> float:
    for t in sorted(set(score_in) | set(score_out), reverse=True):
        if sum(s >= t for s in score_in) >= 0.95 * len(score_in):
            return sum(s >= t for s in score_out) / len(score_out)
    raise AssertionError("unreachable: the lowest threshold accepts everything")


scores = hnp.arrays(
    np.float32,
    st.integers(1, 30),
    elements=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(-5, 5, width=32)),
)


@SETTINGS
@given(score_in=scores, score_out=scores)
def test_metrics_equal_slow_references(score_in, score_out):
    metrics = ood_detection_metrics(score_in, score_out)
    a, b = score_in.tolist(), score_out.tolist()
    assert float(metrics["auroc"]) == pytest.approx(slow_auroc(a, b), abs=1e-9)
    assert float(metrics["aupr_in"]) == pytest.approx(slow_average_precision(a, b), abs=1e-9)
    negated_out, negated_in = [-s for s in b], [-s for s in a]
    assert float(metrics["aupr_out"]) == pytest.approx(
        slow_average_precision(negated_out, negated_in), abs=1e-9
    )
    assert float(metrics["fpr95"]) == pytest.approx(slow_fpr_at_95_tpr(a, b), abs=1e-9)


@SETTINGS
@given(score_in=scores, score_out=scores, seed=st.integers(0, 2**16))
def test_metrics_do_not_depend_on_order(score_in, score_out, seed):
    rng = np.random.default_rng(seed)
    before = ood_detection_metrics(score_in, score_out)
    after = ood_detection_metrics(rng.permutation(score_in), rng.permutation(score_out))
    for key, value in before.items():
        assert float(after[key]) == pytest.approx(float(value), abs=1e-12)


def test_perfect_separation():
    metrics = ood_detection_metrics(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.2, 0.1]))
    assert {key: float(value) for key, value in metrics.items()} == {
        "auroc": 1.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
        "fpr95": 0.0,
    }


def test_reversed_separation():
    metrics = ood_detection_metrics(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9]))
    assert float(metrics["auroc"]) == 0.0
    assert float(metrics["fpr95"]) == 1.0


def test_identical_distributions_give_half():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(500, generator=g)
    assert float(ood_detection_metrics(values, values)["auroc"]) == 0.5
    assert float(ood_detection_metrics(values, values.flip(0))["auroc"]) == 0.5


def test_all_tied_scores():
    metrics = ood_detection_metrics(torch.ones(3), torch.ones(5))
    assert float(metrics["auroc"]) == 0.5
    assert float(metrics["aupr_in"]) == pytest.approx(3 / 8)
    assert float(metrics["aupr_out"]) == pytest.approx(5 / 8)
    assert float(metrics["fpr95"]) == 1.0


def test_fpr95_uses_the_highest_threshold_reaching_95_percent():
    score_in = torch.arange(100, dtype=torch.float32)  # 95 % TPR: threshold 5
    score_out = torch.tensor([4.5, 5.0, 50.0, -1.0])
    assert float(ood_detection_metrics(score_in, score_out)["fpr95"]) == 0.5


def test_large_inputs_match_pairwise_auroc_on_a_subsample():
    g = torch.Generator().manual_seed(1)
    score_in = torch.randn(2000, generator=g).round(decimals=1) + 1
    score_out = torch.randn(1500, generator=g).round(decimals=1)
    expected = (score_in[:, None] > score_out[None, :]).double().mean() + 0.5 * (
        score_in[:, None] == score_out[None, :]
    ).double().mean()
    assert float(ood_detection_metrics(score_in, score_out)["auroc"]) == pytest.approx(
        float(expected), abs=1e-12
    )


@pytest.mark.parametrize(
    ("score_in", "score_out", "match"),
    [
        ([], [1.0], "score_in is empty"),
        ([1.0], [], "score_out is empty"),
        ([[1.0]], [1.0], r"score_in must have shape \(n_examples,\)"),
        ([float("nan")], [1.0], "non-finite"),
        ([1.0], [float("inf")], "non-finite"),
    ],
)
def test_bad_scores_raise(score_in, score_out, match):
    with pytest.raises(ValueError, match=match):
        ood_detection_metrics(score_in, score_out)


# ----------------------------------------------------------------------------- scores
def random_logits(n=50, k=5, seed=0):
    return 3 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_msp_entropy_energy_values():
    logits = random_logits()
    probs = torch.softmax(logits.double(), dim=1)
    msp = ood_score(logits, "msp")
    entropy = ood_score(logits, OODScore.ENTROPY)
    energy = ood_score(logits, "energy")
    for i in range(logits.shape[0]):
        row = probs[i].tolist()
        assert float(msp[i]) == pytest.approx(max(row), abs=1e-6)
        assert float(entropy[i]) == pytest.approx(
            sum(p * math.log(p) for p in row if p > 0), abs=1e-5
        )
        assert float(energy[i]) == pytest.approx(
            math.log(sum(math.exp(z) for z in logits[i].tolist())), abs=1e-5
        )


def test_slova_score_is_max_one_vs_all_probability():
    logits = random_logits(seed=1)
    expected = ova_probabilities(logits).max(dim=1).values
    torch.testing.assert_close(ood_score(logits, "slova"), expected)


@pytest.mark.parametrize("method", list(OODScore))
def test_confident_logits_score_higher_than_flat_logits(method):
    confident = torch.tensor([[8.0, -4.0, -4.0]])
    flat = torch.tensor([[0.0, 0.0, 0.0]])
    assert float(ood_score(confident, method)[0]) > float(ood_score(flat, method)[0])


@pytest.mark.parametrize("method", list(OODScore))
def test_scores_separate_confident_from_flat_batches(method):
    # One-hot-like logits (one class on, the others off, as a one-vs-all head needs) versus flat ones.
    g = torch.Generator().manual_seed(2)
    on = torch.eye(4)[torch.randint(0, 4, (200,), generator=g)]
    in_logits = torch.randn(200, 4, generator=g) - 3 + 8 * on
    out_logits = 0.3 * torch.randn(200, 4, generator=g) - 3
    metrics = ood_detection_metrics(ood_score(in_logits, method), ood_score(out_logits, method))
    assert float(metrics["auroc"]) > 0.9


def test_float16_and_numpy_logits():
    logits = random_logits()
    expected = ood_score(logits.half().float(), "energy")
    torch.testing.assert_close(ood_score(logits.half(), "energy"), expected)
    torch.testing.assert_close(ood_score(logits.numpy(), "msp"), ood_score(logits, "msp"))


def test_bad_method_and_logits_raise():
    with pytest.raises(
        ValueError, match="method must be one of 'msp', 'entropy', 'energy', 'slova'"
    ):
        ood_score(random_logits(), "mahalanobis")
    with pytest.raises(ValueError, match="non-finite"):
        ood_score(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        ood_score(torch.zeros(3))
