"""``python -m bench``: minivae's benchmarks. Results go under bench/results/<device>-<date>/."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench import compare_torch, env, kernels, train_step
from bench.gpu_check import NO_GPU
from minivae import backends


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="training-step throughput vs PyTorch and the matmul peak")
    t.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    t.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    t.add_argument("--no-save", action="store_true", help="print only, write no results")
    k = sub.add_parser("kernels", help="every op on every available backend vs the ceilings")
    k.add_argument("--quick", action="store_true", help="training sizes and a few larger ones")
    k.add_argument("--backends", default=None, help="comma-separated (default: all available)")
    k.add_argument("--no-save", action="store_true", help="print only, write no results")
    k.add_argument("--name", default="kernels", help="file name of the results (default: kernels)")
    k.add_argument("--require-gpu", action="store_true",
                   help=f"exit {NO_GPU} at once, saying why, unless one of the backends runs on a GPU")
    lad = sub.add_parser("ladder", help="every version of every kernel op, validated and timed, rung by rung")
    lad.add_argument("--op", choices=kernels.FAMILIES, default=None, help="one op (default: all five)")
    lad.add_argument("--quick", action="store_true", help="the training sizes only")
    lad.add_argument("--no-save", action="store_true", help="print only, write no results")
    lad.add_argument("--require-gpu", action="store_true",
                     help=f"exit {NO_GPU} at once, saying why, unless CuPy sees a GPU")
    s = sub.add_parser("smoke", help="every GPU kernel launched once against the NumPy reference")
    s.add_argument("--cpu", action="store_true",
                   help="on the CUDA C emulator and Numba's simulator (NUMBA_ENABLE_CUDASIM=1) instead")
    s.add_argument("--out", default=None, help="also write the JSON lines to this file")
    g = sub.add_parser("gpu-train", help="the training step on the GPU vs PyTorch eager on CUDA")
    g.add_argument("--quick", action="store_true", help="fewer rounds")
    g.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    g.add_argument("--no-save", action="store_true", help="print only, write no results")
    a = sub.add_parser("all", help="kernels, ladder, then train")
    a.add_argument("--quick", action="store_true", help="the quick variants (about 5 minutes)")
    a.add_argument("--no-save", action="store_true", help="print only, write no results")
    c = sub.add_parser("compare", help="test -ELBO and IWAE NLL: minivae vs PyTorch, several seeds")
    c.add_argument("--data", default="digits", help="digits, or an MNIST-family name (IDX files)")
    c.add_argument("--data-dir", default=None, help="where the IDX files are")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    c.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    c.add_argument("--iwae-k", type=int, default=1000, help="importance samples for the NLL")
    c.add_argument("--no-save", action="store_true", help="print only, write no results")
    w = sub.add_parser("iwae", help="VAE vs IWAE at K = 1, 5, 50 with the paper's model: test NLL, "
                                    "active units, time per epoch (Burda et al. 2015, Table 1)")
    w.add_argument("--data", default="digits", help="digits, or an MNIST-family name (IDX files)")
    w.add_argument("--data-dir", default=None, help="where the IDX files are")
    w.add_argument("--scale", type=float, default=0.1,
                   help="the schedule's epochs per stage times this (1: the paper's 3280 epochs)")
    w.add_argument("--ks", default="1,5,50", help="comma-separated numbers of samples K")
    w.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    w.add_argument("--estimator", default="standard", help="standard | dreg: IWAE's gradient")
    w.add_argument("--iwae-k", type=int, default=5000, help="importance samples for the test NLL")
    w.add_argument("--backends", default="numba,numpy",
                   help="comma-separated; the first trains, the others are timed per epoch")
    w.add_argument("--no-save", action="store_true", help="print only, write no results")
    args = p.parse_args(argv)

    status = 0  # the exit status: that of the ladder ``all`` runs, if it failed
    if args.command == "iwae":
        from bench import iwae

        ks = tuple(int(k) for k in args.ks.split(","))
        seeds = tuple(int(s) for s in args.seeds.split(","))
        names = [b for b in args.backends.split(",") if backends.available().get(b) == "ok"]
        with _Stream(f"iwae-{args.data}", args.no_save) as stream:
            res = iwae.run(args.data, args.data_dir, args.scale, ks, seeds, args.estimator, args.iwae_k,
                           names, log=lambda s: print(s, file=sys.stderr), on_result=stream.write)
        command = (f"python -m bench iwae --data {args.data} --scale {args.scale} --ks {args.ks} "
                   f"--seeds {args.seeds} --estimator {args.estimator}")
        _report(res, f"iwae-{args.data}", iwae.table(res), command, args.no_save)

    if args.command == "compare":
        seeds = tuple(int(s) for s in args.seeds.split(","))
        res = compare_torch.run(args.data, seeds, args.data_dir, args.epochs, args.iwae_k,
                                log=lambda s: print(s, file=sys.stderr))
        res["environment"] = env.environment()
        text = compare_torch.table(res)
        if not args.no_save:
            out = env.results_dir(env.device_name())
            (out / f"compare-{args.data}.json").write_text(json.dumps(res, indent=2) + "\n")
            (out / f"compare-{args.data}.md").write_text(
                f"# minivae vs PyTorch training, {res['environment']['date']}\n\n"
                f"`python -m bench compare --data {args.data}`\n\n{text}\n")
        print(text)

    if args.command == "ladder":
        return _ladder(args)
    if args.command == "smoke":
        from bench import smoke

        return smoke.main(args.cpu, args.out)
    quick = " --quick" if getattr(args, "quick", False) else ""
    if args.command == "gpu-train":
        from bench import gpu_train

        reason = gpu_train.no_gpu_reason()
        if reason is not None:
            print(f"no GPU: {reason}")
            return NO_GPU
        batches = tuple(int(b) for b in args.batches.split(","))
        rounds, steps = (3, 10) if args.quick else (5, 20)
        with _Stream("gpu-train", args.no_save) as stream:
            res = gpu_train.run(batches, rounds=rounds, steps=steps, on_result=stream.write)
        _report(res, "gpu-train", gpu_train.table(res), f"python -m bench gpu-train{quick}", args.no_save)
    if args.command in ("kernels", "all"):
        names = args.backends.split(",") if getattr(args, "backends", None) else None
        if getattr(args, "require_gpu", False) and not any(
                backends.available().get(n) == "ok" and backends.get_backend(n).on_gpu
                for n in names or backends.GPU_BACKENDS):
            print(f"no GPU: {_gpu_reasons(names or backends.GPU_BACKENDS)}")
            return NO_GPU
        name = getattr(args, "name", "kernels")
        with _Stream(name, args.no_save) as stream:
            res = kernels.run(args.quick, names, log=lambda s: print(s, file=sys.stderr), on_row=stream.write)
        extra = (f" --backends {args.backends}" if getattr(args, "backends", None) else "") + (
            f" --name {name}" if name != "kernels" else "")
        _report(res, name, kernels.table(res), f"python -m bench kernels{quick}{extra}", args.no_save,
                plot=kernels.plot)
    if args.command == "all":
        # its own process: the ladder chooses Numba's CUDA simulator when there is no GPU, a choice
        # fixed for the process, and the training benchmark must not find numba-cuda there
        flags = (["--quick"] if args.quick else []) + (["--no-save"] if args.no_save else [])
        status = subprocess.call([sys.executable, "-m", "bench", "ladder", *flags])
        if status != 0:
            print(f"python -m bench ladder exited {status}", file=sys.stderr)
    if args.command in ("train", "all"):
        batches = tuple(int(b) for b in getattr(args, "batches", "128,1024").split(","))
        rounds, steps = (3, 10) if args.quick else (7, 20)
        res = train_step.run(batches, rounds=rounds, steps=steps)
        _report(res, "train", train_step.table(res), f"python -m bench train{quick}", args.no_save)
    return status


def _ladder(args) -> int:
    """``python -m bench ladder``: Numba's simulator chosen before anything imports numba.cuda."""
    from bench import ladder

    if args.require_gpu and ladder.cupy_on_a_gpu() is None:
        print(f"no GPU: {backends.available().get('cupy')}")
        return NO_GPU
    ladder.select_simulator()
    families = (args.op,) if args.op else kernels.FAMILIES
    command = "python -m bench ladder" + (f" --op {args.op}" if args.op else "") + (
        " --quick" if args.quick else "") + (" --require-gpu" if args.require_gpu else "")
    with _Stream("ladder", args.no_save) as stream:
        res = ladder.run(families, args.quick, log=lambda s: print(s, file=sys.stderr), on_row=stream.write)
    _report(res, "ladder", ladder.table(res), command, args.no_save, plot=ladder.plot)
    failed = ladder.failed(res)
    if failed:
        print(f"failed validation: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _gpu_reasons(names) -> str:
    status = backends.available()
    return "; ".join(f"{n}: {status.get(n, 'not a backend')}" for n in names)


class _Stream:
    """``<name>.jsonl`` in the results folder, one line per result as it is measured (a run cut
    short keeps what it finished); nothing with ``no_save``."""

    def __init__(self, name: str, no_save: bool):
        self._file = None if no_save else open(env.results_dir(env.device_name()) / f"{name}.jsonl", "w")

    def write(self, row: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


def _report(res: dict, name: str, text: str, command: str, no_save: bool, plot=None) -> None:
    """Print the table last; save JSON (every number), Markdown and plots with the environment."""
    res["environment"] = env.environment()
    res["command"] = command
    if not no_save:
        out = env.results_dir(env.device_name())
        (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / f"{name}.md").write_text(
            f"# {name}, {env.device_name()}, {res['environment']['date']}\n\n`{command}`\n\n{text}\n")
        if plot is not None:
            plot(res, out / f"{name}.png")
        print(f"written: {out}/{name}.*", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
