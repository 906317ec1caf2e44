"""Deep ensembles: the members' class probabilities averaged, and the ensemble's OOD score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nlpcal.functional._checks import as_float
from nlpcal.functional.predictive import PredictiveOOD, _method, predictive_ood_score

__all__ = ["ensemble_ood_score", "ensemble_probabilities"]


def ensemble_probabilities(member_probs: Sequence[Any] | Tensor) -> Tensor:
    """The ensemble's class probabilities: the mean over members, shape ``(n, K)``.

    Args:
        member_probs: each member's class probabilities ``(n, K)`` on the same examples (a
            sequence, or one tensor ``(M, n, K)``). Rows sum to one, or hold SLOVA's
            unnormalised class confidences (see :mod:`nlpcal.functional.predictive`), whose
            mean is then the ensemble's.

    >>> ensemble_probabilities([torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])])
    tensor([[0.7000, 0.3000]])
    """
    stacked = [as_float(p, f"member_probs[{i}]") for i, p in enumerate(member_probs)]
    if not stacked:
        raise ValueError("an ensemble needs at least one member, got none")
    shapes = {tuple(p.shape) for p in stacked}
    if len(shapes) != 1 or stacked[0].ndim != 2:
        raise ValueError(
            "every member's probabilities must have the same shape (n_examples, n_classes), got "
            f"{[tuple(p.shape) for p in stacked]}"
        )
    return torch.stack(stacked).mean(dim=0)


def ensemble_ood_score(
    mean_probs: Tensor,
    method: PredictiveOOD | str,
    member_scores: Sequence[Any] | None = None,
) -> Tensor:
    """The ensemble's in-distribution score per example (higher: more in-distribution), ``(n,)``.

    The score of the averaged probabilities, read as unnormalised log confidences; except
    ``"energy"``, a function of logits that an average of probabilities does not keep: the mean
    of the members' scores (``member_scores``, required then).

    >>> ensemble_ood_score(torch.tensor([[0.7, 0.3]]), "confidence")
    tensor([0.7000])
    >>> ensemble_ood_score(torch.tensor([[0.7, 0.3]]), "energy", [torch.tensor([2.0]), torch.tensor([4.0])])
    tensor([3.])
    """
    if _method(method) is PredictiveOOD.ENERGY:
        if not member_scores:
            raise ValueError("the ensemble's energy score is the members' mean: pass member_scores")
        scores = [as_float(s, f"member_scores[{i}]") for i, s in enumerate(member_scores)]
        if len({tuple(s.shape) for s in scores}) != 1 or scores[0].ndim != 1:
            raise ValueError(
                f"member_scores must each have shape (n_examples,), got {[tuple(s.shape) for s in scores]}"
            )
        return torch.stack(scores).mean(dim=0)
    log_probs = as_float(mean_probs, "mean_probs").clamp_min(1e-45).log()
    return predictive_ood_score(log_probs, method, normalized=False)
