"""The one vocabulary of metric names: key, human label and direction.

``CalibratedTrainer.evaluate`` keys end in these names (``eval_<set>_[<variant>_]<key>``), and the
benchmark tables, the HTML report and the model card show these labels, in this order.

One family of keys carries a parameter: the accuracy under PGD on the input embeddings at a
relative budget, ``pgd_<norm>_accuracy@<budget>`` (:func:`attack_metric`), measured by the runner
when a recipe asks for it (its ``robustness`` section); :func:`metric` reads those keys too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nlpcal.functional.robustness import AttackNorm

__all__ = ["METRICS", "Metric", "attack_metric", "metric"]


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        key: the name in metric dicts and result files.
        label: the column header in tables.
        lower_is_better: the direction of improvement; ``None`` for a quantity that is neither
            better high nor low (the mean confidence is right when it equals the accuracy).
        description: one line for reports.
    """

    key: str
    label: str
    lower_is_better: bool | None
    description: str

    @property
    def arrow(self) -> str:
        """``↓`` when lower is better, ``↑`` when higher is, else empty."""
        if self.lower_is_better is None:
            return ""
        return "↓" if self.lower_is_better else "↑"


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("accuracy", "accuracy", False, "fraction of correct top-label predictions"),
        Metric(
            "confidence",
            "confidence",
            None,
            "mean top-label confidence: above the accuracy is over-confident, below under-confident",
        ),
        Metric(
            "ece",
            "ECE",
            True,
            "expected calibration error of the top-label confidence, equal-width bins "
            "(15 unless the run says otherwise)",
        ),
        Metric("ece_10", "ECE (10 bins)", True, "ECE with 10 bins, the Desai & Durrett protocol"),
        Metric("mce", "MCE", True, "maximum calibration error over non-empty bins"),
        Metric("rmsce", "RMSCE", True, "root-mean-square calibration error"),
        Metric("brier", "Brier", True, "Brier score of the predictive distribution"),
        Metric("nll", "NLL", True, "negative log-likelihood of the predictive distribution"),
        Metric("aurc", "AURC", True, "area under the risk-coverage curve (selective prediction)"),
        Metric("loss", "loss", True, "the Trainer's evaluation loss: the uncalibrated NLL"),
        Metric("ood_auroc", "OOD AUROC", False, "OOD detection against the in-domain set"),
        Metric("ood_aupr_in", "OOD AUPR-in", False, "average precision, in-domain as positive"),
        Metric("ood_aupr_out", "OOD AUPR-out", False, "average precision, shifted as positive"),
        Metric("ood_fpr95", "OOD FPR@95", True, "shifted examples kept at 95 % in-domain recall"),
    )
}


_NORM_LABELS = {AttackNorm.L2: "L2", AttackNorm.LINF: "L∞"}
_ATTACK_KEY = re.compile(rf"pgd_({'|'.join(n.value for n in AttackNorm)})_accuracy@(.+)")


def attack_metric(norm: AttackNorm | str, budget: float) -> Metric:
    """The accuracy under PGD on the input embeddings within the relative ``budget`` of ``norm``
    (``"l2"`` or ``"linf"``, see :mod:`nlpcal.functional.robustness`); budget 0 is the clean
    accuracy. The key writes the budget with 6 significant digits.

    >>> attack_metric("linf", 0.01).key, attack_metric("linf", 0.01).label
    ('pgd_linf_accuracy@0.01', 'accuracy, PGD L∞ ≤ 0.01')
    """
    norm = AttackNorm(norm)
    return Metric(
        f"pgd_{norm.value}_accuracy@{budget:g}",
        f"accuracy, PGD {_NORM_LABELS[norm]} ≤ {budget:g}",
        False,
        f"accuracy under PGD on the input embeddings within {_NORM_LABELS[norm]} budget "
        f"{budget:g} (relative to the embedding norm)",
    )


def metric(key: str) -> Metric:
    """The :class:`Metric` named ``key`` (a key of :data:`METRICS` or of :func:`attack_metric`);
    unknown keys list the known ones.

    >>> metric("ece").label, metric("accuracy").arrow, metric("pgd_l2_accuracy@0.1").label
    ('ECE', '↑', 'accuracy, PGD L2 ≤ 0.1')
    """
    if key in METRICS:
        return METRICS[key]
    match = _ATTACK_KEY.fullmatch(key)
    if match:
        try:
            return attack_metric(match[1], float(match[2]))
        except ValueError:
            pass
    raise ValueError(
        f"unknown metric {key!r}; known: {', '.join(METRICS)}, pgd_<l2|linf>_accuracy@<budget>"
    )
