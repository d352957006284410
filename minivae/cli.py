"""``minivae`` on the command line: a thin shell over Python functions that tests call directly.

Every user error ends as one line on stderr and exit code 2 (no traceback); nothing is written
before the arguments and inputs are known to be good.

Results go to stdout, progress and logs to stderr, so ``minivae train > log.txt`` keeps the
result. Exit status: 0 done; 1 training stopped on a NaN/inf loss or gradient, or gradcheck found
a wrong gradient; 2 bad arguments or inputs; 130 interrupted by Ctrl-C or SIGTERM (training saved
a checkpoint when it had taken a step: ``minivae train --resume RUN`` continues).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from minivae import commands
from minivae.backends import AUTO_ORDER, BACKENDS
from minivae.layers import ACTIVATIONS
from minivae.likelihoods import LIKELIHOODS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_NONFINITE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C
INTERRUPTED_MESSAGE = "minivae: interrupted"


class UsageError(ValueError):
    """Bad arguments or inputs from the command line."""


def _die(msg: str) -> int:
    print(f"minivae: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 with usage on errors; print one line instead, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        # "minivae: error: train: argument --lr: ...": the command, not the program name twice
        command = self.prog.removeprefix("minivae").strip()
        raise UsageError(f"{command}: {message}" if command else message)


# ------------------------------------------------------------------------------------------------
# train


def _csv_ints(s: str) -> tuple[int, ...]:
    """"64,32" -> (64, 32); "" -> () (no hidden layer); an empty item ("64,,32") is an error."""
    try:
        return tuple(int(v) for v in s.split(",")) if s.strip() else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _choices(names) -> str:
    return " | ".join(names)


TRAIN_FLAGS = {
    # flag: (type, help); the help gets "(default: ...)" from TrainConfig, or from NONE_MEANS
    # where TrainConfig's default is None
    "data": (str, "dataset: digits (bundled), mnist, fashion-mnist, kmnist, or a .npy/.npz/.h5 "
                  "file or a folder of PNG images"),
    "data_dir": (str, "where MNIST-family IDX files live; config.json records the folder read"),
    "key": (str, "array name inside a .npz or .h5 file"),
    "binarize": (str, "none | static | dynamic (resampled every epoch)"),
    "val_fraction": (float, "share of the data held out for validation"),
    "test_fraction": (float, "share of the data held out for testing"),
    "hidden": (_csv_ints, "hidden widths, comma-separated (the decoder mirrors them)"),
    "z_dim": (int, "latent dimension"),
    "activation": (str, _choices(ACTIVATIONS)),
    "likelihood": (str, _choices(LIKELIHOODS)),
    "sigma": (float, "standard deviation of the fixed-sigma gaussian likelihood"),
    "dtype": (str, "float32 | float64"),
    "epochs": (int, "number of epochs"),
    "batch_size": (int, "examples per step"),
    "optimizer": (str, "sgd | adam | adamw"),
    "lr": (float, "learning rate (the first stage's, with --lr-schedule burda)"),
    "lr_schedule": (str, "constant | burda: stages i = 0..7 of 3^i epochs at lr * 10^(-i/7) "
                         "(Burda et al. 2015); without --epochs a burda run lasts the schedule "
                         "(3280 epochs times --schedule-scale)"),
    "schedule_scale": (float, "burda schedule only: each stage's epochs times this (at least 1 "
                              "each)"),
    "adam_eps": (float, "Adam's eps (the term added to the denominator)"),
    "momentum": (float, "SGD momentum, in [0, 1)"),
    "weight_decay": (float, "weight decay (L2 for sgd/adam, decoupled for adamw)"),
    "beta": (float, "weight of the KL term"),
    "warmup_epochs": (int, "KL warm-up: beta grows linearly over this many epochs"),
    "clip": (float, "clip the global gradient norm to this value"),
    "patience": (int, "early stopping: stop after this many epochs without a better validation "
                      "-ELBO and keep the weights of the best epoch (needs --val-fraction > 0)"),
    "n_samples": (int, "samples of z per example in the training loss (K of --objective iwae)"),
    "objective": (str, "elbo | iwae: the ELBO, or the K-sample importance-weighted bound of Burda "
                       "et al. 2015 (K = --n-samples)"),
    "estimator": (str, "standard | dreg: the iwae bound's gradient; dreg is the doubly "
                       "reparameterized encoder gradient of Tucker et al. 2018"),
    "seed": (int, "seed of every random draw of the run"),
    "iwae_k": (int, "importance samples for the final test NLL estimate"),
    "on_nonfinite": (str, "stop | skip: what a NaN/inf loss or gradient does"),
    "backend": (str, f"{_choices((*BACKENDS, 'auto'))} (auto: the first of "
                     f"{', '.join(AUTO_ORDER)} that runs here; config.json records which)"),
}
# What a TrainConfig default of None means, as --help says it.
NONE_MEANS = {
    "data_dir": "$MINIVAE_DATA, else a per-user cache directory",
    "key": "none: the array named x, else the only one besides the labels",
    "clip": "off",
    "patience": "off: train every epoch, keep the last weights",
}
# The flags --resume takes; every other setting comes from the run's saved configuration.
RESUME_FLAGS = ("--backend", "--no-progress")


def _train_parser(sub) -> None:
    from minivae.config import TrainConfig

    p = sub.add_parser("train", help="train a VAE (default: the bundled digits data)",
                       description="Train a VAE. With no arguments: the UCI digits bundled with "
                       "scikit-learn, 64-128-8, Bernoulli likelihood, dynamic binarization, Adam, "
                       "50 epochs. Settings come from --config (TOML), then flags (flags win); "
                       "the run directory's config.json records them fully resolved.",
                       epilog="exit status: 0 done, 1 stopped on a NaN/inf loss or gradient (the "
                       "last good checkpoint is kept), 2 bad arguments or inputs, 130 interrupted "
                       "by Ctrl-C or SIGTERM (a checkpoint is saved; --resume continues)")
    defaults = TrainConfig()
    for name, (typ, help_) in TRAIN_FLAGS.items():
        d = getattr(defaults, name)
        shown = NONE_MEANS[name] if d is None else ",".join(map(str, d)) if isinstance(d, tuple) \
            else d
        # default=None: a flag that was given is told apart from one left at its default
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"{help_} (default: {shown})")
    p.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=None,
                   help="feed one-hot labels to encoder and decoder (default: off)")
    p.add_argument("--pictures", action=argparse.BooleanOptionalAction, default=None,
                   help="write pictures at the end (default: on)")
    p.add_argument("--config", type=Path, help="TOML file of settings (keys as the flags, with _)")
    p.add_argument("--preset", metavar="NAME",
                   help="start from named settings, before --config and the flags (which win): "
                        "burda2015, the IWAE paper's 784-200-200-50 tanh model, batch 20, Adam "
                        "eps 1e-4, its 3280-epoch schedule (scale it with --schedule-scale), "
                        "IWAE K = 5000 (default: none)")
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default: runs/<data>-<seed>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory: delete every file an earlier minivae "
                        "run wrote there (other files stay)")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the run in RUN with the configuration saved there; only "
                        f"{' and '.join(RESUME_FLAGS)} may be given with it (--backend moves the "
                        "run to another backend, e.g. when its own cannot run here), any other "
                        "setting is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from minivae.config import from_preset
    from minivae.train import train

    flags = {k: getattr(args, k) for k in (*TRAIN_FLAGS, "conditional", "pictures")
             if getattr(args, k) is not None}
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in flags if k != "backend"]
        given += [f for f, v in (("--config", args.config), ("--out", args.out),
                                 ("--overwrite", args.overwrite), ("--preset", args.preset)) if v]
        if given:
            raise UsageError(f"--resume continues a run with its saved configuration: "
                             f"{', '.join(given)} cannot be given with it (only "
                             f"{' and '.join(RESUME_FLAGS)} can)")
        result = train(None, args.resume, resume=True, backend=args.backend,
                       progress=not args.no_progress)
        return EXIT_INTERRUPTED if result.interrupted else 0
    settings: dict = {}
    if args.config:
        try:
            settings = tomllib.loads(args.config.read_text())
        except FileNotFoundError:
            raise UsageError(f"--config {args.config}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"--config {args.config}: not valid TOML ({e})") from None
    settings |= flags
    config = from_preset(args.preset, settings)
    out = args.out or Path("runs") / f"{Path(config.data).stem}-{config.seed}"
    result = train(config, out, overwrite=args.overwrite, progress=not args.no_progress)
    return EXIT_INTERRUPTED if result.interrupted else 0


# ------------------------------------------------------------------------------------------------
# flag types: argparse turns ArgumentTypeError into "argument --flag: <message>"


def _int_at_least(low: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {s!r}")
        return v

    return parse


_positive_int = _int_at_least(1)
_seed = _int_at_least(0)


def _non_negative_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, metavar="RUN",
                   help="a run directory made by `minivae train` (it holds checkpoint.safetensors)")


def _picture_out(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", type=Path, metavar="PATH", help=f"PNG file to write (default: {default})")
    p.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")


# ------------------------------------------------------------------------------------------------
# sample, reconstruct, evaluate: a trained run


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="write a grid of samples from a trained run's prior",
                       description="Decode z ~ N(0, I) with a trained run's model and write the "
                       "decoder means as one PNG grid. The run's data set is loaded for its image "
                       "shape.")
    _run_arg(p)
    p.add_argument("--n", type=_positive_int, default=64, metavar="N",
                   help="number of samples (default: 64)")
    p.add_argument("--label", type=int, metavar="K",
                   help="class of every sample, conditional runs only (default: the columns "
                        "cycle through the classes)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the draws of z (default: 0)")
    _picture_out(p, "RUN/samples-S-N.png, or RUN/samples-S-N-labelK.png with --label")
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    print(commands.sample(args.run, n=args.n, label=args.label, seed=args.seed, out=args.out,
                          overwrite=args.overwrite))
    return 0


def _reconstruct_parser(sub) -> None:
    p = sub.add_parser("reconstruct", help="write test inputs above their reconstructions",
                       description="Encode the first N inputs of a trained run's test split (the "
                       "same split and binarisation as training's final evaluation) and write "
                       "them above their reconstructions, the decoder means at z = mu, as one "
                       "PNG.")
    _run_arg(p)
    p.add_argument("--n", type=_positive_int, default=16, metavar="N",
                   help="number of test inputs (default: 16)")
    _picture_out(p, "RUN/reconstructions-N.png")
    p.set_defaults(func=_reconstruct)


def _reconstruct(args) -> int:
    print(commands.reconstruct(args.run, n=args.n, out=args.out, overwrite=args.overwrite))
    return 0


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="test -ELBO and IWAE NLL of a trained run",
                       description="Estimate the test -ELBO and the negative log-likelihood "
                       "(importance weighted, K samples per example) of a trained run, in nats "
                       "per example with standard errors over the test examples. With the run's "
                       "seed and K, the numbers are those of its summary.json.")
    _run_arg(p)
    p.add_argument("--iwae-k", type=_positive_int, default=5000, metavar="K",
                   help="importance samples per test example (default: 5000)")
    p.add_argument("--batch-size", type=_positive_int, default=100, metavar="B",
                   help="test examples per IWAE batch (default: 100)")
    p.add_argument("--seed", type=_seed, default=None, metavar="S",
                   help="seed of the draws (default: the run's seed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    r = commands.evaluate(args.run, iwae_k=args.iwae_k, batch_size=args.batch_size, seed=args.seed)
    print(json.dumps(r, indent=2) if args.json else commands.evaluation_text(r))
    return 0


# ------------------------------------------------------------------------------------------------
# gradcheck, info, data


# The train flags that define a model; `minivae gradcheck` takes them too, with train's defaults.
MODEL_FLAGS = ("hidden", "z_dim", "activation", "likelihood", "sigma", "n_samples", "beta",
               "objective")


def _gradcheck_parser(sub) -> None:
    from minivae.config import TrainConfig

    p = sub.add_parser("gradcheck", help="check the VAE's gradients against finite differences",
                       description="Compare the gradient of the loss w.r.t. every parameter with "
                       "central finite differences, in float64, on a batch in the likelihood's "
                       "support with fixed noise eps. With RUN: the model a `minivae train` run "
                       "trained, at its trained weights, on a batch of its data. Without: a "
                       "fresh model built from train's model flags (same names, same defaults) "
                       "on random data of --x-dim dimensions. Prints one row per parameter (per "
                       "direction with --mode directional); exits 0 if every row passes, 1 if any "
                       "fails.")
    p.add_argument("run", type=Path, nargs="?", metavar="RUN",
                   help="a run directory made by `minivae train` (its model flags are then "
                        "refused: they come from the run)")
    defaults = TrainConfig()
    for name in MODEL_FLAGS:
        typ, help_ = TRAIN_FLAGS[name]
        d = getattr(defaults, name)
        shown = ",".join(map(str, d)) if isinstance(d, tuple) else d
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"{help_} (default: {shown})")
    p.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=None,
                   help=f"a conditional VAE with {commands.GRADCHECK_CLASSES} classes "
                        "(default: off)")
    p.add_argument("--x-dim", type=_positive_int, default=None, metavar="D",
                   help=f"data dimension, without RUN (default: {commands.GRADCHECK_X_DIM}, "
                        "the bundled digits')")
    p.add_argument("--batch-size", type=_positive_int, default=4, metavar="N",
                   help="examples in the checked batch (default: 4)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="seed of the weights (without RUN), data, labels and eps (default: 0)")
    p.add_argument("--mode", choices=("full", "directional"), default="full",
                   help=f"full: every element; directional: {commands.GRADCHECK_DIRECTIONS} "
                        "random directions through all parameters (default: full)")
    p.set_defaults(func=_gradcheck)


def _gradcheck(args) -> int:
    model = {k: getattr(args, k) for k in (*MODEL_FLAGS, "conditional", "x_dim")
             if getattr(args, k) is not None}
    common = {"batch_size": args.batch_size, "seed": args.seed, "mode": args.mode}
    if args.run is not None:
        if model:
            given = ", ".join(f"--{k.replace('_', '-')}" for k in model)
            raise UsageError(f"gradcheck RUN checks the run's own model: {given} cannot be given "
                             "with it (only --batch-size, --seed and --mode can)")
        result = commands.gradcheck_run(args.run, **common)
        from minivae.runs import read_checkpoint

        if read_checkpoint(args.run)[0].estimator == "dreg":
            print("note: the run trained with DReG, whose encoder gradient is that of a surrogate; "
                  "this checks the bound's exact gradient (the standard estimator)", file=sys.stderr)
    else:
        result = commands.gradcheck_model(**model, **common)
    print(result)
    return 0 if result.ok else 1


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, metavar="D",
                   help="where the MNIST-family files live (default: $MINIVAE_DATA, else a "
                        "per-user cache directory)")


def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="versions, BLAS, CPUs, backends and data sets",
                       description="Show the minivae, Python and numpy versions, the BLAS in use, "
                       "the CPU count, which backends (numpy, numba, numba-cuda, cupy) can be "
                       "imported and see a GPU, and the data directory with the data sets present.")
    _data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)


def _info(args) -> int:
    d = commands.info(args.data_dir)
    print(json.dumps(d, indent=2) if args.json else commands.info_text(d))
    return 0


def _data_parser(sub) -> None:
    from minivae.data import SOURCES

    p = sub.add_parser("data", help="list or download the built-in data sets",
                       description="List or download the built-in data sets.")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser,
                                metavar="{list,fetch}")
    p_list = data_sub.add_parser("list", help="show which data sets are present",
                                 description="Show the built-in data sets, whether each is present "
                                 "in the data directory, and where.")
    _data_dir_arg(p_list)
    p_list.set_defaults(func=_data_list)
    p_fetch = data_sub.add_parser("fetch", help="download a data set",
                                  description="Download the four IDX files of NAME into "
                                  "<data dir>/NAME/ and verify their SHA-256 sums; files already "
                                  "there and valid are kept. Without network, says which files to "
                                  "put where by hand.")
    p_fetch.add_argument("name", metavar="NAME", help=" | ".join(SOURCES))
    _data_dir_arg(p_fetch)
    p_fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_fetch.set_defaults(func=_data_fetch)


def _data_list(args) -> int:
    print(commands.datasets_text(commands.data_list(args.data_dir)))
    return 0


def _data_fetch(args) -> int:
    print(commands.data_fetch(args.name, args.data_dir, progress=not args.no_progress))
    return 0


# ------------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    import minivae

    parser = _Parser(prog="minivae", description="A Variational Autoencoder with hand-written "
                     "backprop in NumPy.", epilog="`minivae COMMAND --help` shows a command's flags.")
    parser.add_argument("--version", action="version", version=f"minivae {minivae.__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, title="commands",
                                metavar="COMMAND")
    for add in (_train_parser, _sample_parser, _reconstruct_parser, _evaluate_parser,
                _gradcheck_parser, _info_parser, _data_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module's docstring)."""
    from minivae.data import DataError
    from minivae.runs import RunError
    from minivae.train import NonFiniteError

    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # argparse would name the program, not the command, in this one message
            where = f"{args.command}: " if args.command else ""
            raise UsageError(f"{where}unrecognized arguments: {' '.join(unknown)}")
        if args.command is None:  # bare `minivae`: show the commands
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args.func(args)
    except (UsageError, DataError, RunError, ValueError) as e:
        return _die(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except NonFiniteError as e:
        print(f"minivae: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except OSError as e:
        return _die(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler (loading, evaluate, ...)
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
