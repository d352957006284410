"""VAE against IWAE, as in Burda, Grosse & Salakhutdinov (2015), Table 1: train the paper's model
(``--preset burda2015``: 784-200-200-50 tanh, Bernoulli, batch 20, Adam eps 1e-4, the 3^i-epoch
schedule) on the ELBO and on the K-sample bound for K = 1, 5, 50, on the same data, schedule and
seeds, and report each run's test NLL (IWAE with K = 5000, standard error over the test examples),
its active units and its time per epoch on each backend, beside the paper's numbers.

    python -m bench iwae                          # bundled digits, schedule scaled by 0.1
    python -m bench iwae --data mnist --scale 1   # the paper's MNIST protocol (3280 epochs a run)

The paper's numbers are for MNIST; on the bundled digits (64 pixels, 1,797 images) only the
ordering carries over, which the table checks: at equal K > 1, IWAE's NLL is below VAE's and it
keeps at least as many active units.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from minivae.backends import get_backend
from minivae.config import TrainConfig, burda_stages, from_preset
from minivae.runs import read_metrics
from minivae.train import train

# Burda et al. (2015), Table 1, MNIST, one stochastic layer, test NLL in nats (IWAE, K = 5000).
PAPER_NLL = {("vae", 1): 86.76, ("vae", 5): 86.47, ("vae", 50): 86.35,
             ("iwae", 1): 86.76, ("iwae", 5): 85.54, ("iwae", 50): 84.78}
# Epochs timed on each other backend: enough to leave the first epoch's compilation behind.
TIMING_EPOCHS = 3


def _config(data: str, data_dir: str | None, scale: float, k: int, objective: str, estimator: str,
            seed: int, backend: str, iwae_k: int, epochs: int | None = None) -> TrainConfig:
    settings: dict[str, Any] = {"data": data, "data_dir": data_dir, "schedule_scale": scale,
                                "n_samples": k, "objective": objective, "estimator": estimator,
                                "seed": seed, "backend": backend, "iwae_k": iwae_k, "pictures": False}
    if epochs is not None:
        settings["epochs"] = epochs
    return from_preset("burda2015", settings)


def _seconds_per_epoch(run_dir: Path) -> float:
    """Median wall time of an epoch after the first (which includes compilation and warm-up)."""
    t = [r["elapsed_seconds"] for r in read_metrics(run_dir)]
    steps = sorted(b - a for a, b in zip(t, t[1:], strict=False)) or t
    return steps[len(steps) // 2]


def run(data: str = "digits", data_dir: str | None = None, scale: float = 0.1,
        ks: Sequence[int] = (1, 5, 50), seeds: Sequence[int] = (0,), estimator: str = "standard",
        iwae_k: int = 5000, backends: Sequence[str] = ("numba",),
        log: Callable[[str], None] = print, on_result: Callable[[dict], None] | None = None) -> dict:
    """Train every (objective, K, seed) on the first backend; time an epoch on the others."""
    backends = [get_backend(b).name for b in backends]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            for objective in ("elbo", "iwae"):
                for seed in seeds:
                    est = estimator if objective == "iwae" else "standard"
                    c = _config(data, data_dir, scale, k, objective, est, seed, backends[0], iwae_k)
                    out = Path(tmp) / f"{objective}-{k}-{seed}"
                    t0 = time.perf_counter()
                    res = train(c, out, progress=False, log=lambda s: None, report=lambda s: None)
                    s = res.summary
                    row = {"model": "vae" if objective == "elbo" else "iwae", "k": k, "seed": seed,
                           "estimator": est, "epochs": s["epochs"], "test_nll": s["test_iwae_nll"],
                           "test_nll_stderr": s["test_iwae_nll_stderr"],
                           "test_neg_elbo": s["test_elbo_loss"], "active_units": s["active_units"],
                           "z_dim": c.z_dim, "n_test": s["n_test"],
                           "seconds": round(time.perf_counter() - t0, 1),
                           "seconds_per_epoch": {backends[0]: _seconds_per_epoch(out)}}
                    for other in backends[1:]:
                        c2 = _config(data, data_dir, scale, k, objective, est, seed, other, 1,
                                     epochs=TIMING_EPOCHS)
                        o2 = Path(tmp) / f"time-{other}-{objective}-{k}-{seed}"
                        train(c2, o2, progress=False, log=lambda s: None, report=lambda s: None)
                        row["seconds_per_epoch"][other] = _seconds_per_epoch(o2)
                    rows.append(row)
                    log(f"{row['model']} K={k} seed {seed}: test NLL {row['test_nll']:.3f} "
                        f"+- {row['test_nll_stderr']:.3f}, active units {row['active_units']}, "
                        f"{row['seconds']} s")
                    if on_result is not None:
                        on_result(row)
    return {"data": data, "schedule_scale": scale, "epochs": sum(burda_stages(scale)),
            "stages": burda_stages(scale), "ks": list(ks), "seeds": list(seeds),
            "estimator": estimator, "iwae_k": iwae_k, "backends": backends, "rows": rows,
            "ordering": ordering(rows, ks)}


def _mean(rows: list[dict], model: str, k: int, key: str) -> float:
    vals = [r[key] for r in rows if r["model"] == model and r["k"] == k]
    return sum(vals) / len(vals)


def ordering(rows: list[dict], ks: Sequence[int]) -> dict[str, dict]:
    """Per K > 1: does IWAE reach a lower test NLL than VAE, and at least as many active units
    (means over the seeds)? With the per-seed differences IWAE - VAE of the NLL: the seeds share
    data, split and schedule, so the pairs show what the standard errors (over test examples,
    which the two models share too) cannot."""
    out = {}
    for k in ks:
        if k == 1:
            continue
        nll = (_mean(rows, "vae", k, "test_nll"), _mean(rows, "iwae", k, "test_nll"))
        au = (_mean(rows, "vae", k, "active_units"), _mean(rows, "iwae", k, "active_units"))
        by_seed = {(r["model"], r["seed"]): r["test_nll"] for r in rows if r["k"] == k}
        seeds = sorted({s for _, s in by_seed})
        out[str(k)] = {"iwae_nll_lower": nll[1] < nll[0], "iwae_active_units_not_fewer": au[1] >= au[0],
                       "nll_vae": nll[0], "nll_iwae": nll[1], "active_vae": au[0], "active_iwae": au[1],
                       "nll_iwae_minus_vae_by_seed": [by_seed["iwae", s] - by_seed["vae", s]
                                                      for s in seeds]}
    return out


def table(res: dict) -> str:
    """The results as Markdown: one row per model and K (means over seeds), the paper beside."""
    backends = res["backends"]
    head = ["model", "K", "test NLL (IWAE-5000)", "active units", *(f"s/epoch {b}" for b in backends),
            "paper NLL (MNIST)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in res["ks"]:
        for model in ("vae", "iwae"):
            rs = [r for r in res["rows"] if r["model"] == model and r["k"] == k]
            nll = sum(r["test_nll"] for r in rs) / len(rs)
            se = max(r["test_nll_stderr"] for r in rs)
            au = sum(r["active_units"] for r in rs) / len(rs)
            sec = [sum(r["seconds_per_epoch"][b] for r in rs) / len(rs) for b in backends]
            name = model.upper() + (" (DReG)" if model == "iwae" and rs[0]["estimator"] == "dreg" else "")
            lines.append(f"| {name} | {k} | {nll:.3f} +- {se:.3f} | {au:.1f} of {rs[0]['z_dim']} | "
                         + " | ".join(f"{s:.3f}" for s in sec)
                         + f" | {PAPER_NLL.get((model, k), '-')} |")
    checks = [f"K={k}: IWAE NLL lower than VAE's: {'yes' if o['iwae_nll_lower'] else 'NO'} "
              f"({o['nll_iwae']:.3f} vs {o['nll_vae']:.3f}; IWAE - VAE per seed: "
              + ", ".join(f"{v:+.3f}" for v in o["nll_iwae_minus_vae_by_seed"])
              + f"); active units at least VAE's: {'yes' if o['iwae_active_units_not_fewer'] else 'NO'} "
              f"({o['active_iwae']:.1f} vs {o['active_vae']:.1f})" for k, o in res["ordering"].items()]
    budget = (f"Data {res['data']}; schedule scale {res['schedule_scale']} (stages "
              f"{res['stages']}, {res['epochs']} epochs a run); seeds {res['seeds']}; test NLL by "
              f"IWAE with K = {res['iwae_k']}; standard errors over the test examples (the largest "
              "over the seeds).")
    return "\n".join([*lines, "", budget, "", "The paper's ordering:", *(f"- {c}" for c in checks)])
