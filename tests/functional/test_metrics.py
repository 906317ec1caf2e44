"""Calibration metrics against torchmetrics, against slow per-bin loops, and on hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nlpcal.functional.metrics import (
    Binning,
    Norm,
    accuracy,
    brier_score,
    calibration_metrics,
    classwise_calibration_error,
    debiased_calibration_error,
    expected_calibration_error,
    max_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)

tm_functional = pytest.importorskip("torchmetrics.functional.classification")

SETTINGS = settings(max_examples=50, deadline=None)


# ----------------------------------------------------------------------------- references
def top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    confidence = [float(row.max()) for row in probs]
    correct = [float(int(np.argmax(row)) == int(y)) for row, y in zip(probs, labels, strict=True)]
    return confidence, correct


def uniform_bin(value: float, n_bins: int, dtype=np.float32) -> int:
    """The largest j with value >= j / n_bins (the edge rounded to the input dtype)."""
    return max(j for j in range(n_bins) if value >= dtype(j / n_bins))


def quantile_bins(values: list[float], n_bins: int) -> list[int]:
    ordered = sorted(values)
    n = len(ordered)
    candidates = {ordered[(j * n) // n_bins] for j in range(1, n_bins)}
    edges = sorted(v for v in candidates if v > ordered[0])
    return [sum(edge <= v for edge in edges) for v in values]


def binned_errors(values: list[float], targets: list[float], bins: list[int]) -> dict[str, float]:
    n = len(values)
    ece, squared, worst = 0.0, 0.0, 0.0
    for b in sorted(set(bins)):
        members = [i for i in range(n) if bins[i] == b]
        gap = abs(
            sum(targets[i] for i in members) / len(members)
            - sum(values[i] for i in members) / len(members)
        )
        ece += len(members) / n * gap
        squared += len(members) / n * gap**2
        worst = max(worst, gap)
    return {"l1": ece, "l2": math.sqrt(squared), "max": worst}


def reference_ece(probs, labels, n_bins, norm="l1", binning="uniform") -> float:
    confidence, correct = top_label(probs, labels)
    if binning == "uniform":
        bins = [uniform_bin(c, n_bins, probs.dtype.type) for c in confidence]
    else:
        bins = quantile_bins(confidence, n_bins)
    return binned_errors(confidence, correct, bins)[norm]


def reference_classwise(probs, labels, n_bins) -> float:
    per_class = []
    for k in range(probs.shape[1]):
        values = [float(p) for p in probs[:, k]]
        targets = [float(int(y) == k) for y in labels]
        bins = [uniform_bin(v, n_bins, probs.dtype.type) for v in values]
        per_class.append(binned_errors(values, targets, bins)["l1"])
    return sum(per_class) / len(per_class)


def reference_debiased(probs, labels, n_bins) -> float | None:
    """Kumar et al.'s get_calibration_error(p=2, debias=True, mode="top-label"), scaling branch."""
    confidence, correct = top_label(probs, labels)
    ordered = sorted(confidence)
    size = math.ceil(len(ordered) / n_bins)
    chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    edges = [(chunks[i][-1] + chunks[i + 1][0]) / 2 for i in range(len(chunks) - 1)] + [1.0]
    edges = sorted(set(edges))
    binned: list[list[int]] = [[] for _ in edges]
    for i, c in enumerate(confidence):
        binned[next(j for j, e in enumerate(edges) if c <= e)].append(i)
    if all(len(members) < 2 for members in binned):
        return None  # no bin estimates a variance: undefined
    total = 0.0
    for members in binned:
        if len(members) < 2:
            continue
        mean_conf = sum(confidence[i] for i in members) / len(members)
        mean_label = sum(correct[i] for i in members) / len(members)
        error = (mean_conf - mean_label) ** 2 - mean_label * (1 - mean_label) / (len(members) - 1)
        total += len(members) / len(confidence) * error
    return math.sqrt(max(total, 0.0))


