"""One training path on every backend: the model trains through the networks a reader studies.

``assert_trains_through_its_networks`` trains a small VAE a few Adam steps on a backend, then
evaluates the loss once more while watching the backend table, and checks that
``model.encoder.forward`` and ``model.decoder.forward`` (the ``MLP`` objects of minivae.layers)
give exactly, bit for bit, the encoder head and the decoder output that loss used: the weights live
in one place and the loss composes the networks through those objects. It also checks the run
against the numpy backend's (same seed and noise), so every likelihood and the conditional model are
shown to train there. Each backend's test module (which selects its device or simulator first)
calls it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from minivae import philox
from minivae.backends import Backend, get_backend
from minivae.model import VAE
from minivae.optim import Adam


@dataclasses.dataclass(frozen=True)
class CopyingBackend(Backend):
    """A backend whose ``asarray`` always copies, as a move to a GPU does: weights kept anywhere but
    in the networks' own ``params`` would go stale, as they would on a real device."""

    def asarray(self, a, dtype=None):
        return self.xp.array(a, dtype=dtype, copy=True)


def watched(backend: Backend, seen: dict) -> Backend:
    """``backend`` with its linear and latent ops recording what they computed, in ``seen``: the last
    linear op's output ("out", the decoder's) and the latent op's input ("h", the encoder's head)."""
    host = backend.to_host

    def linear_forward(x, W, b, act):
        y, cache = backend.linear_forward(x, W, b, act)
        seen["out"] = host(y).copy()
        return y, cache

    def latent_forward(h, n_samples, eps=None, key=None):
        seen["h"] = host(h).copy()
        z, kl, cache = backend.latent_forward(h, n_samples, eps=eps, key=key)
        seen["z"] = host(z).copy()
        return z, kl, cache

    fields = {f.name: getattr(backend, f.name) for f in dataclasses.fields(backend)}
    fields |= {"linear_forward": linear_forward, "latent_forward": latent_forward}
    return (CopyingBackend if backend.on_gpu else Backend)(**fields)


def _run(backend: Backend, likelihood: str, n_classes: int, steps: int, dtype: str, seen: dict):
    """A small model trained ``steps`` Adam steps, then one more loss evaluated (recorded in ``seen``)."""
    rng = np.random.default_rng(4)
    n, x_dim = 5, 9
    model = VAE(x_dim, 2, (6,), activation="tanh", likelihood=likelihood, n_classes=n_classes, dtype=dtype,
                rng=rng, backend=watched(backend, seen))
    x = (rng.random((n, x_dim)) < 0.5).astype(dtype)  # in every likelihood's support
    y = rng.integers(0, n_classes, n) if n_classes else None
    opt = Adam(model.params, lr=2e-2, backend=model.backend)
    losses = []
    for step in range(steps):
        res = model.loss(x, y, rng=philox.Stream(3, 100 * step), n_samples=2)
        opt.step(res.grads)
        losses.append(res.loss)
    last = model.loss(x, y, rng=philox.Stream(9, 0), n_samples=2)
    losses.append(last.loss)
    return model, x, y, np.array(losses)


def assert_trains_through_its_networks(backend: str | Backend, likelihood: str = "bernoulli",
                                       n_classes: int = 0, steps: int = 2, dtype: str = "float32",
                                       rtol: float = 1e-4) -> None:
    backend = get_backend(backend)
    seen: dict = {}
    model, x, y, losses = _run(backend, likelihood, n_classes, steps, dtype, seen)
    host = model.backend.to_host

    # the layer objects hold the weights the optimiser stepped: the very same arrays
    for net, prefix in ((model.encoder, "enc"), (model.decoder, "dec"), (model.likelihood, "lik")):
        for k, p in net.params.items():
            assert model.params[f"{prefix}.{k}"] is p, f"{prefix}.{k} is not the network's own array"

    # the networks compute exactly what the last loss used
    y1 = model.one_hot(y, len(x))
    enc_in = x if y1 is None else np.concatenate([x, y1], axis=1)
    h, _ = model.encoder.forward(model.backend.asarray(enc_in))
    np.testing.assert_array_equal(host(h), seen["h"], err_msg="encoder.forward vs the loss's encoder head")
    z = seen["z"].reshape(-1, model.z_dim)  # sample-major rows: sample l of example n is row l*N + n
    dec_in = z if y1 is None else np.concatenate([z, np.tile(y1, (len(z) // len(x), 1))], axis=1)
    out, _ = model.decoder.forward(model.backend.asarray(dec_in.astype(dtype)))
    np.testing.assert_array_equal(host(out), seen["out"], err_msg="decoder.forward vs the loss's decoder")

    # and the run is the numpy backend's, to rounding: this likelihood trains on this backend
    ref_seen: dict = {}
    ref, _, _, ref_losses = _run(get_backend("numpy"), likelihood, n_classes, steps, dtype, ref_seen)
    assert np.isfinite(losses).all(), f"{backend.name}: non-finite losses {losses}"
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol, err_msg=f"{backend.name}'s losses vs numpy's")
    for k, p in ref.params.items():
        np.testing.assert_allclose(host(model.params[k]), p, rtol=rtol, atol=rtol * np.abs(p).max(),
                                   err_msg=f"{backend.name}'s {k} after {steps} steps vs numpy's")
