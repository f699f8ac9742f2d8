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


def qwen_frames(pixel_values, grid_thw, vision_config, mean, std) -> np.ndarray:
    """The frames a Qwen2/2.5-VL vision tower saw for one image or video: its flattened patches put
    back on the pixel grid and un-normalised, uint8 (T, H, W, 3), one frame per temporal patch (the
    first of the frames it groups). Shapes: pixel_values (t·h·w, 3·tp·p·p) of this image or video
    only; grid_thw (t, h, w) in patches. Inverts the patch order of transformers' Qwen2-VL image
    processor: (t, h/m, w/m, m, m, channel, tp, p, p) for merge size m and temporal patch tp."""
    t, h, w = (int(v) for v in grid_thw)
    p, m, tp = vision_config.patch_size, vision_config.spatial_merge_size, vision_config.temporal_patch_size
    x = pixel_values.detach().float().cpu().reshape(t, h // m, w // m, m, m, 3, tp, p, p)
    x = x.permute(0, 6, 1, 3, 7, 2, 4, 8, 5).reshape(t, tp, h * p, w * p, 3)[:, 0].numpy()
    x = x * np.array(std) + np.array(mean)
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def draw_kept(image: np.ndarray, report, sample: int = 0, axes=None, title: str | None = None, grid=None,
              lead: int = 0):
    """One panel per pruning step: the image with the pruned patches dimmed and a grid over the
    patches. Recycled/merged tokens are counted in each panel's title. Returns the figure.
    `image`: (H, W, 3), or (T, H, W, 3) for the frames of a video, drawn frame by frame (one row of
    panels per frame). `grid`: the side, or (rows, cols), of the grid of visual tokens over each
    image or frame; the first T · rows · cols visual tokens are drawn, in order (the whole-image view
    that LLaVA-NeXT and OneVision put before their high-resolution crops; a video's frames). Default:
    all the visual tokens, as one square over one image. `lead`: tokens before each frame's grid,
    not drawn (Video-LLaVA's [CLS] token per frame)."""
    import matplotlib.pyplot as plt

    frames = image[None] if image.ndim == 3 else image
    n = int(report.n_visual[sample])
    if grid is None:
        rows = cols = int(math.isqrt(n))
        if rows * rows != n:
            raise ValueError(f"{n} visual tokens do not form a square grid; give `grid` (the token grid of the "
                             f"whole-image view, or of each frame)")
    else:
        rows, cols = (grid, grid) if isinstance(grid, int) else grid
    per, T = rows * cols, len(frames)
    if T * (lead + per) > n:
        raise ValueError(f"{T} frame(s) of {f'{lead} + ' if lead else ''}{rows}×{cols} tokens need "
                         f"{T * (lead + per)} visual tokens; the sample has {n}")
    masks = kept_masks(report, sample)
    if axes is None:
        _, axes = plt.subplots(T, len(masks) + 1, figsize=(2.4 * (len(masks) + 1), 2.6 * T), squeeze=False)
    axes = np.asarray(axes).reshape(T, -1)
    fig = axes[0, 0].figure
    for f, frame in enumerate(frames):
        H, W = frame.shape[:2]
        axes[f, 0].imshow(frame)
        axes[f, 0].set_title("input" if T == 1 else f"frame {f}", fontsize=9)
        for ax, m, step in zip(axes[f, 1:], masks, report.steps):
            start = f * (lead + per) + lead
            here = m[start:start + per].reshape(rows, cols)
            cover = np.kron(here, np.ones((math.ceil(H / rows), math.ceil(W / cols))))[:H, :W]
            ax.imshow((frame * (0.25 + 0.75 * cover[..., None])).astype(np.uint8))
            extra = int(step["recycled"][sample]) if "recycled" in step else 0
            where = "input" if step["layer"] < 0 else f"layer {step['layer']}"
            # (a frame's panel is narrow: its count goes on a second line)
            count = f" {int(here.sum())}" if per == n else \
                f"\n{int(here.sum())} here, {len(step['kept'][sample])} of {n} in all"
            ax.set_title(f"after {where}:{count}" + (f" + {extra} merged" if extra else ""), fontsize=9)
        for ax in axes[f]:
            ax.set_xticks(np.linspace(-0.5, W - 0.5, cols + 1), minor=True)
            ax.set_yticks(np.linspace(-0.5, H - 0.5, rows + 1), minor=True)
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
    families = list(dict.fromkeys(rest["family"]))
    colors = (sns.color_palette("tab10") + [(0.0, 0.0, 0.5), (0.6, 0.6, 0.6)])[:len(families)]  # 12 distinct
    sns.lineplot(data=rest, x=x, y=y, hue="family", style="family", markers=True, ax=ax, sort=True,
                 palette=dict(zip(families, colors)) if len(families) <= len(colors) else None)
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
