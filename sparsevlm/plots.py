"""Figures shared by the command line and the notebooks: which visual tokens survive each pruning
step, drawn over the image the model saw, and accuracy against cost."""
from __future__ import annotations

import math

import numpy as np


def model_view(processor, pixel_values) -> np.ndarray:
    """The image as the vision tower saw it (resized, cropped), un-normalised to uint8 (H, W, 3).
    Shapes: pixel_values (3, H, W)."""
    ip = processor.image_processor
    x = pixel_values.detach().float().cpu().permute(1, 2, 0).numpy()
    x = x * np.array(ip.image_std) + np.array(ip.image_mean)
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def kept_masks(report, sample: int = 0) -> list[np.ndarray]:
    """Per pruning step, a bool vector over the original visual tokens: still present after it."""
    n = int(report.n_visual[sample])
    masks = []
    for step in report.steps:
        m = np.zeros(n, dtype=bool)
        m[step["kept"][sample]] = True
        masks.append(m)
    return masks


def draw_kept(image: np.ndarray, report, sample: int = 0, axes=None, title: str | None = None,
              grid: int | None = None):
    """One panel per pruning step: the image with the pruned patches dimmed and a grid over the
    patches. Recycled/merged tokens are counted in each panel's title. Returns the figure.
    `grid`: draw only the first grid × grid visual tokens (the whole-image view that LLaVA-NeXT and
    OneVision put before their high-resolution crops); default: all of them, as one square."""
    import matplotlib.pyplot as plt

    n = int(report.n_visual[sample])
    side = grid or int(math.isqrt(n))
    if side * side > n or grid is None and side * side != n:
        raise ValueError(f"{n} visual tokens do not form a square grid of side {side}; give `grid` for the "
                         f"whole-image view of a multi-view image")
    masks = [m[:side * side] for m in kept_masks(report, sample)]
    if axes is None:
        fig, axes = plt.subplots(1, len(masks) + 1, figsize=(2.4 * (len(masks) + 1), 2.6))
    fig = np.ravel(axes)[0].figure
    axes = np.ravel(axes)
    H, W = image.shape[:2]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, m, step in zip(axes[1:], masks, report.steps):
        grid = np.kron(m.reshape(side, side), np.ones((math.ceil(H / side), math.ceil(W / side))))[:H, :W]
        shown = (image * (0.25 + 0.75 * grid[..., None])).astype(np.uint8)
        ax.imshow(shown)
        extra = int(step["recycled"][sample]) if "recycled" in step else 0
        where = "input" if step["layer"] < 0 else f"layer {step['layer']}"
        count = f"{int(m.sum())}" if side * side == n else \
            f"{int(m.sum())} here, {len(step['kept'][sample])} of {n} in all"
        ax.set_title(f"after {where}: {count}" + (f" + {extra} merged" if extra else ""), fontsize=9)
    for ax in axes:
        ax.set_xticks(np.linspace(-0.5, W - 0.5, side + 1), minor=True)
        ax.set_yticks(np.linspace(-0.5, H - 0.5, side + 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.3, alpha=0.5)
        ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def method_family(name: str) -> str:
    """'sparsevlm 128' -> 'sparsevlm' (the row names used by the demo, bench and notebooks)."""
    return name.split(" ")[0]


def tradeoff(table, x: str, y: str = "acc_all", ax=None, xlabel: str | None = None):
    """Accuracy against a cost column, one line (and marker) per method family, dense as a star, with
    the 95 % intervals of `compare` as error bars when the table has them."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    data = table.reset_index().rename(columns={"index": "method"})
    data["family"] = data["method"].map(method_family)
    rest = data[data["family"] != "dense"]
    sns.lineplot(data=rest, x=x, y=y, hue="family", style="family", markers=True, ax=ax, sort=True)
    if y == "acc_all" and {"acc_low", "acc_high"} <= set(rest.columns):  # 95 % intervals
        ax.errorbar(rest[x], rest[y], yerr=[rest[y] - rest["acc_low"], rest["acc_high"] - rest[y]], fmt="none",
                    ecolor="grey", elinewidth=0.8, capsize=2, alpha=0.7)
    dense = data[data["family"] == "dense"]
    if len(dense):
        ax.scatter(dense[x], dense[y], marker="*", s=160, color="black", label="dense", zorder=3)
    ax.set_xlabel(xlabel or x.replace("_", " "))
    ax.set_ylabel("accuracy (95 % interval)" if y == "acc_all" else y)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
