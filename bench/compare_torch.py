"""Does minivae train as well as PyTorch? Same architecture, likelihood, optimiser, batch size,
epochs and data split, over several seeds; test -ELBO and IWAE NLL with their spread.

    python -m bench compare                       # digits: 64-128-8, 50 epochs, 3 seeds
    python -m bench compare --data mnist          # MNIST-family IDX files: 784-400-20, 10 epochs

Both models see the same split and the same dynamically binarized epochs (minivae's Binarizer);
each draws its own batch order and noise from its own seeded generator. Both trained models are
evaluated by the same code (the PyTorch weights are copied into a minivae VAE), so the numbers
differ only by how training went.

Without PyTorch the script says so before training anything and runs minivae alone; the table
then shows minivae's numbers and "not installed" for PyTorch.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from minivae import data as data_mod
from minivae.config import TrainConfig
from minivae.train import IWAE_SALT, TEST_ELBO_SALT, build_model, eval_elbo, held_out, train

PRESETS = {
    "digits": dict(hidden=(128,), z_dim=8, epochs=50),
    "mnist": dict(hidden=(400,), z_dim=20, epochs=10),
}


def import_torch() -> tuple[Any, str | None]:
    """(the torch module, None), or (None, why it cannot be imported)."""
    try:
        import torch
    except ImportError as e:
        return None, str(e)
    return torch, None


def _torch_train(torch: Any, config: TrainConfig, train_x: np.ndarray, seed: int):
    """The same VAE in PyTorch; returns its parameters in minivae's names and layout."""
    torch.manual_seed(seed)
    nn, F = torch.nn, torch.nn.functional
    sizes = (train_x.shape[1], *config.hidden)
    enc = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    enc.append(nn.Linear(sizes[-1], 2 * config.z_dim))
    dsz = (config.z_dim, *config.hidden[::-1])
    dec = [nn.Linear(a, b) for a, b in zip(dsz[:-1], dsz[1:], strict=True)]
    dec.append(nn.Linear(dsz[-1], train_x.shape[1]))
    layers = nn.ModuleList(enc + dec)
    opt = torch.optim.Adam(layers.parameters(), lr=config.lr)

    def mlp(mods, h):
        for i, m in enumerate(mods):
            h = m(F.relu(h) if i else h)
        return h

    binarizer = data_mod.Binarizer(config.binarize, config.seed)
    rng = np.random.default_rng([seed, 7])
    d = config.z_dim
    for epoch in range(config.epochs):
        xe = torch.from_numpy(binarizer(train_x, epoch).astype(np.float32))
        perm = rng.permutation(len(xe))
        for s in range(0, len(xe), config.batch_size):
            xb = xe[perm[s:s + config.batch_size]]
            out = mlp(enc, xb)
            mu, logvar = out[:, :d], out[:, d:]
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = mlp(dec, z)
            recon = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1 - logvar)
            loss = (recon + config.beta * kl) / len(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    params = {}
    for prefix, mods in (("enc", enc), ("dec", dec)):
        for i, m in enumerate(mods):
            params[f"{prefix}.{i}.W"] = m.weight.detach().numpy().copy()
            params[f"{prefix}.{i}.b"] = m.bias.detach().numpy().copy()
    return params


def _evaluate(model, test_ds, test_x, config: TrainConfig) -> tuple[float, float]:
    t = eval_elbo(model, test_ds, test_x, config.seed, TEST_ELBO_SALT)
    iw = model.iwae(test_x, k=config.iwae_k, rng=np.random.default_rng([config.seed, IWAE_SALT]))
    return t["loss"], iw.nll


def run(data: str = "digits", seeds=(0, 1, 2), data_dir=None, epochs: int | None = None,
        iwae_k: int = 1000, out_dir=None, log=print) -> dict:
    """Train both per seed and summarise; without PyTorch (checked first), minivae alone and
    ``summary["torch"]`` None."""
    torch, why = import_torch()
    if torch is None:
        log(f"PyTorch is not installed ({why}): running minivae alone, no comparison "
            "(pip install torch to compare)")
    preset = PRESETS["digits" if data == "digits" else "mnist"]
    if epochs is not None:
        preset = preset | {"epochs": epochs}
    rows: dict[str, list] = {"minivae": [], "torch": []}
    for seed in seeds:
        config = TrainConfig(data=data, data_dir=data_dir, seed=seed, iwae_k=iwae_k,
                             pictures=False, **preset)
        ds = data_mod.load_dataset(config.data, data_dir=config.data_dir)
        train_ds, _, test_ds, _, test_x = held_out(config, ds, np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            res = train(config, Path(out_dir or tmp) / f"minivae-{data}-{seed}", overwrite=True,
                        progress=False, log=lambda s: None)
        rows["minivae"].append(_evaluate(res.model, test_ds, test_x, config))
        line = f"seed {seed}: minivae -ELBO {rows['minivae'][-1][0]:.3f} IWAE {rows['minivae'][-1][1]:.3f}"
        if torch is not None:
            theirs = build_model(config, ds.x.shape[1], ds.n_classes)
            for k, v in _torch_train(torch, config, train_ds.x.astype(np.float32), seed).items():
                theirs.params[k][...] = v
            rows["torch"].append(_evaluate(theirs, test_ds, test_x, config))
            line += f" | torch -ELBO {rows['torch'][-1][0]:.3f} IWAE {rows['torch'][-1][1]:.3f}"
        log(line)
    summary: dict[str, Any] = {"data": data, "seeds": list(seeds), "iwae_k": iwae_k,
                               "preset": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in preset.items()},
                               "torch": None, "elbo_gap": None, "nll_gap": None}
    for name, vals in rows.items():
        if not vals:
            continue
        elbo, nll = zip(*vals, strict=True)
        summary[name] = {"test_elbo_loss": elbo, "test_iwae_nll": nll,
                         "elbo_mean": statistics.mean(elbo), "elbo_sd": statistics.stdev(elbo)
                         if len(elbo) > 1 else 0.0, "nll_mean": statistics.mean(nll),
                         "nll_sd": statistics.stdev(nll) if len(nll) > 1 else 0.0}
    if summary["torch"] is not None:
        summary["elbo_gap"] = summary["minivae"]["elbo_mean"] - summary["torch"]["elbo_mean"]
        summary["nll_gap"] = summary["minivae"]["nll_mean"] - summary["torch"]["nll_mean"]
    return summary


def table(s: dict) -> str:
    lines = [f"data {s['data']}, seeds {s['seeds']}, {s['preset']}, IWAE K={s['iwae_k']}", "",
             "| trained by | test -ELBO (mean +- sd) | test IWAE NLL (mean +- sd) |", "|---|---:|---:|"]
    for name in ("minivae", "torch"):
        r = s[name]
        if r is None:
            lines.append(f"| {name} | not installed | not installed |")
            continue
        lines.append(f"| {name} | {r['elbo_mean']:.3f} +- {r['elbo_sd']:.3f} | "
                     f"{r['nll_mean']:.3f} +- {r['nll_sd']:.3f} |")
    if s["elbo_gap"] is not None:
        lines.append(f"| **difference** | **{s['elbo_gap']:+.3f}** | **{s['nll_gap']:+.3f}** |")
    return "\n".join(lines)
