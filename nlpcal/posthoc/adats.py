"""AdaTS: a sample-dependent temperature predicted from the model's penultimate features."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlpcal.functional._checks import check_logits
from nlpcal.functional.scaling import fit_temperature
from nlpcal.posthoc.base import Calibrator, register_calibrator

__all__ = ["AdaTS"]

# Floor added to every softplus scale (posterior and prior) so log-densities stay finite.
_MIN_SCALE = 1e-3
# Floor on the per-dimension standard deviation used to standardise the features.
_MIN_FEATURE_STD = 1e-6


@register_calibrator("adats")
class AdaTS(Calibrator):
    """Adaptive temperature scaling: calibrated logits ``z / T(x)`` with ``T(x)`` per example.

    A conditional VAE on the frozen penultimate features ``f`` (for text, the pooled or
    first-token hidden state): the encoder ``f → 1024 → 512 → 512`` (ELU) gives the posterior
    ``q(u | f) = N(μ, diag σ²)`` in ``R^16`` (``σ = softplus(·) + 10⁻³``); the decoder maps ``u``
    back to ``f`` with a Laplace likelihood of fixed unit scale (as in the authors' code); the
    prior is class-conditional, ``p(u | y) = N(M e_y, diag softplus(S e_y)²)`` with learnable
    ``M, S`` (stored as ``prior_loc``, ``prior_scale_raw`` of shape ``(K, 16)``; ``softplus`` gives
    the standard deviation). The temperature network maps ``ℓ_k = log N(u; M e_k, ·)`` through
    an ELU MLP ``K → 128 → 128 → 1`` to ``T(x) = softplus(·) + eps``. Training minimises
    ``Laplace NLL(f | u) + KL(q(u|f) ‖ p(u|y)) + CE(z / T(x), y)`` (the NLL up to a constant)
    with Adam (lr ``5e-4``, batches of at most 128). At inference ``u = μ``; the argmax never
    changes. Only what inference needs is kept: the decoder is dropped after fitting.

    Where nlpcal deviates from the authors' code, and why (each was needed for the temperature
    network to learn anything in a fit of a few hundred steps):

    * ``T(x)`` is computed from ``u = μ`` in training as well (the authors sample ``u`` there):
      that is the value used at inference, and the sampling noise drowns the signal.
    * Each ``ℓ_k`` is standardised before the MLP, like a batch norm without learnable scale:
      with the batch's statistics in training, with the held-out set's (stored as buffers) at
      inference. The raw ``ℓ`` sit around ``−12 ± 2``, an input offset that slows Adam badly.
      A per-class affine map of ``ℓ`` is absorbed by the first layer, so the function class is
      the paper's. Batches are near-equal splits of the held-out set, none of size one (so
      ``batch_size`` must be at least 2, and with ``batch_size=2`` and an odd number of
      examples one batch has three).
    * The temperature network's last layer starts at zero weights with a bias making ``T(x)``
      equal the global temperature-scaling fit, so a short fit starts from temperature scaling.
    * Features are standardised with the held-out mean and standard deviation (buffers), so
      that the fixed unit Laplace scale suits any backbone's feature scale.
    * The decoder's hidden sizes are the encoder's reversed (``16 → 512 → 512 → 1024 → f``).
    * ``epochs`` defaults to 5 (the authors train 100) so that a CPU fit takes seconds: at the
      paper's sizes, the default fit on 3,000 held-out 768-d features took 4.6 s on one CPU core
      and 2.9 s on two. Raise ``epochs`` when time allows (or fit on a GPU).

    Fitting is deterministic for a given ``seed`` (weights, batch order and VAE noise come from
    it; the global RNG is left untouched) and runs on the logits' device. Calling the fitted
    calibrator needs the features too: ``calibrator(logits, features)``; it runs on the
    calibrator's device and returns on the logits' device.

    Args:
        feature_dim: size of ``f``; set by :meth:`fit` when ``None``.
        num_classes: ``K``; set by :meth:`fit` when ``None``.
        latent_dim: size of ``u``.
        encoder_hidden: encoder layer sizes (the decoder uses them in reverse order).
        temperature_hidden: hidden layer sizes of the temperature network.
        epochs: passes over the held-out set.
        lr: Adam learning rate.
        batch_size: most examples per Adam step (``≥ 2``).
        eps: the smallest temperature.
        seed: seed of the initialisation, batch order and VAE noise.

    References:
        Joy et al., "Sample-dependent Adaptive Temperature Scaling for Improved Calibration",
        AAAI 2023.

    >>> g = torch.Generator().manual_seed(0)
    >>> features = torch.randn(256, 8, generator=g)
    >>> logits = features[:, :3] * 4
    >>> labels = torch.multinomial(features[:, :3].softmax(-1), 1, generator=g).squeeze(1)
    >>> adats = AdaTS(encoder_hidden=(32, 32, 32), temperature_hidden=(16, 16), epochs=2)
    >>> adats = adats.fit(logits, labels, features)
    >>> adats(logits, features).shape, bool((adats.temperatures(features) > 0).all())
    (torch.Size([256, 3]), True)
    """

    requires_features = True

    def __init__(
        self,
        feature_dim: int | None = None,
        num_classes: int | None = None,
        latent_dim: int = 16,
        encoder_hidden: Sequence[int] = (1024, 512, 512),
        temperature_hidden: Sequence[int] = (128, 128),
        epochs: int = 5,
        lr: float = 5e-4,
        batch_size: int = 128,
        eps: float = 1e-3,
        seed: int = 0,
    ) -> None:
        for name, value in (("feature_dim", feature_dim), ("num_classes", num_classes)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("latent_dim", latent_dim), ("epochs", epochs)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if batch_size < 2:
            raise ValueError(
                f"batch_size must be >= 2 (each batch standardises the temperature network's "
                f"inputs with its own mean and variance), got {batch_size}"
            )
        for name, sizes in (
            ("encoder_hidden", encoder_hidden),
            ("temperature_hidden", temperature_hidden),
        ):
            if len(sizes) == 0 or any(size < 1 for size in sizes):
                raise ValueError(f"{name} must be a non-empty list of positive sizes, got {sizes}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        super().__init__()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.encoder_hidden = tuple(encoder_hidden)
        self.temperature_hidden = tuple(temperature_hidden)
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.eps = eps
        self.seed = seed
        if feature_dim is not None and num_classes is not None:
            with _seeded_rng(seed):
                self._build(feature_dim, num_classes)

    def config(self) -> dict[str, Any]:
        return {
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "latent_dim": self.latent_dim,
            "encoder_hidden": list(self.encoder_hidden),
            "temperature_hidden": list(self.temperature_hidden),
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "eps": self.eps,
            "seed": self.seed,
        }

    # -- inference -----------------------------------------------------------------------------
    def forward(self, logits: Any, features: Any | None = None) -> Tensor:
        """Calibrated logits ``logits / T(x)`` on the logits' device."""
        logits = self._check_call_inputs(logits)
        temperatures = self.temperatures(features)
        if temperatures.shape[0] != logits.shape[0]:
            raise ValueError(
                f"features have {temperatures.shape[0]} rows but logits have {logits.shape[0]}"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"AdaTS was fitted on {self.num_classes} classes, got logits with {logits.shape[1]}"
            )
        return logits / temperatures.to(device=logits.device, dtype=logits.dtype)[:, None]

    def temperatures(self, features: Any) -> Tensor:
        """Per-example temperatures ``T(x)`` ``(n,)`` from penultimate ``features`` ``(n, D)``.

        Computed on the calibrator's device with ``u = μ(f)``; returned on the features' device.
        """
        if not bool(self.fitted):
            raise RuntimeError("AdaTS is not fitted: call .fit() first")
        if features is None:
            raise ValueError("AdaTS needs the penultimate features: call it as (logits, features)")
        features = check_logits(features, name="features")
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"AdaTS was fitted on {self.feature_dim}-d features, got {features.shape[1]}-d"
            )
        x = self._standardise(features.to(device=self.feature_mean.device, dtype=torch.float32))
        loc, _ = self._encode(x)
        return self._temperature(loc).to(features.device)

    # -- fitting -------------------------------------------------------------------------------
    def _fit(self, logits: Tensor, labels: Tensor, features: Tensor | None) -> None:
        assert features is not None  # guaranteed by requires_features
        num_classes, feature_dim = logits.shape[1], features.shape[1]
        for name, expected, got in (
            ("num_classes", self.num_classes, num_classes),
            ("feature_dim", self.feature_dim, feature_dim),
        ):
            if expected is not None and expected != got:
                raise ValueError(f"AdaTS was built with {name}={expected}, got data with {got}")
        device = logits.device
        logits = logits.float()
        features = features.to(device=device, dtype=torch.float32)
        self.num_classes, self.feature_dim = num_classes, feature_dim

        with _seeded_rng(self.seed):
            self._build(feature_dim, num_classes)
            sizes = (self.latent_dim, *reversed(self.encoder_hidden), feature_dim)
            decoder = _mlp(sizes, final_activation=False)
        self.to(device)
        decoder.to(device)
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0, correction=0).clamp_min(_MIN_FEATURE_STD))
        global_t = float(fit_temperature(logits, labels))
        last = self.temperature_net[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, _softplus_inverse(max(global_t - self.eps, _MIN_SCALE)))

        x = self._standardise(features)
        params = [*self.parameters(), *decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        # Near-equal batches, none of a single example (batch norm): at most batch_size each,
        # except that batch_size=2 with an odd n leaves one batch of three.
        n_batches = min(math.ceil(x.shape[0] / self.batch_size), x.shape[0] // 2)
        for _ in range(self.epochs):
            order = torch.randperm(x.shape[0], generator=generator, device=device)
            for idx in order.tensor_split(n_batches):
                loss = self._loss(x[idx], logits[idx], labels[idx], decoder, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.requires_grad_(False)
        log_lik = self._class_log_likelihoods(self._encode(x)[0])
        self.log_lik_mean.copy_(log_lik.mean(dim=0))
        self.log_lik_var.copy_(log_lik.var(dim=0, correction=0))

    def _loss(
        self,
        x: Tensor,
        logits: Tensor,
        labels: Tensor,
        decoder: nn.Module,
        generator: torch.Generator,
    ) -> Tensor:
        """Mean of Laplace NLL + KL(q(u|f) ‖ p(u|y)) over the batch, plus CE(z / T(x), y)."""
        loc, scale = self._encode(x)
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        u = loc + scale * noise
        prior_loc, prior_scale = self.prior_loc[labels], self._prior_scale()[labels]
        kl = (
            torch.log(prior_scale / scale)
            + (scale**2 + (loc - prior_loc) ** 2) / (2 * prior_scale**2)
            - 0.5
        ).sum(dim=1)
        reconstruction = (decoder(u) - x).abs().sum(dim=1)
        ce = F.cross_entropy(logits / self._temperature(loc, batch_stats=True)[:, None], labels)
        return (reconstruction + kl).mean() + ce

    # -- the networks --------------------------------------------------------------------------
    def _build(self, feature_dim: int, num_classes: int) -> None:
        """Create every fitted module and buffer (the decoder is created and dropped in fit)."""
        hidden, latent = self.encoder_hidden, self.latent_dim
        self.encoder = _mlp((feature_dim, *hidden), final_activation=True)
        self.posterior_loc = nn.Linear(hidden[-1], latent)
        self.posterior_scale = nn.Linear(hidden[-1], latent)
        # M e_k and S e_k as rows; the bound of nn.Linear(K, latent)'s default initialisation.
        bound = 1.0 / math.sqrt(num_classes)
        self.prior_loc = nn.Parameter(torch.empty(num_classes, latent).uniform_(-bound, bound))
        self.prior_scale_raw = nn.Parameter(
            torch.empty(num_classes, latent).uniform_(-bound, bound)
        )
        self.temperature_net = _mlp(
            (num_classes, *self.temperature_hidden, 1), final_activation=False
        )
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.register_buffer("log_lik_mean", torch.zeros(num_classes))
        self.register_buffer("log_lik_var", torch.ones(num_classes))

    def _standardise(self, features: Tensor) -> Tensor:
        return (features - self.feature_mean) / self.feature_std

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(x)
        return self.posterior_loc(hidden), F.softplus(self.posterior_scale(hidden)) + _MIN_SCALE

    def _prior_scale(self) -> Tensor:
        return F.softplus(self.prior_scale_raw) + _MIN_SCALE

    def _class_log_likelihoods(self, u: Tensor) -> Tensor:
        """``ℓ_k = log N(u; M e_k, diag s_k²)`` for every class, shape ``(n, K)``."""
        scale = self._prior_scale()
        z = (u[:, None, :] - self.prior_loc) / scale
        return -(0.5 * z**2 + scale.log() + 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def _temperature(self, u: Tensor, batch_stats: bool = False) -> Tensor:
        """``T = softplus(MLP(norm(ℓ))) + eps``, ``ℓ_k = log N(u; M e_k, diag s_k²)``, shape ``(n,)``.

        ``norm`` standardises each ``ℓ_k`` with the batch's statistics (``batch_stats``, in
        training) or the held-out statistics stored at the end of :meth:`fit`.
        """
        log_lik = self._class_log_likelihoods(u)
        if batch_stats:
            log_lik = F.batch_norm(log_lik, None, None, training=True)
        else:
            log_lik = F.batch_norm(log_lik, self.log_lik_mean, self.log_lik_var, training=False)
        return F.softplus(self.temperature_net(log_lik)).squeeze(-1) + self.eps


@contextlib.contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Seed the CPU RNG for the block and restore its previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _mlp(sizes: Sequence[int], final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def _softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` for ``y > 0``."""
    return y + math.log(-math.expm1(-y))
