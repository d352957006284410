"""The configuration of a training run: every setting of ``minivae train``, checked.

``TrainConfig`` is what config.json holds (``to_dict``) and what a checkpoint carries; its defaults
are the command line's, and ``from_dict`` refuses unknown keys, so a typo in a TOML file is an
error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from minivae import _checks
from minivae.backends import BACKENDS
from minivae.layers import ACTIVATIONS
from minivae.likelihoods import LIKELIHOODS


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved as config.json; ``from_dict`` checks every field."""

    data: str = "digits"
    data_dir: str | None = None
    key: str | None = None
    binarize: str = "dynamic"  # none | static | dynamic
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    hidden: tuple[int, ...] = (128,)
    z_dim: int = 8
    activation: str = "relu"
    likelihood: str = "bernoulli"
    sigma: float = 1.0
    conditional: bool = False
    dtype: str = "float32"
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    beta: float = 1.0
    warmup_epochs: int = 0
    clip: float | None = None
    patience: int | None = None
    n_samples: int = 1
    seed: int = 0
    iwae_k: int = 1000
    on_nonfinite: str = "stop"  # stop | skip
    pictures: bool = True
    backend: str = "numpy"

    def __post_init__(self) -> None:
        self.hidden = _checks.sizes("hidden", self.hidden)
        for name in ("z_dim", "epochs", "batch_size", "n_samples", "iwae_k"):
            setattr(self, name, _checks.positive_int(name, getattr(self, name)))
        for name in ("lr", "momentum", "weight_decay", "beta"):
            setattr(self, name, _checks.non_negative_float(name, getattr(self, name)))
        if self.momentum >= 1:  # the velocity would never decay: SGD diverges
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        self.sigma = _checks.positive_float("sigma", self.sigma)
        self.warmup_epochs = _checks.non_negative_int("warmup_epochs", self.warmup_epochs)
        self.seed = _checks.non_negative_int("seed", self.seed)
        if self.clip is not None:
            self.clip = _checks.positive_float("clip", self.clip)
        if self.patience is not None:
            self.patience = _checks.positive_int("patience", self.patience)
        for name in ("val_fraction", "test_fraction"):
            v = _checks.non_negative_float(name, getattr(self, name))
            if v >= 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {v}")
            setattr(self, name, v)
        if self.patience is not None and self.val_fraction == 0:
            raise ValueError(f"patience {self.patience} needs a validation split to watch: "
                             "expected val_fraction > 0, got 0")
        _checks.choice("binarize", self.binarize, ("none", "static", "dynamic"))
        _checks.choice("activation", self.activation, tuple(ACTIVATIONS))
        _checks.choice("likelihood", self.likelihood, tuple(LIKELIHOODS))
        _checks.choice("optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        _checks.choice("on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        _checks.choice("backend", self.backend, (*BACKENDS, "auto"))
        _checks.float_dtype("dtype", self.dtype)
        self.dtype = str(np.dtype(self.dtype))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown configuration key {unknown[0]!r}; known keys: "
                             f"{', '.join(sorted(names))}")
        return cls(**{k: _hidden(v) if k == "hidden" else v for k, v in d.items()})

    def beta_at(self, epoch: int) -> float:
        """KL warm-up: beta grows linearly from beta/warmup to beta over the first epochs."""
        if self.warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.warmup_epochs)


def _hidden(v: object) -> tuple:
    """Hidden widths as a sequence, or as the flag's comma-separated string ("64,32")."""
    if isinstance(v, str):
        try:
            return tuple(int(w) for w in v.split(",") if w.strip())
        except ValueError:
            raise ValueError(f"hidden must be comma-separated positive integers, got {v!r}") from None
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise ValueError(f"hidden must be a list of positive integers or a string like \"64,32\", "
                     f"got {v!r}")
