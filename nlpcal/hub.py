"""Save, load and share calibrated models.

A calibrated model folder is a normal ``save_pretrained`` folder plus ``nlpcal_config.json`` (the
calibration record, :func:`calibration_record`: the training loss, each post-hoc variant's
calibrator, the active variant, whether it is folded into the weights, the metrics) and each
fitted calibrator in ``calibrators/<variant>/``. An affine active calibrator (temperature, vector
scaling) on a loss whose predictive logits are the model's own is folded into the output layer,
so that plain ``transformers`` (``AutoModelForSequenceClassification``, ``pipeline``) gives the
calibrated probabilities; ``nlpcal_unfolded.safetensors`` keeps that layer's unfolded weights.
The folder loads back with :func:`load_calibrated` from a local path or a Hub repository id;
folders saved before folding (no ``format`` key) and before several calibrators (one
``calibrator/`` folder) load too. The model card (``README.md``, :func:`model_card`) says which
loaders give calibrated outputs.

Saving goes through a temporary folder (:func:`~nlpcal._io.staged_folder`), so a failed save
leaves the previous one as it was; a failed Hub call raises :class:`HubError`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nlpcal import __version__
from nlpcal._io import check_safetensors, read_json, staged_folder, write_text_atomic
from nlpcal.functional.predictive import class_probabilities, split_confidence
from nlpcal.functional.scaling import fold_affine
from nlpcal.losses import CalibrationLoss, create_loss
from nlpcal.losses._modules import num_labels, output_layer, unwrap_model
from nlpcal.losses.sites import model_sites
from nlpcal.metrics.vocabulary import METRICS
from nlpcal.posthoc import Calibrator, load_calibrator

__all__ = [
    "CalibratedModel",
    "HubError",
    "calibration_card",
    "calibration_record",
    "fold_refusal",
    "hub_reason",
    "load_calibrated",
    "model_card",
    "save_calibration",
]

CONFIG_NAME = "nlpcal_config.json"
RECORD_FORMAT = 2  # 1: before folding (no "format" key); 2: "folded", metrics, eval sets
UNFOLDED_NAME = "nlpcal_unfolded.safetensors"
DIAGRAM_NAME = "reliability_diagram.png"
CARD_METRICS = ("accuracy", "ece", "brier", "nll")  # keys of nlpcal.metrics.vocabulary
CALIBRATORS_DIR = "calibrators"
LEGACY_CALIBRATOR_DIR = "calibrator"  # the one calibrator of a save from before several
# What a save writes that a new save must not leave behind when it writes no new copy: the
# weights (an older, larger save's shards) and the calibration (calibrators no longer fitted,
# the unfolded layer of a fold this save does not make).
REPLACED_ON_SAVE = (
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    CALIBRATORS_DIR,
    LEGACY_CALIBRATOR_DIR,
    CONFIG_NAME,
    UNFOLDED_NAME,
)


class HubError(OSError):
    """A call to the Hugging Face Hub failed; the message names the repository and the reason."""


def fold_refusal(
    model: nn.Module, loss: CalibrationLoss, calibrator: Calibrator | None
) -> str | None:
    """Why ``calibrator`` cannot be folded into ``model``'s weights, or ``None`` when it can.

    Folding needs a loss whose predictive logits are the model's own (``loss.raw_logits``), an
    affine calibrator (:meth:`~nlpcal.posthoc.Calibrator.affine`: temperature and vector
    scaling), a single-label classifier (which plain ``transformers`` reads with a softmax) and
    an output layer that :func:`~nlpcal.losses._modules.output_layer` finds.

    >>> from transformers import RobertaConfig, RobertaForSequenceClassification
    >>> from nlpcal.posthoc import create_calibrator
    >>> model = RobertaForSequenceClassification(RobertaConfig(
    ...     hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
    ...     vocab_size=10, num_labels=3))
    >>> scaler = create_calibrator("temperature").fit(torch.randn(8, 3), torch.arange(8) % 3)
    >>> fold_refusal(model, create_loss("cross_entropy"), scaler) is None
    True
    >>> fold_refusal(model, create_loss("ova"), scaler)
    "the ova loss's predictive distribution is not the softmax of the model's logits"
    """
    if calibrator is None:
        return "no post-hoc calibrator is active"
    if not loss.raw_logits:
        return f"the {loss.name} loss's predictive distribution is not the softmax of the model's logits"
    if not calibrator.normalized or calibrator.affine() is None:
        return f"the {calibrator.name} calibrator is not an affine map of the logits"
    config = getattr(unwrap_model(model), "config", None)
    problem = getattr(config, "problem_type", None)
    if problem not in (None, "single_label_classification") or num_labels(model) < 2:
        return (
            f"the model is not a single-label classifier (problem_type={problem!r}, "
            f"num_labels={num_labels(model)}), so plain transformers does not apply a softmax"
        )
    try:
        _, layer = output_layer(model)
    except ValueError as err:
        return str(err)
    _, shift = calibrator.affine()
    if layer.bias is None and bool((torch.as_tensor(shift) != 0).any()):
        return f"the output layer has no bias to hold the {calibrator.name} calibrator's shift"
    return None


def calibration_record(
    loss: CalibrationLoss,
    calibrators: Mapping[str, Calibrator],
    active: str | None = None,
    model: nn.Module | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    ece_bins: int | None = None,
    eval_sets: Mapping[str, Any] | None = None,
    fold: bool = True,
    drift: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The calibration record that ``nlpcal_config.json`` holds: the one authoritative account of
    a save's calibration, which :func:`load_calibrated`, the model card and the Hub read.

    Keys: ``loss`` and ``loss_config``; ``calibrators`` (variant name → calibrator name),
    ``posthoc`` (each variant's calibrator, config and fitted scalars) and ``active_calibrator``;
    ``folded`` (the fold of the active calibrator into the model's output layer: ``variant``,
    ``calibrator``, ``layer``, per-class ``scale`` and ``shift``, and ``unfolded_weights``, the
    file with the layer's weights before folding) or ``None``, with the reason in ``not_folded``;
    ``ece_bins``, ``eval_sets`` (``in_domain``, ``shifted``, ``calibration`` set names) and
    ``metrics`` (``CalibratedTrainer.evaluate()``'s numbers as ``{set: {variant: {metric:
    value}}}``, ``"none"`` the uncalibrated variant); ``drift`` (how the drift-aware variants
    were fitted: ``variants``, ``copies``, ``perturbation`` and, for embedding perturbations,
    the ``schedule``, or the ``description`` of the copies given) or ``None``.

    Args:
        loss: the training loss.
        calibrators: the fitted calibrators by variant name.
        active: the variant applied by default (default: the first).
        model: the model, to decide whether the active calibrator can be folded into it (no
            model: not folded).
        metrics: evaluation results to record: ``evaluate()``'s flat dict or the nested form.
        ece_bins: the number of ECE bins of ``metrics``.
        eval_sets: which eval sets are in-domain, shifted and the calibration set.
        fold: fold the active calibrator when it can be (see :func:`fold_refusal`).
        drift: how the drift-aware variants were fitted (see above); only the variants among
            ``calibrators`` are kept.
    """
    if active is not None and active not in calibrators:
        raise ValueError(f"active calibrator {active!r} is not among {list(calibrators)}")
    unknown = sorted(set(eval_sets or {}) - {"in_domain", "shifted", "calibration"})
    if unknown:
        raise ValueError(
            f"eval_sets has the keys {unknown}; expected 'in_domain', 'shifted', 'calibration'"
        )
    if ece_bins is not None and (
        isinstance(ece_bins, bool) or not isinstance(ece_bins, int) or ece_bins < 1
    ):
        raise ValueError(f"ece_bins must be a positive integer or None, got {ece_bins!r}")
    active = active or next(iter(calibrators), None)
    calibrator = calibrators.get(active) if active is not None else None
    if model is None:
        reason = "saved without the model"
    elif not fold:
        reason = "not asked for (fold=False, e.g. a checkpoint during training)"
    else:
        reason = fold_refusal(model, loss, calibrator)
    folded = None
    if reason is None:
        layer, _ = output_layer(model)
        scale, shift = (_per_class(x, num_labels(model)) for x in calibrator.affine())
        folded = {
            "variant": active,
            "calibrator": calibrator.name,
            "layer": layer,
            "scale": scale,
            "shift": shift,
            "unfolded_weights": UNFOLDED_NAME,
        }
    return {
        "nlpcal_version": __version__,
        "format": RECORD_FORMAT,
        "loss": loss.name,
        "loss_config": loss.config(),
        "calibrators": {variant: c.name for variant, c in calibrators.items()},
        "posthoc": {variant: _posthoc_entry(c) for variant, c in calibrators.items()},
        "active_calibrator": active,
        "folded": folded,
        "not_folded": None if folded else reason,
        "ece_bins": ece_bins,
        "eval_sets": dict(eval_sets or {}),
        "metrics": _metrics_by_set(metrics or {}, list(calibrators)),
        "drift": _drift_entry(drift, calibrators),
    }


