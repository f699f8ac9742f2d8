"""`sparsevlm` command line."""
from __future__ import annotations

import argparse
import sys


def demo(args) -> int:
    """The main job: the embedded model answers its held-out questions dense, with SparseVLM
    (rank mode and the presets scaled to it) and with random tokens at the same budgets."""
    import pandas as pd

    from . import RandomConfig, toy
    from .eval import compare

    model, processor = toy.load()
    records = toy.eval_split(limit=args.limit)
    configs = {"dense": None, "sparsevlm rank": toy.rank_config()}
    for n in args.presets:
        cfg = toy.preset(n)
        configs[f"sparsevlm {n}"] = cfg
        configs[f"random {n}"] = RandomConfig(pruning_layers=cfg.pruning_layers, schedule=cfg.schedule)
    table = compare(model, processor, records, configs, progress=not args.quiet)
    print(f"{len(records)} held-out questions, {toy.TOY_VISUAL} visual tokens per image, "
          f"presets scaled from LLaVA-1.5-7B's 576 tokens (see data/toy-llava/MODEL_CARD.md)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsevlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="dense vs SparseVLM vs random on the embedded model's held-out questions")
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions (default: all 800)")
    p.add_argument("--presets", type=int, nargs="+", default=[192, 128, 64], choices=[192, 128, 96, 64],
                   help="LLaVA-1.5 presets to scale to the toy model (default: 192 128 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
