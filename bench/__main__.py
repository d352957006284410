"""``python -m bench``: minivae's benchmarks. Results go under bench/results/<device>-<date>/."""

from __future__ import annotations

import argparse
import json
import sys

from bench import compare_torch, env, kernels, train_step


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
    a = sub.add_parser("all", help="kernels, then train")
    a.add_argument("--quick", action="store_true", help="the quick variants (about 5 minutes)")
    a.add_argument("--no-save", action="store_true", help="print only, write no results")
    c = sub.add_parser("compare", help="test -ELBO and IWAE NLL: minivae vs PyTorch, several seeds")
    c.add_argument("--data", default="digits", help="digits, or an MNIST-family name (IDX files)")
    c.add_argument("--data-dir", default=None, help="where the IDX files are")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    c.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    c.add_argument("--iwae-k", type=int, default=1000, help="importance samples for the NLL")
    c.add_argument("--no-save", action="store_true", help="print only, write no results")
    args = p.parse_args(argv)

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

    quick = " --quick" if getattr(args, "quick", False) else ""
    if args.command in ("kernels", "all"):
        names = args.backends.split(",") if getattr(args, "backends", None) else None
        res = kernels.run(args.quick, names, log=lambda s: print(s, file=sys.stderr))
        name = getattr(args, "name", "kernels")
        extra = (f" --backends {args.backends}" if getattr(args, "backends", None) else "") + (
            f" --name {name}" if name != "kernels" else "")
        _report(res, name, kernels.table(res), f"python -m bench kernels{quick}{extra}", args.no_save,
                plot=kernels.plot)
    if args.command in ("train", "all"):
        batches = tuple(int(b) for b in getattr(args, "batches", "128,1024").split(","))
        rounds, steps = (3, 10) if args.quick else (7, 20)
        res = train_step.run(batches, rounds=rounds, steps=steps)
        _report(res, "train", train_step.table(res), f"python -m bench train{quick}", args.no_save)
    return 0


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
