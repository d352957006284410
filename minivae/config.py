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
from minivae.model import ESTIMATORS, OBJECTIVES


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
    lr_schedule: str = "constant"  # constant | burda (LR_SCHEDULES)
    schedule_scale: float = 1.0  # burda: each stage's 3^i epochs times this (at least 1)
    adam_eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    beta: float = 1.0
    warmup_epochs: int = 0
    clip: float | None = None
    patience: int | None = None
    n_samples: int = 1
    objective: str = "elbo"  # elbo | iwae (minivae.model.OBJECTIVES); iwae's K is n_samples
    estimator: str = "standard"  # standard | dreg: the iwae gradient's estimator
    seed: int = 0
    iwae_k: int = 1000
    on_nonfinite: str = "stop"  # stop | skip
    pictures: bool = True
    backend: str = "numpy"

    def __post_init__(self) -> None:
        # typed settings (a TOML file may hold anything): strings are strings, flags are flags
        for name in ("data", "binarize", "activation", "likelihood", "dtype", "optimizer",
                     "lr_schedule", "on_nonfinite", "backend", "objective", "estimator"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("data_dir", "key"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string (or left out), got "
                                 f"{getattr(self, name)!r}")
        for name in ("conditional", "pictures"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.hidden = _checks.sizes("hidden", self.hidden)
        for name in ("z_dim", "epochs", "batch_size", "n_samples", "iwae_k"):
            setattr(self, name, _checks.positive_int(name, getattr(self, name)))
        self.adam_eps = _checks.positive_float("adam_eps", self.adam_eps)
        self.schedule_scale = _checks.positive_float("schedule_scale", self.schedule_scale)
        _checks.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr_schedule == "constant" and self.schedule_scale != 1:
            raise ValueError(f"schedule_scale {self.schedule_scale} scales the burda schedule: "
                             "expected lr_schedule 'burda' (or no schedule_scale)")
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
        _checks.choice("objective", self.objective, OBJECTIVES)
        _checks.choice("estimator", self.estimator, ESTIMATORS)
        if self.estimator != "standard" and self.objective != "iwae":
            raise ValueError(f"estimator {self.estimator!r} estimates the importance-weighted "
                             "bound's gradient: expected objective 'iwae'")
        if self.objective == "iwae" and (self.beta != 1 or self.warmup_epochs):
            raise ValueError("the importance-weighted bound weighs its KL by 1: expected beta 1 "
                             f"and no warm-up with objective 'iwae', got beta {self.beta}, "
                             f"warmup_epochs {self.warmup_epochs}")
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

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: ``lr`` (constant), or Burda et al.'s schedule:
        stage i = 0..7 lasts 3^i epochs (times ``schedule_scale``) at lr * 10^(-i/7); epochs past
        the last stage keep its rate."""
        if self.lr_schedule == "constant":
            return self.lr
        ends = np.cumsum(burda_stages(self.schedule_scale))
        stage = min(int(np.searchsorted(ends, epoch, side="right")), BURDA_STAGES - 1)
        return self.lr * 10 ** (-stage / 7)

    def beta_at(self, epoch: int) -> float:
        """KL warm-up: beta grows linearly from beta/warmup to beta over the first epochs."""
        if self.warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + 1) / self.warmup_epochs)


LR_SCHEDULES = ("constant", "burda")
# Burda, Grosse & Salakhutdinov (2015), section 5: stages i = 0..7 of 3^i epochs at 1e-3 * 10^(-i/7),
# 3280 epochs in all.
BURDA_STAGES = 8


def burda_stages(scale: float = 1.0) -> list[int]:
    """Epochs of each stage of Burda et al.'s schedule, 3^i scaled by ``scale`` (at least 1)."""
    return [max(1, round(3**i * scale)) for i in range(BURDA_STAGES)]


# Named starting points for a run, applied before --config and the flags (which win).
PRESETS: dict[str, dict] = {
    # The IWAE paper's MNIST model and schedule (Burda, Grosse & Salakhutdinov, 2015, section 5):
    # one stochastic layer, 784-200-200-50 with tanh units, Bernoulli decoder, batch 20, Adam with
    # eps 1e-4, the 3^i-epoch learning-rate schedule, test NLL by IWAE with K = 5000. The epochs
    # follow the schedule (scaled by schedule_scale) unless given.
    "burda2015": {"hidden": (200, 200), "z_dim": 50, "activation": "tanh",
                  "likelihood": "bernoulli", "binarize": "dynamic", "batch_size": 20,
                  "optimizer": "adam", "adam_eps": 1e-4, "lr": 1e-3, "lr_schedule": "burda",
                  "iwae_k": 5000, "val_fraction": 0.0},
}


def from_preset(name: str | None, settings: dict) -> TrainConfig:
    """A TrainConfig from preset ``name`` (or none) overridden by ``settings``; a burda schedule's
    epochs default to the schedule's length at its scale."""
    if name is not None:
        _checks.choice("preset", name, tuple(PRESETS))
    merged = (PRESETS[name] if name else {}) | settings
    if merged.get("lr_schedule") == "burda" and "epochs" not in merged:
        scale = _checks.positive_float("schedule_scale", merged.get("schedule_scale", 1.0))
        merged["epochs"] = sum(burda_stages(scale))
    return TrainConfig.from_dict(merged)


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