def _drift_entry(
    drift: Mapping[str, Any] | None, calibrators: Mapping[str, Calibrator]
) -> dict[str, Any] | None:
    """The record's ``drift`` entry, for the drift-aware variants among ``calibrators`` (none
    left: ``None``)."""
    variants = [v for v in (drift or {}).get("variants", ()) if v in calibrators]
    return {**drift, "variants": variants} if variants else None


def _per_class(value: Tensor, k: int) -> list[float]:
    return torch.as_tensor(value).detach().float().cpu().broadcast_to((k,)).tolist()


def _posthoc_entry(calibrator: Calibrator) -> dict[str, Any]:
    fitted = {
        name: float(getattr(calibrator, name))
        for name in ("temperature", "exponent")
        if hasattr(calibrator, name)
    }
    return {"calibrator": calibrator.name, "config": calibrator.config(), "fitted": fitted}


def save_calibration(
    directory: str | os.PathLike,
    loss: CalibrationLoss,
    calibrators: Mapping[str, Calibrator],
    active: str | None = None,
    model: nn.Module | None = None,
    **record: Any,
) -> dict[str, Any]:
    """Write the loss and the fitted calibrators (by variant name; ``active``, default the first,
    is the one :func:`load_calibrated` applies) next to a ``save_pretrained`` folder, and fold the
    active calibrator into the saved weights when it can be (see :func:`calibration_record`).

    Every fitted calibrator is saved in ``calibrators/<variant>/`` (safetensors + JSON), folded or
    not; only the active one can be folded, and the others are applied by
    ``load_calibrated(..., calibrator=variant)``, which first restores the unfolded layer from
    ``nlpcal_unfolded.safetensors``. ``record`` takes :func:`calibration_record`'s keyword
    arguments; the record written to ``nlpcal_config.json`` is returned.
    """
    unfitted = [v for v, c in calibrators.items() if not bool(c.fitted)]
    if unfitted:
        raise ValueError(
            f"the post-hoc calibrators {unfitted} are not fitted: fit them (trainer.calibrate() "
            "or .fit()) before saving"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = calibration_record(loss, calibrators, active, model, **record)
    for variant, calibrator in calibrators.items():
        calibrator.save(directory / CALIBRATORS_DIR / variant)
    if meta["folded"] is not None:
        _fold_saved_weights(directory, meta["folded"])
    write_text_atomic(directory / CONFIG_NAME, json.dumps(meta, indent=2))
    return meta


def _layer_keys(folded: Mapping[str, Any]) -> tuple[str, str]:
    return f"{folded['layer']}.weight", f"{folded['layer']}.bias"


def _weights_file(directory: Path, key: str) -> Path:
    """The saved weights file (or shard) of ``directory`` that holds the tensor ``key``."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, required=("weight_map",))["weight_map"]
        if key not in weight_map:
            raise ValueError(f"{index} maps no file to {key}")
        return directory / weight_map[key]
    return directory / "model.safetensors"


def _fold_saved_weights(directory: Path, folded: Mapping[str, Any]) -> None:
    """Fold ``folded``'s affine map into the saved output layer; keep the layer's saved tensors
    unfolded in ``nlpcal_unfolded.safetensors``. Only the layer's bytes are rewritten, in place
    (same dtype and shape), so the cost does not grow with the model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weight_key, bias_key = _layer_keys(folded)
    file = _weights_file(directory, weight_key)
    if not file.is_file():
        raise FileNotFoundError(f"cannot fold the calibration: no weights file {file}")
    with safe_open(str(file), "pt") as handle:
        saved = set(handle.keys())
        if weight_key not in saved:
            raise ValueError(f"cannot fold the calibration: {file} has no tensor {weight_key}")
        layer = {k: handle.get_tensor(k) for k in (weight_key, bias_key) if k in saved}
    save_file(layer, str(directory / UNFOLDED_NAME), metadata={"format": "pt"})
    weight, bias = fold_affine(
        layer[weight_key], layer.get(bias_key), folded["scale"], folded["shift"]
    )
    new = {weight_key: weight}
    if bias_key in layer:
        new[bias_key] = bias
    _overwrite_tensors(file, new)


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}


