"""The streaming accumulator equals the one-shot metrics, in one process and across two."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from nlpcal.functional.metrics import calibration_metrics, classwise_calibration_error
from nlpcal.metrics.accumulator import CalibrationAccumulator

SETTINGS = settings(max_examples=50, deadline=None)


def random_data(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, k, generator=g), dim=1)
    labels = torch.randint(0, k, (n,), generator=g)
    return probs, labels


def assert_matches_one_shot(result, probs, labels, n_bins, atol=1e-6):
    expected = calibration_metrics(probs, labels, n_bins=n_bins)
    expected["classwise_ece"] = classwise_calibration_error(probs, labels, n_bins=n_bins)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(float(value), abs=atol), key


@SETTINGS
@given(
    n=st.integers(1, 200),
    k=st.integers(1, 6),
    n_bins=st.integers(1, 20),
    cuts=st.lists(st.integers(0, 200), max_size=5),
    seed=st.integers(0, 1000),
)
def test_streaming_equals_one_shot(n, k, n_bins, cuts, seed):
    probs, labels = random_data(n, k, seed)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    acc = CalibrationAccumulator(n_bins=n_bins)
    for start, stop in itertools.pairwise(bounds):
        acc.update(probs[start:stop], labels[start:stop])
    assert acc.num_examples == n
    assert_matches_one_shot(acc.compute(), probs, labels, n_bins)


def test_state_does_not_grow_with_the_data():
    acc = CalibrationAccumulator(n_bins=15)
    for seed in range(5):
        acc.update(*random_data(1000, 4, seed))
    sizes = [t.numel() for t in (acc._top, acc._totals, acc._per_class)]
    assert sizes == [3 * 15, 2, 3 * 4 * 15]
    assert acc.num_examples == 5000


def test_reset_forgets_everything():
    acc = CalibrationAccumulator(n_bins=10)
    acc.update(*random_data(100, 3, seed=1))
    acc.reset()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    probs, labels = random_data(50, 5, seed=2)  # a different number of classes is fine now
    acc.update(probs, labels)
    assert_matches_one_shot(acc.compute(), probs, labels, 10)


def test_compute_does_not_change_the_state():
    acc = CalibrationAccumulator()
    probs, labels = random_data(300, 3)
    acc.update(probs[:100], labels[:100])
    first = acc.compute()
    assert first == acc.compute()
    acc.update(probs[100:], labels[100:])
    assert_matches_one_shot(acc.compute(), probs, labels, 15)


def test_without_classwise():
    acc = CalibrationAccumulator(classwise=False)
    probs, labels = random_data(100, 3)
    acc.update(probs, labels)
    result = acc.compute()
    assert "classwise_ece" not in result
    assert float(result["ece"]) == pytest.approx(float(calibration_metrics(probs, labels)["ece"]))


def test_half_precision_and_numpy_batches():
    probs, labels = random_data(400, 4, seed=3)
    acc = CalibrationAccumulator()
    acc.update(probs[:200].half(), labels[:200])
    acc.update(probs[200:].half().numpy(), labels[200:].numpy())
    result = acc.compute()
    assert result["ece"].dtype == torch.float32
    assert_matches_one_shot(result, probs.half().float(), labels, 15)


def test_class_count_mismatch_raises():
    acc = CalibrationAccumulator()
    acc.update(*random_data(10, 3))
    with pytest.raises(ValueError, match="4 classes, expected 3"):
        acc.update(*random_data(10, 4))
    given_classes = CalibrationAccumulator(num_classes=2)
    with pytest.raises(ValueError, match="3 classes, expected 2"):
        given_classes.update(*random_data(10, 3))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationAccumulator(n_bins=0)
    with pytest.raises(ValueError, match="num_classes"):
        CalibrationAccumulator(num_classes=0)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        CalibrationAccumulator().update(torch.ones(2, 3), torch.zeros(2, dtype=torch.long))


def test_sync_without_process_group_is_a_copy():
    acc = CalibrationAccumulator()
    acc.update(*random_data(50, 3))
    copy = acc.sync()
    assert copy is not acc
    assert torch.equal(copy._top, acc._top)
    copy._top += 1
    assert not torch.equal(copy._top, acc._top)


# ----------------------------------------------------------------------------- two processes
def _worker(rank: int, world_size: int, init_file: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        probs, labels = random_data(301, 4, seed=7)
        shard = slice(0, 120) if rank == 0 else slice(120, 301)  # unequal shards on purpose
        acc = CalibrationAccumulator(n_bins=10)
        acc.update(probs[shard], labels[shard])
        local = acc.num_examples
        metrics = acc.compute()
        empty = CalibrationAccumulator(n_bins=10, num_classes=4)
        if rank == 1:
            empty.update(probs, labels)
        results[rank] = (
            local,
            {k: float(v) for k, v in metrics.items()},
            acc.num_examples,
            {k: float(v) for k, v in empty.compute().items()},
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_all_reduce(tmp_path):
    world_size = 2
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(world_size, str(tmp_path / "init"), results), nprocs=world_size)
    probs, labels = random_data(301, 4, seed=7)
    for rank in range(world_size):
        local, metrics, after, with_empty_rank = results[rank]
        assert local == (120 if rank == 0 else 181)
        assert after == local  # compute() leaves the local state alone
        assert_matches_one_shot(metrics, probs, labels, 10)
        # A process that saw no batch takes part with zeros when num_classes is given.
        assert_matches_one_shot(with_empty_rank, probs, labels, 10)
