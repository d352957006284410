"""``python -m bench``: minivae's benchmarks. Results go under bench/results/<device>-<date>/."""

from __future__ import annotations

import argparse
import json
import sys

from bench import compare_torch, env, train_step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="training-step throughput vs PyTorch and the matmul peak")
    t.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    t.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    t.add_argument("--no-save", action="store_true", help="print only, write no results")
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
            out = env.results_dir(env.cpu_model())
            (out / f"compare-{args.data}.json").write_text(json.dumps(res, indent=2) + "\n")
            (out / f"compare-{args.data}.md").write_text(
                f"# minivae vs PyTorch training, {res['environment']['date']}\n\n"
                f"`python -m bench compare --data {args.data}`\n\n{text}\n")
        print(text)

    if args.command == "train":
        batches = tuple(int(b) for b in args.batches.split(","))
        rounds, steps = (3, 10) if args.quick else (7, 20)
        res = train_step.run(batches, rounds=rounds, steps=steps)
        res["environment"] = env.environment()
        text = train_step.table(res)
        if not args.no_save:
            out = env.results_dir(env.cpu_model())
            (out / "train.json").write_text(json.dumps(res, indent=2) + "\n")
            (out / "train.md").write_text(
                f"# Training step, {res['environment']['cpu']}, {res['environment']['date']}\n\n"
                f"`python -m bench train{' --quick' if args.quick else ''}`\n\n{text}\n")
            print(f"written: {out}/train.json, train.md", file=sys.stderr)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