def _overwrite_tensors(file: Path, tensors: Mapping[str, Tensor]) -> None:
    """Overwrite tensors of a safetensors file in place; each keeps its dtype and shape."""
    with open(file, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        for key, tensor in tensors.items():
            entry = header[key]
            begin, end = entry["data_offsets"]
            tensor = tensor.detach().cpu().contiguous()
            if entry["shape"] != list(tensor.shape) or entry["dtype"] != _SAFETENSORS_DTYPES.get(
                tensor.dtype
            ):
                raise ValueError(
                    f"{file}: {key} is {entry['dtype']} {entry['shape']}, cannot overwrite it with "
                    f"{tensor.dtype} {list(tensor.shape)}"
                )
            data = tensor.view(torch.uint8).numpy().tobytes()
            if len(data) != end - begin:
                raise ValueError(f"{file}: {key} takes {end - begin} bytes, not {len(data)}")
            handle.seek(8 + length + begin)
            handle.write(data)


def _restore_unfolded(model: nn.Module, folder: Path, folded: Any) -> None:
    """Replace the folded output layer of a loaded model by its saved unfolded weights, after
    checking that the weights still hold the fold that ``nlpcal_config.json`` records."""
    from safetensors.torch import load_file

    config_file = folder / CONFIG_NAME
    keys = ("layer", "scale", "shift", "unfolded_weights")
    if not isinstance(folded, Mapping) or any(k not in folded for k in keys):
        raise ValueError(f"{config_file} is corrupted: expected 'folded' to hold the keys {keys}")
    name = folded["unfolded_weights"]
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"{config_file} is corrupted: 'unfolded_weights' must be a file name")
    file = folder / name
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing: {config_file} records a calibration folded into "
            f"`{folded['layer']}`, and this file holds that layer's weights before folding"
        )
    check_safetensors(file)
    unfolded = load_file(str(file))
    weight_key, bias_key = _layer_keys(folded)
    own = model.state_dict()
    if weight_key not in unfolded or weight_key not in own:
        raise ValueError(f"{file} does not hold the weights of the model's layer {weight_key}")
    weight, bias = fold_affine(
        unfolded[weight_key], unfolded.get(bias_key), folded["scale"], folded["shift"]
    )
    current = [(own[weight_key], weight)]
    if bias_key in unfolded:
        current.append((own[bias_key], bias))
    if not all(torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6) for a, b in current):
        raise ValueError(
            f"the saved weights of `{folded['layer']}` in {folder} do not hold the calibration "
            f"that {config_file} records as folded into them: they were changed after nlpcal "
            "saved them (e.g. by a plain save_pretrained into this folder). Load the folder with "
            "transformers, or save it again with nlpcal"
        )
    model.load_state_dict(unfolded, strict=False)


