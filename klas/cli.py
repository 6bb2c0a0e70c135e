"""The `klas` command: one subcommand per pipeline stage.

    klas extract --anchor SPEC [--anchor SPEC ...] --data PATH --out DIR
    klas eval-anchor SPEC --data PATH [--split test] [--json]

Errors in the user's input print one line saying what is wrong and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from klas.errors import KlasError

__all__ = ["main"]


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data root: folder with train/test sets (zip or class folders), or one image set")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--val-fraction", type=float, default=0.1, help="part of the training set held out as D_v")
    p.add_argument("--seed", type=int, default=0, help="seed of the D_t / D_v split")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_extract(args) -> int:
    from klas.extract import extract

    done = extract(
        args.anchor, args.data, args.out, splits=args.splits.split(","), batch_size=args.batch_size,
        dtype=args.dtype, device=args.device, shard_rows=args.shard_rows, val_fraction=args.val_fraction,
        seed=args.seed, limit=args.limit, num_workers=args.workers, progress=not args.quiet,
    )
    for (name, split), path in done.items():
        print(f"{name:>28s} {split:>5s}  {path}")
    return 0


def _cmd_eval_anchor(args) -> int:
    from klas.anchor_eval import evaluate_anchor

    result = evaluate_anchor(
        args.spec, args.data, split=args.split, batch_size=args.batch_size, device=args.device,
        limit=args.limit, num_workers=args.workers, val_fraction=args.val_fraction, seed=args.seed,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(f"{result.anchor}: top-1 {result.top1:.2f}% ({result.correct}/{result.total}) on {result.split}, "
              f"{result.gflops:.3f} GFLOPs/image")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klas", description="Choose where to stitch pretrained networks (KLAS).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="cache every block's pooled output for each anchor and split")
    p.add_argument("--anchor", action="append", required=True, help="anchor spec (repeat for several)")
    p.add_argument("--out", required=True, help="cache root; caches go to OUT/<anchor>/<split>")
    p.add_argument("--splits", default="train,val", help="comma-separated: train (D_t), val (D_v), test")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--shard-rows", type=int, default=4096, help="images per cache shard")
    _add_data_options(p)
    p.set_defaults(run=_cmd_extract)

    p = sub.add_parser("eval-anchor", help="top-1 accuracy of one anchor on a dataset split")
    p.add_argument("spec", help="anchor spec, e.g. cifar-resnet:20 or timm:deit_tiny_patch16_224")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_data_options(p)
    p.set_defaults(run=_cmd_eval_anchor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KlasError as e:
        print(f"klas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, IndexError) as e:
        print(f"klas {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
