"""`sparsevlm` command line."""
from __future__ import annotations

import argparse
import sys


def demo(args) -> int:
    """The main job. For now: every SparseVLM step once on the planted tensor example."""
    from .toy import walkthrough

    w = walkthrough(seed=args.seed)
    ex = w["example"]
    n_vis = int(ex["vis_mask"].sum())
    kept_objects = ex["objects"][w["kept"]]
    print(f"SparseVLM steps on a planted example ({n_vis} visual tokens, question about object {ex['target']})")
    print(f"1. raters:     text tokens {(w['rater_mask'][0].nonzero().flatten() - 1 - n_vis).tolist()} "
          f"of {int(ex['valid'].sum()) - 1 - n_vis}")
    top = w["scores"][0].topk(4).indices
    print(f"2. scores:     top visual tokens {top.tolist()} belong to objects {ex['objects'][top].tolist()}")
    print(f"3. keep count: rank {int(w['rank'])} -> keep {int(w['keep_n'])} of {n_vis}; "
          f"{int((kept_objects == ex['target']).sum())} of {int((ex['objects'] == ex['target']).sum())} "
          "target tokens kept")
    rec = w["recycled"]
    print(f"4. recycling:  {int((rec.assign >= 0).sum())} pruned tokens merged into {int(rec.valid.sum())} token(s)")
    print(f"5. gather:     sequence {ex['embeds'].shape[1]} -> {w['hidden'].shape[1]} tokens")
    print(f"6. equivalent: {w['equivalent_out'].item():.2f} visual tokens per layer (reference count), "
          f"{w['equivalent_in'].item():.2f} (by layer input), dense {n_vis}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsevlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the main demonstration on the embedded default")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic example (default 0)")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