def calibration_card(record: Mapping[str, Any], diagram: str | None = None) -> str:
    """The model card's calibration sections, from a :func:`calibration_record`: which loaders
    give calibrated outputs, the loss and calibrators (the applied one marked), the metrics of
    every eval set before and after each calibrator, the reliability diagram (the file name
    ``diagram``, relative to the card) and the methods' references."""
    active = record.get("active_calibrator")
    posthoc = record.get("posthoc", {})
    variants = list(record.get("calibrators", {}))
    config = record.get("loss_config") or {}
    lines = [
        "## Loading: which loaders give calibrated outputs",
        "",
        *_loader_notes(record),
        "",
        "## Calibration (nlpcal)",
        "",
        f"- Training loss: `{record['loss']}` {json.dumps(config) if config else ''}".rstrip(),
    ]
    if not variants:
        lines.append("- Post-hoc calibrator: none")
    for variant in variants:
        entry = posthoc.get(variant, {"calibrator": record["calibrators"][variant], "config": {}})
        name = entry["calibrator"]
        label = "" if variant == name else f" (variant `{variant}`)"
        applied = " — applied when loaded" if variant == active else ""
        lines.append(
            f"- Post-hoc calibrator: `{name}`{label} {json.dumps(entry['config'])}{applied}"
        )
        for key, value in entry.get("fitted", {}).items():
            lines.append(f"- Fitted {key}: {value:.4f}")
    drift = record.get("drift")
    if drift:
        lines.append(f"- {_drift_note(drift)}")
    bins = record.get("ece_bins")
    if bins:
        lines.append(f"- ECE: top-label confidence, {bins} equal-width bins")
    table = _metrics_by_set(record.get("metrics", {}), variants)
    if table:
        shifted = set(record.get("eval_sets", {}).get("shifted") or ())
        lines += [
            "",
            "| eval set | metric | uncalibrated | " + " | ".join(variants) + " |",
            "|---|---|---|" + "---|" * len(variants),
        ]
        for name, by_variant in table.items():
            shown = f"{name} (shifted)" if name in shifted else name
            for metric in CARD_METRICS:
                cells = [by_variant.get(v, {}).get(metric) for v in ("none", *variants)]
                if all(c is None for c in cells):
                    continue
                values = ("" if c is None else f"{c:.4f}" for c in cells)
                lines.append(f"| {shown} | {METRICS[metric].label} | " + " | ".join(values) + " |")
    if diagram:
        lines += ["", f"![Reliability diagram of the calibrated model]({diagram})"]
    lines += [
        "",
        "Load it with calibration applied:",
        "",
        "```python",
        "from nlpcal import load_calibrated",
        'model = load_calibrated("<this repo or folder>")',
        'model.predict_proba(["some text"])   # the calibrated distribution',
        'labels, confidence = model.predict(["some text"])   # the calibrated confidence',
        "```",
    ]
    references = _references(record)
    if references:
        lines += ["", "## References", "", *(f"- {r}" for r in references)]
    return "\n".join(lines) + "\n"


