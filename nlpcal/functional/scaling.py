"""Fitting scaling calibrators on held-out logits: temperature, vector scaling, SLOVA's exponent.

Each fit minimises a negative log-likelihood on held-out data. The one-parameter fits
(:func:`fit_temperature`, :func:`fit_confidence_exponent`) work on the log of the parameter so it
stays positive, run L-BFGS with a strong Wolfe line search, and fall back to a golden-section
search over a bounded interval when L-BFGS does not converge. Both objectives are convex in a
monotone transform of the parameter (the NLL of ``softmax(z / T)`` is convex in ``1 / T``; the
binary NLL of ``q^a`` is convex in ``a``), so a 1-D search cannot stop in a spurious local minimum.

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (temperature and vector
    scaling). Desai & Durrett, "Calibration of Pre-trained Transformers", EMNLP 2020 (the
    temperature grid ``T ∈ [0.05, 10]``, step 0.01). Wójcik et al., "SLOVA: Uncertainty
    Estimation Using Single Label One-Vs-All Classifier", 2022 (exponential calibration).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nlpcal.functional._checks import as_float, check_labels, check_logits

__all__ = [
    "confidence_exponent_nll",
    "fit_confidence_exponent",
    "fit_temperature",
    "fit_vector_scaling",
    "fold_affine",
    "grid_search_temperature",
    "reference_temperature_grid",
    "temperature_nll",
]

# Temperatures are kept in [_T_MIN, _T_MAX]; the golden-section fallback searches the grid range.
_T_MIN, _T_MAX = 1e-2, 1e2
_GRID_LO, _GRID_HI = 0.05, 10.0
# SLOVA exponents are kept in [_A_MIN, _A_MAX].
_A_MIN, _A_MAX = 1e-2, 1e2
# Largest number of (example, class, temperature) entries materialised at once.
_CHUNK = 1 << 22
# |d NLL / d log-parameter| below which L-BFGS counts as converged.
_GRAD_TOL = 1e-5
# Width, in log-parameter units, at which the golden-section search stops.
_GOLDEN_TOL = 1e-6
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0

# f(x) -> (value, d value / d x) for a 0-dim float64 x.
Objective = Callable[[Tensor], tuple[Tensor, Tensor]]


def reference_temperature_grid(device: torch.device | str | None = None) -> Tensor:
    """The grid of Desai & Durrett (2020): ``T = 0.05, 0.06, ..., 10.00`` (996 values, float64).

    >>> g = reference_temperature_grid()
    >>> len(g), float(g[0]), float(g[-1])
    (996, 0.05, 10.0)
    """
    return torch.arange(5, 1001, dtype=torch.float64, device=device) / 100


def temperature_nll(logits: Any, labels: Any, temperature: float | Tensor) -> Tensor:
    """Mean NLL of ``softmax(logits / T)`` in float64, for one temperature or a tensor of them.

    Args:
        logits: ``(n, K)`` unnormalised scores.
        labels: ``(n,)`` integer labels.
        temperature: a positive scalar, or a tensor of positive temperatures of any shape.

    Returns:
        A float64 tensor with the shape of ``temperature``.

    >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> temperature_nll(z, torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    tensor([1.1269, 0.8133], dtype=torch.float64)
    """
    logits = check_logits(logits)
    labels = check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
    temps = torch.as_tensor(temperature, dtype=torch.float64, device=logits.device)
    if not bool(torch.isfinite(temps).all()) or bool((temps <= 0).any()):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    shifted, gap = _shift(logits, labels)
    return _nll_at(shifted, gap, temps.reshape(-1)).reshape(temps.shape)


def grid_search_temperature(logits: Any, labels: Any, grid: Tensor | None = None) -> Tensor:
    """The temperature on ``grid`` with the lowest NLL (the protocol of Desai & Durrett 2020).

    Args:
        logits: ``(n, K)`` held-out logits.
        labels: ``(n,)`` integer labels.
        grid: candidate temperatures; defaults to :func:`reference_temperature_grid`.

    Returns:
        The best temperature, a 0-dim float64 tensor (the first one on ties).

    >>> z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> float(grid_search_temperature(z, torch.tensor([0, 1, 1, 0])))
    3.64
    """
    logits = check_logits(logits)
    grid = reference_temperature_grid(logits.device) if grid is None else as_float(grid, "grid")
    grid = grid.to(device=logits.device, dtype=torch.float64).reshape(-1)
    if grid.numel() == 0:
        raise ValueError("grid is empty: pass at least one temperature")
    return grid[temperature_nll(logits, labels, grid).argmin()]


def fit_temperature(logits: Any, labels: Any, max_iter: int = 100) -> Tensor:
    """Fit the temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)``.

    ``T = exp(t)`` is fitted by L-BFGS (strong Wolfe line search) from ``T = 1``. If L-BFGS does
    not converge or ends non-finite, a golden-section search over ``log T ∈ [log 0.05, log 10]``
    takes over. The result is clipped to ``[0.01, 100]`` and finally compared, in float64 NLL,
    with the best temperature of the Desai & Durrett (2020) grid. The NLL is unimodal in ``T``,
    so that grid point is found cheaply: it is one of the two grid points bracketing the fit
    whenever they beat their outer neighbours (the usual case, four evaluations), and otherwise
    a ternary search over the grid on the downhill side finds it. The returned temperature is
    therefore never worse in NLL than :func:`grid_search_temperature`.

    Args:
        logits: ``(n, K)`` held-out logits (tensor or array, any device).
        labels: ``(n,)`` integer labels.
        max_iter: most L-BFGS iterations.

    Returns:
        A 0-dim tensor on the logits' device (float64 for float64 logits, else float32).

    >>> g = torch.Generator().manual_seed(0)
    >>> z = 2 * torch.randn(5000, 4, generator=g)  # a calibrated model's logits ...
    >>> y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    >>> round(float(fit_temperature(3 * z, y)), 2)  # ... made over-confident by a factor 3
    3.07
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    logits = check_logits(logits)
    labels = check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
    shifted, gap = _shift(logits, labels)
    objective = _temperature_objective(shifted, gap)
    t = _minimise_1d(objective, math.log(_GRID_LO), math.log(_GRID_HI), max_iter, logits.device)
    temperature = t.exp().clamp(_T_MIN, _T_MAX).reshape(1)
    grid_best = _best_grid_temperature(shifted, gap, temperature)
    candidates = torch.cat([temperature, grid_best.reshape(1)])
    best = candidates[_nll_at(shifted, gap, candidates).argmin()]
    return best.to(logits.dtype if logits.dtype == torch.float64 else torch.float32)


