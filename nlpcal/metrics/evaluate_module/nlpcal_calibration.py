"""nlpcal calibration metrics as a Hugging Face ``evaluate`` module.

Load it offline with ``evaluate.load(nlpcal.metrics.hf_evaluate.evaluate_module_path())`` (the
folder) or with the path of this file. The numbers come from :mod:`nlpcal.functional.metrics`,
so they equal ``calibration_metrics`` and ``classwise_calibration_error``.
"""

import datasets
import evaluate
import numpy as np

from nlpcal.functional.metrics import calibration_metrics, classwise_calibration_error

_DESCRIPTION = """
Calibration of a classifier from its predicted probabilities: accuracy, expected calibration error
(ECE, equal-width bins), maximum calibration error (MCE), root-mean-square calibration error,
classwise ECE, Brier score and negative log-likelihood.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one probability vector per example (each summing to 1).
    references: the integer label of each example.
    n_bins: number of equal-width bins (15 by default; 10 for the Desai & Durrett 2020 protocol).
Returns:
    accuracy, ece, mce, rmsce, brier, nll, classwise_ece: floats.
Examples:
    >>> metric = evaluate.load("path/to/nlpcal/metrics/evaluate_module")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.3, 0.7]], references=[0, 1], n_bins=10)
"""

_CITATION = """
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={ICML},
  year={2017}
}
"""


class NlpcalCalibration(evaluate.Metric):
    """Accuracy, ECE, MCE, RMS calibration error, classwise ECE, Brier score and NLL."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, n_bins: int = 15) -> dict[str, float]:
        probs = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references, dtype=np.int64)
        metrics = calibration_metrics(probs, labels, n_bins=n_bins)
        metrics["classwise_ece"] = classwise_calibration_error(probs, labels, n_bins=n_bins)
        return {name: float(value) for name, value in metrics.items()}