# ----------------------------------------------------------------------------- strategies
@st.composite
def prob_label_arrays(draw, min_classes: int = 1, max_classes: int = 6, max_n: int = 40):
    """Float32 probability rows (with many ties, zeros and ones) and matching labels."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(min_classes, max_classes))
    weights = draw(
        hnp.arrays(
            np.float32,
            (n, k),
            elements=st.one_of(
                st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0]),
                st.floats(0, 10, width=32),
            ),
        )
    )
    weights[weights.sum(axis=1) == 0] = 1.0
    probs = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    return probs, labels


def random_probs(n: int, k: int, seed: int = 0, sharpness: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharpness * torch.randn(n, k, generator=g), dim=1)
    labels = torch.randint(0, k, (n,), generator=g)
    return probs, labels


# ----------------------------------------------------------------------------- torchmetrics
def torchmetrics_bins(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    edges = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype)
    return torch.bucketize(confidence, edges, right=True) - 1


@SETTINGS
@given(data=prob_label_arrays(min_classes=2), norm=st.sampled_from(["l1", "l2", "max"]))
def test_equals_torchmetrics_property(data, norm):
    probs, labels = data
    probs_t, labels_t = torch.from_numpy(probs), torch.from_numpy(labels)
    confidence = probs_t.max(dim=1).values
    # The two documented differences: c = 1.0 (torchmetrics' extra bin) and confidences within an
    # ulp of an edge that torch.linspace rounds differently from j/M.
    assume(bool((confidence < 1).all()))
    ours = torch.bucketize(
        confidence, torch.arange(1, 15, dtype=torch.float64).div(15).float(), right=True
    )
    assume(torch.equal(ours, torchmetrics_bins(confidence, 15)))
    expected = tm_functional.multiclass_calibration_error(
        probs_t, labels_t, num_classes=probs.shape[1], n_bins=15, norm=norm
    )
    actual = expected_calibration_error(probs_t, labels_t, n_bins=15, norm=norm)
    assert float(actual) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("n_bins", [10, 15])
def test_equals_torchmetrics_random(norm, n_bins):
    probs, labels = random_probs(20_000, 10, seed=n_bins)
    assert bool((probs.max(dim=1).values < 1).all())
    expected = tm_functional.multiclass_calibration_error(
        probs, labels, num_classes=10, n_bins=n_bins, norm=norm.value
    )
    actual = expected_calibration_error(probs, labels, n_bins=n_bins, norm=norm)
    assert float(actual) == pytest.approx(float(expected), abs=1e-6)
    assert float(actual) > 0


def test_confidence_one_differs_from_torchmetrics_as_documented():
    probs = torch.tensor([[1.0, 0.0], [0.99, 0.01]])
    labels = torch.tensor([1, 0])
    # Both confidences share nlpcal's last bin: gap |0.5 - 0.995|. torchmetrics splits them.
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(0.495, abs=1e-6)
    tm = tm_functional.multiclass_calibration_error(probs, labels, num_classes=2, n_bins=15)
    assert float(tm) == pytest.approx(0.5 * 1.0 + 0.5 * 0.01, abs=1e-6)


# ----------------------------------------------------------------------------- slow references
@SETTINGS
@given(
    data=prob_label_arrays(),
    n_bins=st.integers(1, 20),
    norm=st.sampled_from(["l1", "l2", "max"]),
    binning=st.sampled_from(["uniform", "quantile"]),
)
def test_ece_equals_loop(data, n_bins, norm, binning):
    probs, labels = data
    actual = expected_calibration_error(probs, labels, n_bins=n_bins, norm=norm, binning=binning)
    assert float(actual) == pytest.approx(
        reference_ece(probs, labels, n_bins, norm, binning), abs=1e-6
    )


@SETTINGS
@given(data=prob_label_arrays(), n_bins=st.integers(1, 20))
def test_classwise_equals_loop(data, n_bins):
    probs, labels = data
    actual = classwise_calibration_error(probs, labels, n_bins=n_bins)
    assert float(actual) == pytest.approx(reference_classwise(probs, labels, n_bins), abs=1e-6)


@SETTINGS
@given(data=prob_label_arrays(max_n=60), n_bins=st.integers(1, 20))
def test_debiased_equals_kumar_loop(data, n_bins):
    probs, labels = data
    probs = probs.astype(np.float64)
    expected = reference_debiased(probs, labels, n_bins)
    if expected is None:
        with pytest.raises(ValueError, match="undefined"):
            debiased_calibration_error(probs, labels, n_bins=n_bins)
        return
    actual = debiased_calibration_error(probs, labels, n_bins=n_bins)
    assert actual.dtype == torch.float64
    assert float(actual) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("n", [1, 2, 5, 15])
def test_debiased_raises_when_every_bin_holds_one_example(n):
    probs, labels = random_probs(n, 3, seed=n)
    with pytest.raises(ValueError, match=rf"undefined for n={n} examples in n_bins=15"):
        debiased_calibration_error(probs, labels)


def test_debiased_single_example_bins_add_nothing_but_count_in_n():
    # n=5, n_bins=4: chunks of two, so the bins are {0.55, 0.6}, {0.7, 0.8} and {0.9} alone.
    confidence = torch.tensor([0.55, 0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    labels = torch.tensor([1, 1, 0, 1, 1])  # bin 1: both wrong; bin 2: one right; 0.9: wrong
    first = (0.575 - 0.0) ** 2 - 0.0
    second = (0.75 - 0.5) ** 2 - 0.5 * 0.5 / 1
    expected = math.sqrt((2 * first + 2 * second) / 5)
    actual = debiased_calibration_error(probs, labels, n_bins=4)
    assert float(actual) == pytest.approx(expected, abs=1e-12)


@SETTINGS
@given(data=prob_label_arrays(), eps=st.sampled_from([1e-12, 1e-6, 1e-3]))
def test_brier_nll_accuracy_equal_loop(data, eps):
    probs, labels = data
    n, k = probs.shape
    p64 = probs.astype(np.float64)
    brier = sum((p64[i, j] - (j == labels[i])) ** 2 for i in range(n) for j in range(k)) / n
    nll = sum(-math.log(max(float(probs[i, labels[i]]), eps)) for i in range(n)) / n
    acc = sum(int(np.argmax(probs[i])) == labels[i] for i in range(n)) / n
    assert float(brier_score(probs, labels)) == pytest.approx(brier, abs=1e-6)
    assert float(negative_log_likelihood(probs, labels, eps=eps)) == pytest.approx(nll, rel=1e-6)
    assert float(accuracy(probs, labels)) == pytest.approx(acc, abs=1e-7)


@SETTINGS
@given(data=prob_label_arrays(), n_bins=st.integers(1, 20))
def test_calibration_metrics_equal_single_functions(data, n_bins):
    probs, labels = data
    metrics = calibration_metrics(probs, labels, n_bins=n_bins)
    assert list(metrics) == ["accuracy", "ece", "mce", "rmsce", "brier", "nll"]
    singles = {
        "accuracy": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins=n_bins),
        "mce": max_calibration_error(probs, labels, n_bins=n_bins),
        "rmsce": expected_calibration_error(probs, labels, n_bins=n_bins, norm="l2"),
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
    }
    for key, value in singles.items():
        assert metrics[key].shape == ()
        assert float(metrics[key]) == pytest.approx(float(value), abs=1e-7), key


# ----------------------------------------------------------------------------- quantile binning
@SETTINGS
@given(data=prob_label_arrays(max_n=60), n_bins=st.integers(1, 20))
def test_quantile_bins_are_nonempty_and_keep_ties_together(data, n_bins):
    probs, labels = data
    curve = reliability_curve(probs, labels, n_bins=n_bins, binning=Binning.QUANTILE)
    confidence = probs.max(axis=1)
    assert 1 <= curve.count.numel() <= n_bins
    assert bool((curve.count > 0).all())
    assert int(curve.count.sum()) == len(confidence)
    assert curve.edges.numel() == curve.count.numel() + 1
    # Every distinct confidence falls in exactly one bin: the number of bins is at most the
    # number of distinct values, and bins are contiguous ranges of sorted distinct values.
    assert curve.count.numel() <= len(np.unique(confidence))


def test_quantile_bins_have_equal_mass_without_ties():
    probs, labels = random_probs(1003, 4, seed=1)
    curve = reliability_curve(probs, labels, n_bins=10, binning="quantile")
    assert curve.count.numel() == 10
    assert set(curve.count.tolist()) <= {100, 101}


def test_quantile_heavy_ties_merge_bins():
    probs = torch.tensor([[0.6, 0.4]] * 7 + [[0.9, 0.1]] * 3)
    labels = torch.tensor([0] * 6 + [1] + [0] * 3)
    curve = reliability_curve(probs, labels, n_bins=5, binning="quantile")
    assert curve.count.tolist() == [7, 3]
    ece = expected_calibration_error(probs, labels, n_bins=5, binning="quantile")
    assert float(ece) == pytest.approx(0.7 * abs(6 / 7 - 0.6) + 0.3 * abs(1 - 0.9), abs=1e-6)


# ----------------------------------------------------------------------------- hand cases
def test_confidence_exactly_one_goes_to_last_bin():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    curve = reliability_curve(probs, torch.tensor([0, 0]), n_bins=15)
    assert curve.count[-1].item() == 2
    assert float(expected_calibration_error(probs, torch.tensor([0, 0]))) == pytest.approx(0.5)
    assert float(expected_calibration_error(probs, torch.tensor([0, 1]))) == 0.0
    assert float(max_calibration_error(probs, torch.tensor([2, 2]))) == 1.0


def test_probability_exactly_zero_goes_to_first_bin():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(classwise_calibration_error(probs, torch.tensor([0, 1]))) == 0.0
    # Class 0: p = 1 for a negative and p = 0 for a positive; each bin has gap 1.
    assert float(classwise_calibration_error(probs, torch.tensor([1, 0]))) == 1.0


@pytest.mark.parametrize(
    ("confidence", "n_bins", "expected_bin"),
    [
        (0.2, 15, 3),
        (0.4, 15, 6),
        (0.7, 10, 7),
        (0.6, 10, 6),
        (0.5, 2, 1),
        (0.5, 4, 2),
        (0.75, 4, 3),
    ],
)
def test_confidence_on_an_edge_goes_to_the_bin_above(confidence, n_bins, expected_bin):
    n_rest = math.ceil((1 - confidence) / confidence - 1e-9)
    probs = torch.tensor([[confidence] + [(1 - confidence) / n_rest] * n_rest])
    assert float(probs.max()) == np.float32(confidence)
    curve = reliability_curve(probs, torch.tensor([0]), n_bins=n_bins)
    assert curve.count.tolist() == [int(j == expected_bin) for j in range(n_bins)]


def test_empty_bins_do_not_count():
    probs = torch.tensor([[0.95, 0.05]] * 4)
    labels = torch.tensor([0, 0, 0, 0])
    assert float(max_calibration_error(probs, labels)) == pytest.approx(0.05, abs=1e-6)
    curve = reliability_curve(probs, labels, n_bins=15)
    assert int((curve.count > 0).sum()) == 1
    assert bool(curve.accuracy[curve.count == 0].isnan().all())


def test_one_class():
    probs = torch.ones(5, 1)
    labels = torch.zeros(5, dtype=torch.long)
    metrics = calibration_metrics(probs, labels)
    assert {key: float(value) for key, value in metrics.items()} == {
        "accuracy": 1.0,
        "ece": 0.0,
        "mce": 0.0,
        "rmsce": 0.0,
        "brier": 0.0,
        "nll": 0.0,
    }
    assert float(classwise_calibration_error(probs, labels)) == 0.0
    assert float(debiased_calibration_error(probs, labels)) == 0.0


def test_one_example():
    metrics = calibration_metrics(torch.tensor([[0.7, 0.3]]), torch.tensor([1]))
    assert float(metrics["accuracy"]) == 0.0
    for key in ("ece", "mce", "rmsce"):
        assert float(metrics[key]) == pytest.approx(0.7, abs=1e-6)
    assert float(metrics["brier"]) == pytest.approx(0.98, abs=1e-6)
    assert float(metrics["nll"]) == pytest.approx(-math.log(0.3), abs=1e-6)


def test_argmax_ties_pick_the_first_class():
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    assert float(accuracy(probs, torch.tensor([0, 1]))) == 0.5
    assert float(accuracy(probs, torch.tensor([1, 1]))) == 0.0


def test_nll_is_finite_for_zero_probability():
    probs = torch.tensor([[1.0, 0.0]])
    nll = negative_log_likelihood(probs, torch.tensor([1]), eps=1e-6)
    assert float(nll) == pytest.approx(-math.log(1e-6), rel=1e-6)
    assert math.isfinite(float(negative_log_likelihood(probs, torch.tensor([1]))))


def test_debiased_is_smaller_for_calibrated_than_miscalibrated():
    g = torch.Generator().manual_seed(0)
    confidence = 0.5 + 0.5 * torch.rand(4000, generator=g)
    correct = torch.rand(4000, generator=g) < confidence
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    calibrated = debiased_calibration_error(probs, (~correct).long())
    overconfident = debiased_calibration_error(probs, (torch.rand(4000, generator=g) < 0.5).long())
    assert float(calibrated) < 0.03
    assert float(overconfident) > 0.2


def test_l2_lies_between_l1_and_max():
    probs, labels = random_probs(2000, 5, seed=3)
    l1, l2, worst = (expected_calibration_error(probs, labels, norm=n) for n in Norm)
    assert float(l1) <= float(l2) <= float(worst)
    assert float(l1) > 0


# ----------------------------------------------------------------------------- dtypes and inputs
def test_float16_input_is_computed_in_float32():
    probs, labels = random_probs(500, 4, seed=4)
    half = probs.half()
    metrics = calibration_metrics(half, labels)
    reference = calibration_metrics(half.float(), labels)
    for key, value in metrics.items():
        assert value.dtype == torch.float32
        assert float(value) == float(reference[key])


def test_bfloat16_input_works():
    probs, labels = random_probs(500, 4, seed=4)
    value = expected_calibration_error(probs.bfloat16(), labels)
    assert value.dtype == torch.float32
    assert math.isfinite(float(value))


def test_float64_input_stays_float64():
    probs, labels = random_probs(100, 3)
    assert calibration_metrics(probs.double(), labels)["ece"].dtype == torch.float64


def test_numpy_and_list_inputs_equal_tensor_input():
    probs, labels = random_probs(300, 4, seed=5)
    tensor = calibration_metrics(probs, labels)
    from_numpy = calibration_metrics(probs.numpy(), labels.numpy())
    from_lists = calibration_metrics(probs.tolist(), labels.tolist())
    for key in tensor:
        assert float(from_numpy[key]) == float(tensor[key])
        assert float(from_lists[key]) == pytest.approx(float(tensor[key]), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_stays_on_device():
    probs, labels = random_probs(1000, 5)
    on_gpu = calibration_metrics(probs.cuda(), labels.cuda())
    on_cpu = calibration_metrics(probs, labels)
    for key, value in on_gpu.items():
        assert value.device.type == "cuda"
        assert float(value) == pytest.approx(float(on_cpu[key]), abs=1e-6)


# ----------------------------------------------------------------------------- bad input
GOOD_PROBS = [[0.7, 0.3], [0.4, 0.6]]


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        ([[float("nan"), 0.5], [0.5, 0.5]], [0, 1], "NaN"),
        ([[float("inf"), 0.0], [0.5, 0.5]], [0, 1], "non-finite"),
        (GOOD_PROBS, [0, 2], r"labels must lie in \[0, 1\]"),
        (GOOD_PROBS, [-1, 0], "labels must lie"),
        (GOOD_PROBS, [0, 1, 1], "3 entries but there are 2"),
        (GOOD_PROBS, [[0], [1]], "labels must have shape"),
        (GOOD_PROBS, [0.5, 1.0], "integer class indices"),
        ([0.7, 0.3], [0], r"shape \(n_examples, n_classes\)"),
        ([[0.7, 0.7], [0.4, 0.6]], [0, 1], "rows must sum to 1"),
        ([[1.5, -0.5], [0.4, 0.6]], [0, 1], r"must lie in \[0, 1\]"),
        (np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64), "empty"),
    ],
)
def test_bad_input_raises(probs, labels, match):
    for fn in (
        expected_calibration_error,
        classwise_calibration_error,
        debiased_calibration_error,
        brier_score,
        negative_log_likelihood,
        accuracy,
        calibration_metrics,
        reliability_curve,
    ):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def every_metric_entry_point():
    from nlpcal.functional.metrics import evaluation_metrics
    from nlpcal.metrics import CalibrationAccumulator

    return [
        expected_calibration_error,
        max_calibration_error,
        classwise_calibration_error,
        debiased_calibration_error,
        brier_score,
        negative_log_likelihood,
        accuracy,
        calibration_metrics,
        evaluation_metrics,
        reliability_curve,
        CalibrationAccumulator().update,
    ]


@pytest.mark.parametrize(
    "labels",
    [np.array(["pos", "neg"]), ["pos", "neg"], np.array(["pos", "neg"], dtype=object)],
    ids=["numpy-str", "list-str", "numpy-object"],
)
def test_string_labels_ask_for_class_indices(labels):
    expected = r"labels must be integer class indices in \[0, 1\], got .* such as 'pos'"
    for fn in every_metric_entry_point():
        with pytest.raises(ValueError, match=expected):
            fn(GOOD_PROBS, labels)
    from nlpcal.metrics import make_compute_metrics

    with pytest.raises(ValueError, match="label_ids must be integer class indices"):
        make_compute_metrics()((np.zeros((2, 2), dtype=np.float32), np.asarray(labels)))


def test_ragged_labels_are_named():
    with pytest.raises(ValueError, match="labels must be integer class indices of shape"):
        expected_calibration_error(GOOD_PROBS, [[0], [1, 0]])


def test_input_hints_point_at_real_fixes():
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5]])
    with pytest.raises(ValueError, match=r"torch\.softmax\(logits, dim=1\)") as err:
        expected_calibration_error(logits, [0, 1])
    assert "from_logits" not in str(err.value)
    expected_calibration_error(torch.softmax(logits, dim=1), [0, 1])  # the hint's fix works

    transposed = random_probs(5, 3)[0].T  # shape (3, 5): its columns sum to 1
    with pytest.raises(
        ValueError, match=r"pass probs of shape \(n_examples, n_classes\), not its transpose"
    ) as err:
        expected_calibration_error(transposed, [0, 1, 2])
    assert "logits" not in str(err.value)

    scores = torch.tensor([[0.2, 0.3], [0.6, 0.1]])  # e.g. one-vs-all sigmoids
    with pytest.raises(ValueError, match="normalise each row") as err:
        expected_calibration_error(scores, [0, 1])
    assert "transpose" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "n_bins must be a positive integer"),
        ({"n_bins": 2.5}, "n_bins must be a positive integer"),
        ({"norm": "l3"}, "norm must be one of 'l1', 'l2', 'max'"),
        ({"binning": "kmeans"}, "binning must be one of 'uniform', 'quantile'"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(GOOD_PROBS, [0, 1], **kwargs)


def test_bad_eps_raises():
    with pytest.raises(ValueError, match="eps must lie in"):
        negative_log_likelihood(GOOD_PROBS, [0, 1], eps=0.0)


def test_enum_and_string_options_are_interchangeable():
    probs, labels = random_probs(200, 3)
    assert float(
        expected_calibration_error(probs, labels, norm=Norm.L2, binning=Binning.QUANTILE)
    ) == float(expected_calibration_error(probs, labels, norm="l2", binning="quantile"))


def test_evaluation_metrics_are_calibration_metrics_plus_aurc_of_the_max_probability():
    from nlpcal.functional.metrics import evaluation_metrics
    from nlpcal.functional.selective import aurc

    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g), dim=1)
    labels = torch.randint(0, 4, (500,), generator=g)
    values = evaluation_metrics(probs, labels, n_bins=10)
    expected = calibration_metrics(probs, labels, n_bins=10)
    confidence, prediction = probs.max(dim=1)
    expected["aurc"] = aurc(confidence, prediction == labels)
    assert values.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(values[key].double(), expected[key].double()), key