def model_card(
    record: Mapping[str, Any],
    *,
    model_name: str | None = None,
    base_model: str | None = None,
    diagram: str | None = None,
    card: Any = None,
) -> Any:
    """A ``huggingface_hub.ModelCard`` of a calibrated model, from its :func:`calibration_record`.

    Its metadata holds the task (``pipeline_tag: text-classification``), the base model, tags
    (``nlpcal``, ``calibration``, the loss and the applied calibrator) and a ``model-index`` with
    the accuracy, ECE, Brier and NLL of every in-domain and shifted eval set as the model loads
    (after the applied calibrator; the calibration set is left out), so that the Hub shows them.
    The text is :func:`calibration_card`, appended to ``card``'s (e.g. ``Trainer``'s card, whose
    metadata it keeps and updates) or under a title.
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = card.data if card is not None else ModelCardData()
    name = model_name or data.get("model_name") or "calibrated-model"
    data.library_name = "transformers"
    data.pipeline_tag = "text-classification"
    if base_model is not None:
        data.base_model = base_model
    active = record.get("active_calibrator")
    tags = ["nlpcal", "calibration", "text-classification", record["loss"]]
    if active is not None:
        tags.append(record["calibrators"][active])
    data.tags = list(dict.fromkeys([*(data.tags or []), *tags]))
    results = _eval_results(record)
    data.eval_results = results or None
    data.model_name = name if results else None
    body = calibration_card(record, diagram)
    text = f"{card.text.rstrip()}\n\n{body}" if card is not None else f"# {name}\n\n{body}"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _loader_notes(record: Mapping[str, Any]) -> list[str]:
    """Plain words on what plain ``transformers`` and ``load_calibrated`` give."""
    folded, active = record.get("folded"), record.get("active_calibrator")
    calibrator = record.get("calibrators", {}).get(active)
    plain = '`AutoModelForSequenceClassification` and `pipeline("text-classification", top_k=None)`'
    if folded:
        return [
            f"- {plain} give the **calibrated** probabilities: the `{folded['calibrator']}` "
            f"calibrator is folded into the weights of the output layer `{folded['layer']}`. "
            "Nothing beyond `transformers` is needed.",
            "- `nlpcal.load_calibrated` gives the same probabilities. It restores the layer's "
            f"weights from before folding (`{folded['unfolded_weights']}`) and applies the "
            "calibrator itself, so it can also apply another saved variant or none "
            "(`calibrator=`), and further fine-tuning starts from the trained weights.",
        ]
    reason = record.get("not_folded") or "not recorded"
    loss = create_loss(record["loss"], **record.get("loss_config", {}))
    if not loss.raw_logits:
        then = f" and the `{calibrator}` calibrator" if calibrator else ""
        return [
            f"- The softmax that {plain} apply to this model's logits is **not** its predictive "
            f"distribution: the `{loss.name}` loss defines its own. Use `nlpcal.load_calibrated`, "
            f"which applies the loss's output transform{then}."
        ]
    if calibrator is None:
        return [
            f"- {plain} and `nlpcal.load_calibrated` give the same probabilities: no post-hoc "
            "calibrator was fitted."
        ]
    return [
        f"- {plain} give the **uncalibrated** probabilities: the `{calibrator}` calibrator is not "
        f"folded into the weights ({reason}).",
        f"- `nlpcal.load_calibrated` applies the `{calibrator}` calibrator (stored as "
        "safetensors + JSON in `calibrators/`).",
    ]


def _metrics_by_set(
    metrics: Mapping[str, Any], variants: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{set: {variant: {metric: value}}}`` from ``evaluate()``'s flat keys
    (``eval_<set>_[<variant>_]<metric>``, metrics of :data:`~nlpcal.metrics.vocabulary.METRICS`);
    the variant ``"none"`` is uncalibrated. Metrics of variants other than ``variants`` (named
    like a registered calibrator) are left out. Already nested metrics are returned as they are.
    """
    from nlpcal.posthoc import list_calibrators

    if all(isinstance(v, Mapping) for v in metrics.values()):
        return {k: {v: dict(m) for v, m in by.items()} for k, by in metrics.items()}
    names = sorted(METRICS, key=len, reverse=True)
    others = sorted(set(list_calibrators()) - set(variants), key=len, reverse=True)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        metric = next((m for m in names if key.endswith(f"_{m}")), None)
        if metric is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        stem = key[: -len(metric) - 1]
        if any(stem.endswith(f"_{v}") for v in others):
            continue
        variant = next((v for v in variants if stem.endswith(f"_{v}")), "none")
        if variant != "none":
            stem = stem[: -len(variant) - 1]
        name = stem.removeprefix("eval_")
        table.setdefault(name, {}).setdefault(variant, {})[metric] = float(value)
    return table


def _eval_results(record: Mapping[str, Any]) -> list[Any]:
    """``model-index`` entries: each eval set's metrics as the model loads (the applied
    calibrator's), except on the calibration set, which the calibrator was fitted on."""
    from huggingface_hub import EvalResult

    sets = record.get("eval_sets", {})
    shifted = set(sets.get("shifted") or ())
    active = record.get("active_calibrator") or "none"
    calibration = sets.get("calibration")
    bins = record.get("ece_bins")
    results = []
    table = _metrics_by_set(record.get("metrics", {}), list(record.get("calibrators", {})))
    for name, by_variant in table.items():
        if name == calibration or active not in by_variant:
            continue
        kind = "shifted" if name in shifted else "in-domain"
        for metric in CARD_METRICS:
            if metric not in by_variant[active]:
                continue
            value = by_variant[active][metric]
            results.append(
                EvalResult(
                    task_type="text-classification",
                    task_name="Text Classification",
                    dataset_type=name,
                    dataset_name=f"{name} ({kind})",
                    metric_type=metric,
                    metric_name=f"{METRICS[metric].label} ({active if active != 'none' else 'uncalibrated'})",
                    metric_value=round(float(value), 6),
                    metric_args={"n_bins": bins} if metric == "ece" and bins else None,
                )
            )
    return results


def _drift_note(drift: Mapping[str, Any]) -> str:
    """One line of the model card on how the drift-aware variants were fitted."""
    variants = ", ".join(f"`{v}`" for v in drift["variants"])
    schedule = drift.get("schedule")
    if schedule:
        what = (
            f"{schedule['family']} perturbations of the input embeddings at relative strengths "
            + ", ".join(f"{s:.3g}" for s in schedule["strengths"])
            + f" (calibration accuracy {schedule['clean_accuracy']:.3f} clean, "
            + ", ".join(f"{a:.3f}" for a in schedule["accuracies"])
            + " perturbed)"
        )
    else:
        what = f"copies: {drift.get('description') or 'perturbed copies given to the trainer'}"
    return (
        f"Drift-aware fitting (Tomani et al. 2021) of {variants}: the calibration data plus "
        f"{drift['copies']} {what}, each copy weighted as the clean data"
    )


