"""The Variational Autoencoder: encode -> sample -> decode -> score, then the backward in reverse.

    encoder MLP:   [x, y]                  ->  h = [mu, logvar]     (q(z|x) = N(mu, exp(logvar)))
    sample:        z = mu + exp(logvar/2) * eps,  eps ~ N(0, I)     (L samples per input)
    decoder MLP:   [z, y]                  ->  out                  (logits or mean of p(x|z))
    loss:          -ELBO = -E_q[log p(x|z)] + beta * KL(q(z|x) || N(0, I))

``y`` is the optional one-hot class label of a conditional VAE. The reconstruction term is summed
over the data dimensions; both terms are averaged over the batch (``reduction="mean"``, nats per
example) or summed (``reduction="sum"``). ``VAE.loss`` returns the loss, its two terms and the
gradient of every parameter in one call.

One path: the networks are the ``MLP`` objects ``encoder`` and ``decoder`` (minivae.layers), which
own the weights and run every layer through the backend's linear op; the sample and the KL are the
backend's latent op, the Bernoulli likelihood its fused op, and the other likelihoods their
reference code (minivae.likelihoods) on the backend's arrays. ``minivae.backends`` is the table;
with ``backend="numpy"`` every op is a hand-derived function pair. Derivations: docs/derivations.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from minivae import _checks, philox
from minivae.backends import Backend, get_backend
from minivae.latent import gaussian_log_density, reparameterize_forward
from minivae.layers import ACTIVATIONS, MLP
from minivae.likelihoods import LIKELIHOODS, make_likelihood, score

# IWAE evaluation decodes K samples per example in chunks of at most this many output elements
# (2^22 floats = 16 MiB in float32), so K = 5000 at 784 dimensions never holds more than ~50 MiB.
IWAE_CHUNK_ELEMENTS = 1 << 22
# What ``VAE.loss`` can optimise: the ELBO, or the K-sample importance-weighted bound (Burda et al.,
# 2015) with its standard or doubly-reparameterized (Tucker et al., 2018) gradient estimator.
OBJECTIVES = ("elbo", "iwae")
ESTIMATORS = ("standard", "dreg")
LOG_2PI = math.log(2 * math.pi)


def _generator(name: str, rng, alternative: str = "") -> np.random.Generator:
    """``rng`` if it is a seeded numpy Generator (there is no global RNG), else ValueError."""
    if not isinstance(rng, np.random.Generator):
        what = f"a numpy.random.Generator{' ' + alternative if alternative else ''}"
        raise ValueError(f"{name} must be {what} (e.g. numpy.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    return rng


@dataclass
class LossResult:
    """One evaluation of -ELBO with its gradients.

    ``loss`` is the objective as optimised (per example for "mean", total for "sum"); ``recon`` and
    ``kl`` are always per-example means in nats, so ``-(recon + kl)`` is the ELBO per example
    (with beta = 1). ``grads`` maps every parameter name to its gradient of ``loss``.
    """

    loss: float
    recon: float
    kl: float
    grads: dict[str, np.ndarray] = field(repr=False)
    recon_per_example: np.ndarray = field(repr=False)
    kl_per_example: np.ndarray = field(repr=False)

    @property
    def elbo(self) -> float:
        return -(self.recon + self.kl)


@dataclass(frozen=True)
class IWAEResult:
    """Importance-weighted estimate of log p(x) per example (nats) with its summary."""

    log_px: np.ndarray

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood estimate in nats per example."""
        return float(-self.log_px.mean())

    @property
    def stderr(self) -> float:
        """Standard error of ``nll`` over the examples."""
        n = self.log_px.size
        return float(self.log_px.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


class VAE:
    """A VAE with MLP encoder and decoder.

    Args:
        x_dim: data dimension D.
        z_dim: latent dimension d.
        hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        activation: one of relu, leaky_relu, elu, tanh, sigmoid, softplus.
        likelihood: one of bernoulli, cbernoulli, gaussian, gaussian_learned (whose learned
            log-variance is unbounded: see minivae.likelihoods.GaussianLearned).
        n_classes: > 0 for a conditional VAE (labels 0..n_classes-1 are fed one-hot to both nets).
        sigma: the fixed standard deviation of the "gaussian" likelihood.
        dtype: "float32" (default) or "float64".
        rng: the generator that draws the initial weights (PyTorch's nn.Linear scheme).
        backend: which implementation of the costly ops (minivae.backends): "numpy" (the
            reference), "numba", "cupy", "numba-cuda" or "auto". The math is the same, and every
            likelihood and the conditional model train on each.

    The weights live in ``encoder.params``, ``decoder.params`` and ``likelihood.params``, on the
    backend's device; ``params`` is the flat view of those same arrays (``enc.*``, ``dec.*``,
    ``lik.*``), the names a checkpoint stores.
    """

    def __init__(self, x_dim: int, z_dim: int = 20, hidden=(400,), *, activation: str = "relu",
                 likelihood: str = "bernoulli", n_classes: int = 0, sigma: float = 1.0,
                 dtype="float32", rng: np.random.Generator, backend: str | Backend = "numpy"):
        self.x_dim = _checks.positive_int("x_dim", x_dim)
        self.z_dim = _checks.positive_int("z_dim", z_dim)
        self.hidden = _checks.sizes("hidden", hidden)
        _checks.choice("activation", activation, tuple(ACTIVATIONS))
        _checks.choice("likelihood", likelihood, tuple(LIKELIHOODS))
        self.n_classes = _checks.integer("n_classes", n_classes, 0)
        _generator("rng", rng)
        self.dtype = _checks.float_dtype("dtype", dtype)
        self.activation = activation
        self.backend = get_backend(backend)
        c = self.n_classes
        # The networks own their weights, on the backend's device; the loss runs through them.
        self.encoder = MLP((x_dim + c, *self.hidden, 2 * z_dim), activation, rng, self.dtype,
                           backend=self.backend)
        self.decoder = MLP((z_dim + c, *self.hidden[::-1], x_dim), activation, rng, self.dtype,
                           backend=self.backend)
        self.likelihood = make_likelihood(likelihood, x_dim, self.dtype, sigma=sigma)
        for k, v in list(self.likelihood.params.items()):
            self.likelihood.params[k] = self.backend.asarray(v)
        # One flat view of every parameter: the same array objects, so an optimiser stepping
        # ``params`` in place (or a checkpoint loaded into them) steps the networks themselves.
        self.params: dict[str, np.ndarray] = {
            **{f"enc.{k}": v for k, v in self.encoder.params.items()},
            **{f"dec.{k}": v for k, v in self.decoder.params.items()},
            **{f"lik.{k}": v for k, v in self.likelihood.params.items()},
        }

    # ------------------------------------------------------------------------------------------
    # input checks

    def _check_x(self, x, name: str = "x") -> np.ndarray:
        x = _checks.finite_array(name, x, dtype=self.dtype, shape=(None, self.x_dim))
        if x.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one example, got shape {x.shape}")
        self.likelihood.check_data(name, x)
        return x

    def one_hot(self, y, n: int) -> np.ndarray | None:
        """Labels (n,) -> one-hot (n, n_classes); None for an unconditional model."""
        if self.n_classes == 0:
            if y is not None:
                raise ValueError("y was given but the model is not conditional (n_classes = 0)")
            return None
        if y is None:
            raise ValueError(f"y (labels in 0..{self.n_classes - 1}) is required: the model is "
                             "conditional")
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be {n} integer labels, got dtype {y.dtype} shape {y.shape}")
        if n and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"y must lie in 0..{self.n_classes - 1}, got [{y.min()}, {y.max()}]")
        return np.eye(self.n_classes, dtype=self.dtype)[y]

    def _cat(self, a, y1):
        return a if y1 is None else self.backend.xp.concatenate([a, self._dev(y1)], axis=1)

    def _dev(self, a):
        """``a`` on the backend's device (a no-op on the CPU)."""
        return self.backend.asarray(a) if self.backend.on_gpu else a

    def draw_eps(self, n: int, rng: np.random.Generator | philox.Stream,
                 n_samples: int = 1) -> np.ndarray:
        """eps ~ N(0, I) of shape (n_samples, n, z_dim) from ``rng``, in the model's dtype.

        ``rng`` is a numpy Generator, or a ``philox.Stream`` (the counter-based stream every
        backend can regenerate in its kernels).
        """
        shape = (n_samples, n, self.z_dim)
        if isinstance(rng, philox.Stream):
            return rng.normal(shape, self.dtype)
        return _generator("rng", rng).standard_normal(shape, dtype=self.dtype)

    # ------------------------------------------------------------------------------------------
    # forward pieces, usable on their own (pictures, evaluation)

    def encode(self, x, y=None):
        """x (N, D) -> (mu, logvar), each (N, d)."""
        x = self._check_x(x)
        out, _ = self.encoder.forward(self._cat(self._dev(x), self.one_hot(y, len(x))))
        out = self.backend.to_host(out)
        return out[:, : self.z_dim], out[:, self.z_dim :]

    def decode(self, z, y=None) -> np.ndarray:
        """z (N, d) -> decoder output (logits or means), (N, D)."""
        z = _checks.finite_array("z", z, dtype=self.dtype, shape=(None, self.z_dim))
        out, _ = self.decoder.forward(self._cat(self._dev(z), self.one_hot(y, len(z))))
        return self.backend.to_host(out)

    def reconstruct(self, x, y=None) -> np.ndarray:
        """The likelihood's mean at z = mu: a deterministic reconstruction of x."""
        mu, _ = self.encode(x, y)
        return self.likelihood.mean(self.decode(mu, y))

    # ------------------------------------------------------------------------------------------
    # the loss and its gradients, top to bottom and back

    def loss(self, x, y=None, *, eps=None, rng: np.random.Generator | philox.Stream | None = None,
             n_samples: int = 1, beta: float = 1.0, reduction: str = "mean",
             objective: str = "elbo", estimator: str = "standard", check: bool = True) -> LossResult:
        """-ELBO (or, with ``objective="iwae"``, the negative K-sample bound) of a batch and the
        gradient of every parameter.

        x: (N, D) data; y: (N,) labels for a conditional model. eps: (L, N, d) noise, or None to
        draw L = ``n_samples`` samples from ``rng`` (a numpy Generator, or a ``philox.Stream``
        whose noise GPU kernels regenerate instead of storing). ``check=False`` skips the input
        checks (the training loop checks its data once, up front, and may pass device arrays).
        ``objective="iwae"`` with ``estimator`` "standard" or "dreg": see ``_iwae_loss``.
        """
        beta = _checks.non_negative_float("beta", beta)
        _checks.choice("reduction", reduction, ("mean", "sum"))
        _checks.choice("objective", objective, OBJECTIVES)
        _checks.choice("estimator", estimator, ESTIMATORS)
        if objective == "elbo" and estimator != "standard":
            raise ValueError(f"estimator {estimator!r} is an estimator of the importance-weighted "
                             "bound's gradient: expected objective='iwae'")
        if objective == "iwae" and beta != 1:
            raise ValueError(f"the importance-weighted bound weighs its KL by 1: expected beta = 1 "
                             f"with objective='iwae', got {beta}")
        if check:
            x = self._dev(self._check_x(x))
        n, d = x.shape[0], self.z_dim
        if objective == "iwae":  # the bound needs eps itself (log q): a Stream's noise is drawn too
            eps, _, _ = self._noise(n, eps, rng, n_samples, check, need_eps=True)
            return self._iwae_loss(x, self.one_hot(y, n), eps, estimator, reduction)
        eps, key, n_samples = self._noise(n, eps, rng, n_samples, check)
        y1 = self.one_hot(y, n)
        ops, xp = self.backend, self.backend.xp

        # forward: encode, sample, decode, score
        h, enc_caches = self.encoder.forward(self._cat(x, y1))  # h = [mu | logvar], (N, 2d)
        z, kl, z_cache = ops.latent_forward(h, n_samples, eps=eps, key=key)  # (L, N, d), (N,)
        # rows are sample-major (row l*N + n is sample l of example n): tile, never repeat
        y1_rep = None if y1 is None else np.tile(y1, (n_samples, 1))
        out, dec_caches = self.decoder.forward(self._cat(z.reshape(n_samples * n, d), y1_rep))
        x_rep = x if n_samples == 1 else xp.tile(x, (n_samples, 1))
        scale = 1.0 / n if reduction == "mean" else 1.0
        dlogp = -scale / n_samples  # d loss / d log p(x|z_l), the same for every example and sample
        logp, dout, lik_grads = self._score(x_rep, out, dlogp)
        recon = -logp.reshape(n_samples, n).mean(axis=0)  # (N,): -E_q[log p(x|z)], L-sample MC
        loss = scale * float(xp.sum(recon + beta * kl))
        self._check_finite_loss(loss, recon, kl)

        # backward: the same steps in reverse order
        ddec_in, dec_grads = self.decoder.backward(dout, dec_caches)
        dz = ddec_in[:, :d].reshape(n_samples, n, d)  # the label columns' gradient is dropped
        dh = ops.latent_backward(dz, beta * scale, z_cache)  # [dmu | dlogvar], KL term included
        _, enc_grads = self.encoder.backward(dh, enc_caches, need_dx=False)
        grads = {**{f"dec.{k}": g for k, g in dec_grads.items()},
                 **{f"enc.{k}": g for k, g in enc_grads.items()},
                 **{f"lik.{k}": g for k, g in lik_grads.items()}}
        return LossResult(loss, float(recon.mean()), float(kl.mean()), grads, recon, kl)

    def _iwae_loss(self, x, y1, eps, estimator: str, reduction: str) -> LossResult:
        """The negative importance-weighted bound of Burda et al. (2015) and its gradients.

        With K = eps.shape[0] samples z_k = mu + sigma * eps_k per example:

            log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x)      (K, N)
            loss    = -(1/N) sum_n log (1/K) sum_k w_kn                  (reduction "mean")

        Backward (docs/derivations.md, "The importance-weighted bound"): each log-weight's
        upstream gradient is g_k = -(1/N) w~_k, w~ = softmax over k (``importance_weights``). The
        decoder gets g_k on log p(x | z_k); z_k gets g_k (d log p(x|z_k)/dz - z_k) (the decoder,
        then the prior); and log q(z_k | x) = -1/2 sum(eps^2 + logvar + log 2 pi), with z written
        through eps, depends on logvar alone: +1/2 g_k on every logvar_j. ``estimator="dreg"``
        (Tucker et al., 2018) keeps the decoder's gradient and gives the encoder
        sum_k w~_k^2 d log w_k / dz_k dz_k/dphi, q's density held: z_k's gradient gains
        g_k eps_k / sigma (-d log q / dz) and is scaled by w~_k, and the logvar term is dropped.
        recon and kl report -mean_k log p(x|z_k) and mean_k (log q - log p)(z_k): a K-sample
        estimate of -ELBO with the Monte-Carlo KL.
        """
        ops, xp = self.backend, self.backend.xp
        k, n, d = eps.shape
        scale = 1.0 / n if reduction == "mean" else 1.0

        # forward: encode, sample K, decode, score, weigh
        h, enc_caches = self.encoder.forward(self._cat(x, y1))  # h = [mu | logvar], (N, 2d)
        logvar = h[:, d:]
        z, _, z_cache = ops.latent_forward(h, k, eps=eps)  # (K, N, d), sample-major
        y1_rep = None if y1 is None else np.tile(y1, (k, 1))
        out, dec_caches = self.decoder.forward(self._cat(z.reshape(k * n, d), y1_rep))
        x_rep = x if k == 1 else xp.tile(x, (k, 1))
        logp, score_backward = self._score_rows(x_rep, out)
        log_prior = -0.5 * xp.sum(z * z, axis=2) - 0.5 * d * LOG_2PI  # log N(z; 0, I), (K, N)
        log_q = -0.5 * (xp.sum(eps * eps, axis=2) + xp.sum(logvar, axis=1)) - 0.5 * d * LOG_2PI
        log_w = logp.reshape(k, n) + log_prior - log_q
        bound, w = ops.importance_weights(log_w)  # (N,), softmax over the K samples (K, N)
        loss = -scale * float(xp.sum(bound))
        recon = -logp.reshape(k, n).mean(axis=0)
        kl = (log_q - log_prior).mean(axis=0)
        self._check_finite_loss(loss, recon, kl)

        # backward: the same steps in reverse order
        g = -scale * w  # d loss / d log w_kn
        dout, lik_grads = score_backward(g.reshape(k * n))
        ddec_in, dec_grads = self.decoder.backward(dout, dec_caches)
        dz = ddec_in[:, :d].reshape(k, n, d) - g[:, :, None] * z  # decoder, then log p(z)
        if estimator == "dreg":
            dz = (dz + g[:, :, None] * eps * xp.exp(-0.5 * logvar)) * w[:, :, None]
        dh = ops.latent_backward(dz, 0.0, z_cache)  # the path through z (no closed-form KL)
        if estimator == "standard":
            dh[:, d:] += 0.5 * g.sum(axis=0)[:, None]  # -log q(z|x) in eps: +1/2 per logvar_j
        _, enc_grads = self.encoder.backward(dh, enc_caches, need_dx=False)
        grads = {**{f"dec.{k_}": g_ for k_, g_ in dec_grads.items()},
                 **{f"enc.{k_}": g_ for k_, g_ in enc_grads.items()},
                 **{f"lik.{k_}": g_ for k_, g_ in lik_grads.items()}}
        return LossResult(loss, float(recon.mean()), float(kl.mean()), grads, recon, kl)

    def _score_rows(self, x, out):
        """log p(x|z) per row, and the backward taking each row's own upstream gradient g (R,) ->
        (dout, the likelihood's own gradients). The Bernoulli op takes one weight for every row,
        so it runs with weight 1 and its dout rows are scaled."""
        if self.likelihood.name == "bernoulli":
            logp, dout_unit = self.backend.bernoulli(x, out, 1.0)
            return logp, lambda g: (dout_unit * g[:, None], {})
        logp, cache = self.likelihood.forward(x, out)
        return logp, lambda g: self.likelihood.backward(g.astype(out.dtype, copy=False), cache)

    def _noise(self, n: int, eps, rng, n_samples: int, check: bool, need_eps: bool = False):
        """The loss's noise as (eps, key, L): eps given, or drawn from a numpy Generator, is moved to
        the device (key None); a ``philox.Stream`` hands out its next L N d elements as ``key =
        (seed, offset)`` (eps None), which the backend's latent op draws (and a GPU kernel
        regenerates in the backward), or, with ``need_eps``, as those elements themselves (the
        same noise, drawn on the host)."""
        if eps is not None:
            if check:
                eps = _checks.finite_array("eps", eps, dtype=self.dtype, ndim=3)
                if eps.shape[1:] != (n, self.z_dim):
                    raise ValueError(f"eps must have shape (L, {n}, {self.z_dim}), got {eps.shape}")
            return self._dev(eps), None, eps.shape[0]
        if rng is None:
            raise ValueError("give eps or rng: every random draw comes from an explicit generator")
        n_samples = _checks.positive_int("n_samples", n_samples)
        if isinstance(rng, philox.Stream) and not need_eps:
            return None, rng.take(n_samples * n * self.z_dim), n_samples
        if not isinstance(rng, philox.Stream):
            _generator("rng", rng, "or a minivae.philox.Stream")
        return self._dev(self.draw_eps(n, rng, n_samples)), None, n_samples

    def _score(self, x, out, dlogp: float):
        """(log p(x|z) per row, dlogp * its gradient w.r.t. ``out``, the likelihood's own gradients):
        the backend's fused op for Bernoulli, the likelihood's reference code for the others (it
        runs on the backend's arrays)."""
        if self.likelihood.name == "bernoulli":
            logp, dout = self.backend.bernoulli(x, out, dlogp)
            return logp, dout, {}
        return score(self.likelihood, x, out, dlogp)

    @staticmethod
    def _check_finite_loss(loss: float, recon: np.ndarray, kl: np.ndarray) -> None:
        if not math.isfinite(loss):
            where = "reconstruction" if not np.isfinite(recon).all() else "KL"
            raise FloatingPointError(f"the loss is not finite ({loss}): the {where} term overflowed")

    # ------------------------------------------------------------------------------------------
    # evaluation and generation

    def iwae(self, x, y=None, *, k: int = 5000, rng: np.random.Generator,
             batch_size: int = 100) -> IWAEResult:
        """Importance-weighted bound log p(x) >= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x).

        The log-weights of all K samples are kept in float64 (K * batch floats) and combined with
        a stable log-mean-exp; the decoder sees at most IWAE_CHUNK_ELEMENTS outputs at a time.
        K = 1 gives a one-sample ELBO; the bound tightens as K grows (Burda et al., 2015).
        """
        k = _checks.positive_int("k", k)
        batch_size = _checks.positive_int("batch_size", batch_size)
        _generator("rng", rng)
        x = self._check_x(x)
        y1_all = self.one_hot(y, len(x))
        out_log_px = np.empty(len(x))
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            y1 = None if y1_all is None else y1_all[start : start + batch_size]
            nb = len(xb)
            xb_dev = self._dev(xb)
            h, _ = self.encoder.forward(self._cat(xb_dev, y1))
            mu, logvar = h[:, : self.z_dim], h[:, self.z_dim :]
            log_w = np.empty((k, nb))
            chunk = max(1, IWAE_CHUNK_ELEMENTS // (nb * self.x_dim))
            for s in range(0, k, chunk):
                m = min(chunk, k - s)
                eps = self._dev(self.draw_eps(nb, rng, m))
                z, _ = reparameterize_forward(mu, logvar, eps)
                y1_rep = None if y1 is None else np.tile(y1, (m, 1))
                out, _ = self.decoder.forward(self._cat(z.reshape(m * nb, self.z_dim), y1_rep))
                logp, _ = self.likelihood.forward(self.backend.xp.tile(xb_dev, (m, 1)), out)
                # log q(z|x) with z - mu = std * eps: -1/2 sum(eps^2 + logvar + log 2 pi)
                log_q = gaussian_log_density(eps.astype(np.float64), 0.0, 0.0) \
                    - 0.5 * logvar.astype(np.float64).sum(axis=1)
                log_prior = gaussian_log_density(z.astype(np.float64))
                log_w[s : s + m] = self.backend.to_host(logp.reshape(m, nb) + log_prior - log_q)
            top = log_w.max(axis=0)
            if not np.isfinite(top).all():  # NaN, +inf, or every weight zero: no estimate to make
                i = start + int(np.argmax(~np.isfinite(top)))
                raise FloatingPointError(
                    f"the IWAE estimate of example {i} is not finite (its largest log-weight is "
                    f"{top[i - start]}): log p(x|z) overflowed in {self.dtype}")
            out_log_px[start : start + nb] = top + np.log(np.mean(np.exp(log_w - top), axis=0))
        return IWAEResult(out_log_px)

    def sample(self, n: int, rng: np.random.Generator, y=None, *, mean: bool = True) -> np.ndarray:
        """n draws from the model: z ~ N(0, I), then the likelihood's mean (or a sample) of x."""
        n = _checks.positive_int("n", n)
        z = _generator("rng", rng).standard_normal((n, self.z_dim), dtype=self.dtype)
        out = self.decode(z, y)
        return self.likelihood.mean(out) if mean else self.likelihood.sample(out, rng)
