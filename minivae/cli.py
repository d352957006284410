"""``minivae`` on the command line: a thin shell over Python functions that tests call directly.

Every user error ends as one line on stderr and exit code 2 (no traceback); nothing is written
before the arguments and inputs are known to be good.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad arguments or inputs from the command line."""


def _die(msg: str) -> int:
    print(f"minivae: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 with usage on errors; print one line instead, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------------------------------
# train


def _csv_ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip()) if s.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


TRAIN_FLAGS = {
    # flag: (type, help)
    "data": (str, "dataset: digits (bundled), mnist, fashion-mnist, kmnist, or a .npy/.npz/.h5 "
                  "file or a folder of PNG images"),
    "data_dir": (str, "where MNIST-family IDX files live (default $MINIVAE_DATA, else a per-user "
                      "cache directory)"),
    "key": (str, "array name inside a .npz or .h5 file"),
    "binarize": (str, "none | static | dynamic (resampled every epoch)"),
    "val_fraction": (float, "share of the data held out for validation"),
    "test_fraction": (float, "share of the data held out for testing"),
    "hidden": (_csv_ints, "hidden widths, comma-separated (the decoder mirrors them)"),
    "z_dim": (int, "latent dimension"),
    "activation": (str, "relu | leaky_relu | elu | tanh | sigmoid | softplus"),
    "likelihood": (str, "bernoulli | cbernoulli | gaussian | gaussian_learned"),
    "sigma": (float, "standard deviation of the fixed-sigma gaussian likelihood"),
    "dtype": (str, "float32 | float64"),
    "epochs": (int, "number of epochs"),
    "batch_size": (int, "examples per step"),
    "optimizer": (str, "sgd | adam | adamw"),
    "lr": (float, "learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay (L2 for sgd/adam, decoupled for adamw)"),
    "beta": (float, "weight of the KL term"),
    "warmup_epochs": (int, "KL warm-up: beta grows linearly over this many epochs"),
    "clip": (float, "clip the global gradient norm to this value"),
    "patience": (int, "early stopping: epochs without a better validation -ELBO"),
    "n_samples": (int, "samples of z per example in the training loss"),
    "seed": (int, "seed of every random draw of the run"),
    "iwae_k": (int, "importance samples for the final test NLL estimate"),
    "on_nonfinite": (str, "stop | skip: what a NaN/inf loss or gradient does"),
}


def _train_parser(sub) -> None:
    from minivae.train import TrainConfig

    p = sub.add_parser("train", help="train a VAE (default: the bundled digits data)",
                       description="Train a VAE. With no arguments: the UCI digits bundled with "
                       "scikit-learn, 64-128-8, Bernoulli likelihood, dynamic binarization, Adam, "
                       "50 epochs. Settings come from --config (TOML), then flags (flags win).")
    defaults = TrainConfig()
    for name, (typ, help_) in TRAIN_FLAGS.items():
        d = getattr(defaults, name)
        shown = ",".join(map(str, d)) if isinstance(d, tuple) else d
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"{help_} (default: {shown})")
    p.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=None,
                   help="feed one-hot labels to encoder and decoder (default: off)")
    p.add_argument("--pictures", action=argparse.BooleanOptionalAction, default=None,
                   help="write pictures at the end (default: on)")
    p.add_argument("--config", type=Path, help="TOML file of settings (keys as the flags, with _)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default: runs/<data>-<seed>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from minivae.train import TrainConfig, train

    flags = {k: getattr(args, k) for k in (*TRAIN_FLAGS, "conditional", "pictures")
             if getattr(args, k) is not None}
    if args.resume:
        if flags or args.config or args.out:
            raise UsageError("--resume continues a run with its saved configuration: give no "
                             "other settings")
        result = train(None, args.resume, resume=True,  # type: ignore[arg-type]
                       progress=not args.no_progress)
        return 0 if not result.interrupted else 130
    settings: dict = {}
    if args.config:
        try:
            settings = tomllib.loads(args.config.read_text())
        except FileNotFoundError:
            raise UsageError(f"--config {args.config}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"--config {args.config}: not valid TOML ({e})") from None
    settings |= flags
    config = TrainConfig.from_dict(settings)
    out = args.out or Path("runs") / f"{Path(config.data).stem}-{config.seed}"
    result = train(config, out, overwrite=args.overwrite, progress=not args.no_progress)
    return 0 if not result.interrupted else 130


# ------------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minivae", description="A Variational Autoencoder with hand-written "
                     "backprop in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from minivae.data import DataError
    from minivae.train import NonFiniteError, RunError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, DataError, RunError, ValueError) as e:
        return _die(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except NonFiniteError as e:
        print(f"minivae: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        return _die(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))


if __name__ == "__main__":
    sys.exit(main())