def _references(record: Mapping[str, Any]) -> list[str]:
    """The ``References:`` of the loss's and each calibrator's class docstring, once each."""
    import inspect

    from nlpcal.posthoc import calibrator_class

    classes = [type(create_loss(record["loss"], **record.get("loss_config", {})))]
    classes += [
        calibrator_class(name) for name in dict.fromkeys(record.get("calibrators", {}).values())
    ]
    found = []
    for cls in classes:
        doc = inspect.getdoc(cls) or ""
        _, marker, rest = doc.partition("References:\n")
        if marker:
            block = rest.split("\n\n", 1)[0]
            found.append(" ".join(line.strip() for line in block.splitlines()))
    return list(dict.fromkeys(found))


class CalibratedModel(nn.Module):
    """A classifier with its training loss's output transform and its post-hoc calibrator.

    Calling it returns calibrated logits; :meth:`predict_proba` goes from raw text to
    probabilities.

    Args:
        model: the fine-tuned sequence classifier.
        loss: the calibration loss it was trained with (defines the predictive distribution).
        calibrator: a fitted post-hoc calibrator, or ``None``.
        tokenizer: the tokenizer, needed by :meth:`predict_proba`.
        variant: the calibrator's variant name, which :meth:`save_pretrained` saves it under
            (default: the calibrator's name).
        record: the calibration record of the folder it was loaded from (set by
            :func:`load_calibrated`; its metrics go into a new save's card).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: CalibrationLoss,
        calibrator: Calibrator | None = None,
        tokenizer: Any = None,
        variant: str | None = None,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.record = dict(record) if record is not None else None
        self.model = model
        self.loss = loss
        self.calibrator = calibrator
        self.tokenizer = tokenizer
        self.variant = variant

    @torch.no_grad()
    def forward(self, **inputs: Tensor) -> Tensor:
        """Calibrated logits for a tokenised batch."""
        inputs.pop("labels", None)
        outputs = self.model(**inputs, output_hidden_states=self._needs_features() or None)
        logits = self.loss.transform_logits(outputs.logits, self.model).float()
        if self.calibrator is None:
            return logits
        features = model_sites(self.model).features(outputs) if self._needs_features() else None
        return self.calibrator(logits, features)

    @property
    def normalized(self) -> bool:
        """Whether the softmax of the calibrated logits is the predictive distribution (``False``
        for SLOVA's unnormalised outputs, see :mod:`nlpcal.functional.predictive`)."""
        stage = self.calibrator if self.calibrator is not None else self.loss
        return stage.normalized

    @torch.no_grad()
    def class_probabilities(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 32,
        max_length: int = 128,
    ) -> Tensor:
        """Calibrated class probabilities ``(n, K)`` for raw texts (and second segments): rows
        sum to one, except for SLOVA's unnormalised class confidences (see
        :mod:`nlpcal.functional.predictive`)."""
        if self.tokenizer is None:
            raise ValueError("predicting from texts needs a tokenizer: pass tokenizer= or load one")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
        self.eval()
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            pair = None if text_pairs is None else list(text_pairs[start : start + batch_size])
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                pair,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(class_probabilities(self(**batch), self.normalized).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.config.num_labels)

    def predict_proba(self, texts: Sequence[str], **kwargs: Any) -> Tensor:
        """The calibrated predictive distribution ``(n, K)``, rows summing to one (what Brier and
        NLL score); arguments as :meth:`class_probabilities`."""
        return split_confidence(self.class_probabilities(texts, **kwargs))[0]

    def predict(self, texts: Sequence[str], **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Predicted class ids ``(n,)`` and their calibrated confidence ``(n,)`` — the quantity
        the calibrator was fitted on and ECE scores; arguments as :meth:`class_probabilities`."""
        probs = self.class_probabilities(texts, **kwargs)
        confidence, labels = probs.max(dim=-1)
        return labels, confidence

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        metrics: Mapping[str, Any] | None = None,
        *,
        curves: Mapping[str, tuple[Any, ...]] | None = None,
        ece_bins: int | None = None,
        eval_sets: Mapping[str, Any] | None = None,
        base_model: str | None = None,
        model_name: str | None = None,
        fold: bool = True,
    ) -> dict[str, Any]:
        """Write model, tokenizer, calibration, a model card (``README.md``) and its reliability
        diagram; returns the calibration record written to ``nlpcal_config.json``.

        When it can be (:func:`fold_refusal`), the calibrator is folded into the saved weights of
        the output layer, so that plain ``transformers`` loads a calibrated model; the layer's
        unfolded weights are kept in ``nlpcal_unfolded.safetensors`` and :func:`load_calibrated`
        restores them (the model in memory is never changed). Everything is written to a
        temporary folder first and moved in only once complete, so a failed save leaves a
        previous one in ``directory`` intact; weight shards and calibration files of a previous
        save that this one does not write are removed, other files are left alone.

        Args:
            directory: the folder to write.
            metrics: evaluation results for the record and the card (e.g.
                ``CalibratedTrainer.evaluate()``'s); default: those recorded in the folder this
                model was loaded from.
            curves: named ``(probs, labels[, confidence])`` tuples to draw in the reliability
                diagram (``reliability_diagram.png``, embedded in the card); none: no diagram.
            ece_bins: the ECE bins of ``metrics`` (and of the diagram; default 15).
            eval_sets: ``{"in_domain": name, "shifted": [names], "calibration": name}``.
            base_model: the Hub id of the model that was fine-tuned, for the card.
            model_name: the card's title (default: the folder's name).
            fold: fold the calibrator into the weights when it can be.
        """
        from nlpcal.metrics.plots import reliability_diagram

        calibrators = {}
        if self.calibrator is not None:
            calibrators[self.variant or self.calibrator.name] = self.calibrator
        loaded = self.record or {}
        if metrics is None:
            metrics = loaded.get("metrics")
            ece_bins = ece_bins or loaded.get("ece_bins")
            eval_sets = eval_sets or loaded.get("eval_sets")
        with staged_folder(directory, REPLACED_ON_SAVE) as staging:
            self.model.save_pretrained(staging)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            record = save_calibration(
                staging,
                self.loss,
                calibrators,
                model=self.model,
                metrics=metrics,
                ece_bins=ece_bins,
                eval_sets=eval_sets,
                fold=fold,
                drift=loaded.get("drift"),
            )
            if curves:
                reliability_diagram(curves, n_bins=ece_bins or 15, path=staging / DIAGRAM_NAME)
            card = model_card(
                record,
                model_name=model_name or Path(directory).resolve().name,
                base_model=base_model,
                diagram=DIAGRAM_NAME if curves else None,
            )
            card.save(staging / "README.md")
        return record

    def push_to_hub(
        self,
        repo_id: str,
        metrics: Mapping[str, Any] | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload calibrated model (nlpcal)",
        **save_kwargs: Any,
    ) -> Any:
        """Upload model, tokenizer, calibration (folded where it can be), card and reliability
        diagram to the Hub repository ``repo_id``; ``save_kwargs`` go to :meth:`save_pretrained`.

        The files are written to a temporary folder and uploaded from there, so no local copy is
        touched whether the upload succeeds or fails. Returns the commit information.

        Raises:
            HubError: when the Hub cannot be reached, there is no token or the Hub refuses it.
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        save_kwargs.setdefault("model_name", repo_id.split("/")[-1])
        with tempfile.TemporaryDirectory(prefix="nlpcal-push-") as folder:
            self.save_pretrained(folder, metrics, **save_kwargs)
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                return api.upload_folder(
                    repo_id=repo_id, folder_path=folder, commit_message=commit_message
                )
            except Exception as err:  # every failure here is the Hub's; the cause is chained
                raise HubError(
                    f"pushing to the Hub repository {repo_id} failed: {_hub_reason(err)}"
                ) from err

    def _needs_features(self) -> bool:
        return self.calibrator is not None and self.calibrator.requires_features


def load_calibrated(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    calibrator: str | None = None,
    **hub_kwargs: Any,
) -> CalibratedModel:
    """Load a calibrated model saved by ``CalibratedTrainer.save_model`` or ``save_pretrained``.

    ``path`` is a local folder or a Hub repository id (downloaded with ``snapshot_download``,
    which gets ``hub_kwargs``). A path that is no folder is tried on the Hub only if it can be a
    repository id (``name`` or ``owner/name``): ``./x``, ``/x``, ``~/x`` or ``a/b/c`` never are.
    ``calibrator`` names the saved post-hoc variant to apply (default: the active one of the
    save; ``"none"``: none). Heads that the loss adds to the model (e.g. the double head's
    temperature network) are re-attached and their weights restored. When the save folded the
    active calibrator into the output layer, the layer's unfolded weights are restored first
    (after checking that the saved layer still holds that fold), so the calibrator is applied
    exactly once and ``model.model`` is the model as trained.

    Raises:
        FileNotFoundError: when there is no such folder (and no such Hub repository), or the
            folder was not saved by nlpcal.
        ValueError: naming the file, when a file of the save is corrupted or truncated; or when
            ``calibrator`` names no saved variant.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _find_folder(path, hub_kwargs)
    saved, active = saved_calibrators(folder)
    config_file = folder / CONFIG_NAME
    meta = read_json(config_file, required=("loss",))
    variant = active if calibrator is None else calibrator
    if variant not in (*saved, None, "none"):
        raise ValueError(
            f"{folder} has no calibrator {variant!r}; saved variants: {list(saved)} (or 'none')"
        )
    try:
        loss = create_loss(meta["loss"], **meta.get("loss_config", {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_file} does not describe a calibration loss: {err}") from err
    weights = sorted(folder.glob("model*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"no model*.safetensors weights in {folder}")
    for file in weights:
        check_safetensors(file)
    if _is_image_adapter(folder):
        from nlpcal.adapters.timm import TimmForImageClassification

        model = TimmForImageClassification.from_pretrained(folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
    loss.prepare_model(model)
    _restore_weights(model, weights)
    if meta.get("folded"):
        _restore_unfolded(model, folder, meta["folded"])
    fitted = saved.get(variant)
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    calibrated = CalibratedModel(
        model.eval(), loss, fitted, tokenizer, variant if fitted else None, record=meta
    )
    if device is not None:
        calibrated.to(device)
    return calibrated


def _is_image_adapter(folder: Path) -> bool:
    """Whether ``folder`` holds an image classifier saved through :mod:`nlpcal.adapters.timm`."""
    config = folder / "config.json"
    return config.is_file() and read_json(config).get("model_type") == "nlpcal_timm"


def _saved_calibrators(
    folder: Path, meta: Mapping[str, Any]
) -> tuple[dict[str, str], str | None, dict[str, Path]]:
    """The saved variants' calibrator names, the active variant and each variant's folder, from
    ``nlpcal_config.json``; a save from before several calibrators has one, in ``calibrator/``."""
    config_file = folder / CONFIG_NAME
    if "calibrators" in meta:
        saved, active = meta["calibrators"], meta.get("active_calibrator")
        if not isinstance(saved, dict) or (saved and active not in saved):
            raise ValueError(
                f"{config_file} is corrupted: expected 'calibrators' to map variant names to "
                f"calibrator names and 'active_calibrator' to name one of them"
            )
        return saved, active, {v: folder / CALIBRATORS_DIR / v for v in saved}
    if "calibrator" not in meta:
        raise ValueError(
            f"{config_file} lacks the keys ['calibrators']; expected a JSON object with the keys "
            "['loss', 'calibrators', 'active_calibrator']"
        )
    name = meta["calibrator"]
    if name is None:
        return {}, None, {}
    return {name: name}, name, {name: folder / LEGACY_CALIBRATOR_DIR}


def saved_calibrators(folder: str | os.PathLike) -> tuple[dict[str, Calibrator], str | None]:
    """The fitted post-hoc calibrators saved in an nlpcal model folder, by variant name, and the
    active variant (``None`` when none is saved).

    Raises:
        FileNotFoundError: the folder was not saved by nlpcal.
        ValueError: naming the file, when the record or a calibrator is corrupted.
    """
    folder = Path(folder)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not saved by nlpcal")
    meta = read_json(config_file, required=("loss",))
    saved, active, location = _saved_calibrators(folder, meta)
    fitted = {}
    for variant, name in saved.items():
        fitted[variant] = load_calibrator(location[variant])
        if fitted[variant].name != name:
            raise ValueError(
                f"{config_file} names the calibrator {name!r} but {location[variant]} holds "
                f"{fitted[variant].name!r}"
            )
    return fitted, active


def _find_folder(path: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> Path:
    """The local folder ``path``, or else the downloaded Hub repository ``path``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ValueError(f"{path} is a file; expected a model folder")
    try:
        validate_repo_id(os.fspath(path))
    except HFValidationError:
        raise FileNotFoundError(f"no folder {path}") from None
    try:
        return Path(snapshot_download(os.fspath(path), **hub_kwargs))
    except Exception as err:  # the Hub's reason goes into the message; the cause is chained
        raise FileNotFoundError(
            f"no folder {path} and no Hub repository {path} ({_hub_reason(err)})"
        ) from err


def hub_reason(err: BaseException) -> str | None:
    """A short reason for a failed Hub call, whichever HTTP library ``huggingface_hub`` uses;
    ``None`` when ``err`` is no Hub, HTTP or connection error (e.g. a bug or a full disk).

    >>> from huggingface_hub.errors import LocalTokenNotFoundError
    >>> hub_reason(LocalTokenNotFoundError("no token"))
    'no Hugging Face token: log in with `hf auth login` or pass token='
    >>> hub_reason(KeyError("x")) is None
    True
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    first_line = str(err).partition("\n")[0]
    detail = f"{type(err).__name__}: {first_line}"
    if isinstance(err, LocalTokenNotFoundError):
        return "no Hugging Face token: log in with `hf auth login` or pass token="
    if isinstance(err, OfflineModeIsEnabled) or (
        isinstance(err, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
    ):
        return "offline mode: HF_HUB_OFFLINE is set"
    if isinstance(err, LocalEntryNotFoundError):
        return "cannot reach the Hub, and no copy in the local cache"
    if isinstance(err, GatedRepoError):
        return "gated repository: ask for access on the Hub and pass a token"
    if isinstance(err, RepositoryNotFoundError):
        return "not found on the Hub, or private and the token cannot read it"
    if isinstance(err, HfHubHTTPError):
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            return f"the Hub refused the token (HTTP {status}): pass a token with write access"
        return f"the Hub answered HTTP {status} ({detail})"
    if {"ConnectionError", "TimeoutError", "Timeout", "TransportError"} & {
        cls.__name__ for cls in type(err).__mro__
    }:
        return f"cannot reach the Hub ({detail})"
    return None


def _hub_reason(err: Exception) -> str:
    """:func:`hub_reason`, or the error's type and first line for any other error."""
    return hub_reason(err) or f"{type(err).__name__}: {str(err).partition(chr(10))[0]}"


def _restore_weights(model: nn.Module, files: Sequence[Path]) -> None:
    """Reload every saved tensor, including those of modules the loss attached after loading."""
    from safetensors.torch import load_file

    own = model.state_dict()
    for file in files:
        state = {k: v for k, v in load_file(str(file)).items() if k in own}
        model.load_state_dict(state, strict=False)