def fit_vector_scaling(logits: Any, labels: Any, max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Fit vector scaling ``z' = w ⊙ z + b`` by NLL with L-BFGS from ``w = 1, b = 0``.

    ``b`` is returned centred (``b.sum() == 0``), which leaves ``softmax(z')`` unchanged. If the
    fit ends non-finite or worse than the identity, the identity is returned.

    Args:
        logits: ``(n, K)`` held-out logits.
        labels: ``(n,)`` integer labels.
        max_iter: most L-BFGS iterations.

    Returns:
        ``(w, b)``, each of shape ``(K,)`` in the logits' dtype and device.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(500, 3, generator=g)
    >>> shifted = z + torch.tensor([1.0, 0.0, -1.0])
    >>> y = torch.multinomial(shifted.softmax(-1), 1, generator=g).squeeze(1)
    >>> w, b = fit_vector_scaling(z, y)
    >>> bool(b[0] > b[2])
    True
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    logits = check_logits(logits)
    labels = check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
    num_classes = logits.shape[1]
    w = torch.ones(num_classes, dtype=logits.dtype, device=logits.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=logits.dtype, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits * w + b, labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w, b = w.detach(), b.detach()
    with torch.no_grad():
        fitted = F.cross_entropy(logits * w + b, labels)
        identity = F.cross_entropy(logits, labels)
    if not bool(torch.isfinite(fitted)) or fitted > identity:
        return torch.ones_like(w), torch.zeros_like(b)
    return w, b - b.mean()


def fold_affine(weight: Any, bias: Any, scale: Any, shift: Any) -> tuple[Tensor, Tensor]:
    """Fold a per-class affine map of the logits into the linear layer that produces them.

    A layer ``z = W h + c`` followed by ``z' = s ⊙ z + t`` equals the one layer
    ``z' = (s ⊙ W) h + (s ⊙ c + t)``: row ``k`` of ``W`` and ``c_k`` are scaled by ``s_k``, and
    ``t_k`` is added to the bias. Temperature scaling is ``s = 1 / T``, ``t = 0``; vector scaling
    is ``s = w``, ``t = b``. Computed in float64 and returned in the dtype and on the device of
    ``weight``.

    Args:
        weight: ``(K, H)`` weight of the layer.
        bias: ``(K,)`` bias of the layer, or ``None`` for a layer without one (then ``t`` is the
            new bias).
        scale: ``s``, a scalar or ``(K,)``; every entry finite and non-zero.
        shift: ``t``, a scalar or ``(K,)``; every entry finite.

    Returns:
        ``(weight, bias)`` of the folded layer, shapes ``(K, H)`` and ``(K,)``.

    >>> w, c = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.5, -0.5])
    >>> h = torch.tensor([1.0, -1.0])
    >>> fw, fc = fold_affine(w, c, torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0]))
    >>> fw @ h + fc, torch.tensor([0.5, 2.0]) * (w @ h + c) + torch.tensor([1.0, 0.0])
    (tensor([ 0.7500, -3.0000]), tensor([ 0.7500, -3.0000]))
    """
    weight = torch.as_tensor(weight)
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(
            f"weight must be a floating-point (K, H) matrix, got shape {tuple(weight.shape)} "
            f"and dtype {weight.dtype}"
        )
    num_classes = weight.shape[0]
    vectors = {}
    for name, value in (("bias", bias), ("scale", scale), ("shift", shift)):
        if value is None and name == "bias":
            value = torch.zeros(num_classes)
        value = torch.as_tensor(value, device=weight.device).double()
        if value.ndim > 1 or (value.ndim == 1 and value.numel() != num_classes):
            raise ValueError(
                f"{name} must be a scalar or have shape ({num_classes},) to match weight "
                f"{tuple(weight.shape)}, got shape {tuple(value.shape)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got {value.tolist()}")
        vectors[name] = value.expand(num_classes) if value.ndim == 0 else value
    if bool((vectors["scale"] == 0).any()):
        raise ValueError(f"scale must be non-zero, got {vectors['scale'].tolist()}")
    scale = vectors["scale"]
    folded_weight = scale[:, None] * weight.double()
    folded_bias = scale * vectors["bias"] + vectors["shift"]
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)


def confidence_exponent_nll(log_confidence: Any, correct: Any, exponent: float | Tensor) -> Tensor:
    """Mean binary NLL of the confidence ``c^a`` against correctness, in float64.

    Args:
        log_confidence: ``(n,)`` log-confidences ``log c ≤ 0`` (e.g. ``log q_ŷ`` of SLOVA).
        correct: ``(n,)`` booleans (or 0/1): whether each prediction was right.
        exponent: ``a > 0``, a scalar or a tensor of exponents of any shape.

    Returns:
        A float64 tensor with the shape of ``exponent``.

    >>> log_c, right = torch.log(torch.tensor([0.9, 0.6])), torch.tensor([True, False])
    >>> confidence_exponent_nll(log_c, right, 1.0)
    tensor(0.5108, dtype=torch.float64)
    """
    log_c, right = _check_confidence(log_confidence, correct)
    exponents = torch.as_tensor(exponent, dtype=torch.float64, device=log_c.device)
    if not bool(torch.isfinite(exponents).all()) or bool((exponents <= 0).any()):
        raise ValueError(f"exponent must be finite and > 0, got {exponent}")
    scaled = exponents.reshape(-1, 1) * log_c
    nll = -torch.where(right, scaled, _log1mexp(scaled)).mean(dim=1)
    return nll.reshape(exponents.shape)


def fit_confidence_exponent(log_confidence: Any, correct: Any, max_iter: int = 100) -> Tensor:
    """Fit SLOVA's exponential calibration: ``a > 0`` minimising the binary NLL of ``c^a``.

    ``a = exp(α)`` is fitted by L-BFGS from ``a = 1`` with a golden-section fallback over
    ``a ∈ [0.01, 100]``. ``a > 1`` lowers the confidence of an over-confident model.

    Args:
        log_confidence: ``(n,)`` log-confidences ``log c ≤ 0``.
        correct: ``(n,)`` booleans (or 0/1): whether each prediction was right.
        max_iter: most L-BFGS iterations.

    Returns:
        A 0-dim float32 tensor on the input's device.

    >>> g = torch.Generator().manual_seed(0)
    >>> c = torch.rand(4000, generator=g) * 0.98 + 0.01
    >>> right = torch.rand(4000, generator=g) < c**2
    >>> round(float(fit_confidence_exponent(c.log(), right)), 1)
    2.1
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    log_c, right = _check_confidence(log_confidence, correct)

    def objective(alpha: Tensor) -> tuple[Tensor, Tensor]:
        alpha = alpha.detach().requires_grad_(True)
        scaled = alpha.exp() * log_c
        loss = -torch.where(right, scaled, _log1mexp(scaled)).mean()
        (grad,) = torch.autograd.grad(loss, alpha)
        return loss.detach(), grad

    with torch.enable_grad():
        alpha = _minimise_1d(objective, math.log(_A_MIN), math.log(_A_MAX), max_iter, log_c.device)
    return alpha.exp().clamp(_A_MIN, _A_MAX).float()


def _check_confidence(log_confidence: Any, correct: Any) -> tuple[Tensor, Tensor]:
    log_c = as_float(log_confidence, "log_confidence")
    if log_c.ndim != 1 or log_c.shape[0] == 0:
        raise ValueError(f"log_confidence must have shape (n_examples,), got {tuple(log_c.shape)}")
    if not bool(torch.isfinite(log_c).all()):
        raise ValueError("log_confidence contains non-finite values")
    if bool((log_c > 0).any()):
        raise ValueError(f"log_confidence must be <= 0, got a maximum of {float(log_c.max()):.4g}")
    right = torch.as_tensor(correct, device=log_c.device)
    if right.shape != log_c.shape:
        raise ValueError(
            f"correct must have shape {tuple(log_c.shape)} like log_confidence, got {tuple(right.shape)}"
        )
    if right.dtype != torch.bool:
        if not bool(((right == 0) | (right == 1)).all()):
            raise ValueError("correct must hold booleans or 0/1 values")
        right = right == 1
    # A confidence of exactly 1 on a wrong prediction has infinite NLL for every exponent.
    return log_c.double().clamp(max=-1e-12), right


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _shift(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 logits minus their row maximum ``m`` (all ``≤ 0``), and the gaps ``m - z_y``."""
    z = logits.double()
    top = z.max(dim=1, keepdim=True).values
    return z - top, top.squeeze(1) - z.gather(1, labels[:, None]).squeeze(1)


def _nll_at(shifted: Tensor, gap: Tensor, temperatures: Tensor) -> Tensor:
    """Mean NLL at each of the 1-D ``temperatures``, in chunks of at most ``_CHUNK`` entries.

    ``NLL(T) = mean(log Σ_k exp(d_k / T) + (m - z_y) / T)`` with ``d = z - m`` from :func:`_shift`.
    """
    step = max(1, _CHUNK // shifted.numel())
    nll = []
    for chunk in temperatures.split(step):
        beta = chunk.reciprocal()[:, None]
        log_total = (shifted * beta[:, :, None]).exp_().sum(dim=-1).log_()
        nll.append((log_total + beta * gap).mean(dim=1))
    return torch.cat(nll)


def _best_grid_temperature(shifted: Tensor, gap: Tensor, temperature: Tensor) -> Tensor:
    """The reference-grid temperature of lowest NLL, searched from near ``temperature``.

    The NLL along the grid is unimodal. The two grid points bracketing ``temperature`` and their
    outer neighbours are evaluated; if the best of these is not at the edge of that window (or
    the window's edge is the grid's end), it is the grid's minimum. Otherwise the minimum lies
    beyond that edge and a ternary search over the remaining grid indices finds it.
    """
    grid = reference_temperature_grid(shifted.device)
    last = len(grid) - 1
    right = int(torch.searchsorted(grid, temperature).clamp(max=last))
    lo, hi = max(right - 2, 0), min(right + 1, last)
    best = lo + int(_nll_at(shifted, gap, grid[lo : hi + 1]).argmin())
    if best == lo and lo > 0:
        lo, hi = 0, lo
    elif best == hi and hi < last:
        lo, hi = hi, last
    else:
        return grid[best]
    while hi - lo > 2:
        third = (hi - lo) // 3
        left_nll, right_nll = _nll_at(shifted, gap, grid[[lo + third, hi - third]])
        if left_nll <= right_nll:
            hi -= third
        else:
            lo += third
    return grid[lo + int(_nll_at(shifted, gap, grid[lo : hi + 1]).argmin())]


def _temperature_objective(shifted: Tensor, gap: Tensor) -> Objective:
    """NLL of ``softmax(z / exp(t))`` and its derivative in ``t``, from :func:`_shift`'s output.

    With ``β = exp(-t)``, ``NLL(β) = β · mean(m - z_y) + mean(log Σ_k exp(β d_k))``, so one
    evaluation is one ``exp`` over ``d`` and two row reductions. Float64 throughout: float32
    rounding makes the value too noisy for the line search near the optimum.
    """
    mean_gap = gap.mean()

    def objective(t: Tensor) -> tuple[Tensor, Tensor]:
        beta = torch.exp(-t)
        weights = torch.mul(shifted, beta).exp_()
        total = weights.sum(dim=1)
        mean_shift = torch.linalg.vecdot(weights, shifted) / total
        value = beta * mean_gap + total.log().mean()
        return value, -beta * (mean_gap + mean_shift.mean())

    return objective


def _minimise_1d(
    objective: Objective, lo: float, hi: float, max_iter: int, device: torch.device
) -> Tensor:
    """Minimise a unimodal ``objective`` from 0: L-BFGS, or golden section on ``[lo, hi]``.

    Returns the minimiser as a 0-dim float64 tensor on ``device``.
    """
    x = torch.zeros((), dtype=torch.float64, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=_GRAD_TOL,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        value, grad = objective(x.detach())
        x.grad = grad.reshape(x.shape).to(x.dtype)
        return value

    optimizer.step(closure)
    x = x.detach()
    value, grad = objective(x)
    if bool(torch.isfinite(x) & torch.isfinite(value) & (grad.abs() <= _GRAD_TOL)):
        return x
    return _golden_section(lambda v: objective(v)[0], x.new_tensor(lo), x.new_tensor(hi))


def _golden_section(value: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor) -> Tensor:
    """Golden-section search for the minimum of a unimodal function on ``[lo, hi]``."""

    def safe(x: Tensor) -> float:
        v = float(value(x))
        return v if math.isfinite(v) else math.inf

    c, d = hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo)
    fc, fd = safe(c), safe(d)
    while float(hi - lo) > _GOLDEN_TOL:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _INV_PHI * (hi - lo)
            fc = safe(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _INV_PHI * (hi - lo)
            fd = safe(d)
    return (lo + hi) / 2
