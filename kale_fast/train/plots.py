"""Figures of a run (matplotlib, written as PNG): the training curves, samples against held-out data (scatter
panels for vectors, image panels for images), and the energy of 2-D runs."""
import json
import math
import textwrap
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # not pyplot: no global state, no backend switched in the user's session
from torch import Tensor

from kale_fast._io import atomic_write
from kale_fast.metrics.image_scores import unit_range


def _save(fig, path: Path, dpi: int) -> None:
    """Write the figure to `path` as PNG atomically (a kill leaves the previous file or none, never half a PNG; a
    link planted at path is replaced, not followed)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _subplots(*grid, figsize: Tuple[float, float], **kwargs):
    """(figure, axes) as `pyplot.subplots` gives them, from a Figure on an Agg canvas (layout needs its renderer;
    freed with its last reference, nothing registered with pyplot)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kwargs)


def scatter_samples(samples: Dict[str, Tensor], path: Path, caption: Optional[str] = None) -> None:
    """One panel per named sample set (first two coordinates), on the axes of the first set (the data); titles
    may carry each set's scores, `caption` (e.g. the verdict) goes under the panels."""
    reference = next(iter(samples.values()))[:, :2]
    margin = 0.1 * (reference.max(0).values - reference.min(0).values)
    low, high = reference.min(0).values - margin, reference.max(0).values + margin
    fig, axes = _subplots(1, len(samples), figsize=(4 * len(samples), 4.4 + 0.5 * bool(caption)), sharex=True,
                             sharey=True, squeeze=False)
    for ax, (title, points) in zip(axes.flat, samples.items()):
        points = points[:, :2].cpu().numpy()
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set_title("\n".join(textwrap.wrap(title, 40)), fontsize=10)
        ax.set_xlim(low[0].item(), high[0].item())
        ax.set_ylim(low[1].item(), high[1].item())
        ax.set_aspect("equal")
    if caption:
        fig.text(0.5, 0.01, "\n".join(textwrap.wrap(caption, 40 * len(samples))), ha="center", va="bottom",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if caption else 0, 1, 1))
    _save(fig, path, dpi=120)


@torch.no_grad()
def energy_landscape(energy, data: Tensor, path: Path, resolution: int = 200, floor: Optional[float] = None) -> None:
    """-E(x), the log of the base's reweighting, on a grid over the data's range (2-D data only; the colour scale
    spans -E over the data, so the modes stand out), with the data points over it; where the energy
    sits at its clamp `floor` (no gradient there: nothing trained it) the grid is grey and hatched, outside the
    colour scale, so that a flat clamped corner does not read as a mode."""
    low, high = data.min(0).values - 0.5, data.max(0).values + 0.5
    xs = torch.linspace(low[0].item(), high[0].item(), resolution)
    ys = torch.linspace(low[1].item(), high[1].item(), resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).to(data.device)
    values = energy(grid).reshape(resolution, resolution).cpu()
    extent = (xs[0].item(), xs[-1].item(), ys[0].item(), ys[-1].item())
    clamped = (values <= floor + 1e-6) if floor is not None else torch.zeros_like(values, dtype=torch.bool)
    shown = (-values).masked_fill(clamped, math.nan)  # clamped cells: outside the colour scale
    at_data = -energy(data).cpu()  # the colour scale spans -E over the data (what reweights the base there)
    fig, ax = _subplots(figsize=(5, 4.4))
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(shown.numpy(), origin="lower", extent=extent, cmap=cmap, vmin=at_data.min().item() - 1.0,
                      vmax=at_data.max().item())
    points = data[:, :2].cpu().numpy()
    ax.scatter(points[:, 0], points[:, 1], s=1, c="white", alpha=0.35, label="held-out data")
    if bool(clamped.any()):
        clamped = clamped.double().numpy()
        ax.contourf(xs.numpy(), ys.numpy(), clamped, levels=[0.5, 1.5], colors="none", hatches=["////"])
        ax.contour(xs.numpy(), ys.numpy(), clamped, levels=[0.5], colors="lightgrey", linewidths=0.8)
        ax.plot([], [], color="lightgrey", label=f"clamped: E = {floor:g} (flat, untrained)")
    ax.set_title("-E(x): log of the base's reweighting exp(-E), with the data", fontsize=9)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.6)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    _save(fig, path, dpi=120)


def _tile(images: Tensor, columns: int) -> Tensor:
    """Images (N, C, H, W) in [-1, 1] as one (rows * (H + 1) - 1, columns * (W + 1) - 1, C) array in [0, 1], a
    one-pixel white gutter between images (an incomplete last row stays white)."""
    n, channels, height, width = images.shape
    rows = (n + columns - 1) // columns
    canvas = torch.ones(rows * (height + 1) - 1, columns * (width + 1) - 1, channels)
    images = unit_range(images.detach().cpu().float()).permute(0, 2, 3, 1)
    for i, image in enumerate(images):
        top, left = (i // columns) * (height + 1), (i % columns) * (width + 1)
        canvas[top:top + height, left:left + width] = image
    return canvas


def image_panels(panels: Dict[str, Tensor], path: Path, columns: int = 8, rows: int = 8) -> None:
    """One figure, one titled panel per named image set (N, C, H, W) in [-1, 1] (e.g. held-out data, base and
    GEBM samples), side by side: the first columns * rows images of each as a grid (fewer columns for fewer
    images, so that a panel stays about square)."""
    if not panels:
        raise ValueError("panels must name at least one image set")
    for title, images in panels.items():
        if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
            raise ValueError(f"panel {title!r}: expected images (N, C, H, W) with N >= 1 and C 1 or 3, got shape "
                             f"{tuple(images.shape)}")
    tiles = [_tile(images[: columns * rows], min(columns, math.ceil(math.sqrt(min(len(images), columns * rows)))))
             for images in panels.values()]
    height, width = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    panel_inches = 3.0 * width / max(height, width), 3.0 * height / max(height, width)
    fig, axes = _subplots(1, len(tiles), squeeze=False, figsize=(panel_inches[0] * len(tiles) + 0.1 * len(tiles),
                                                                     panel_inches[1] + 0.35))
    for ax, title, tile in zip(axes.flat, panels, tiles):
        ax.imshow(tile.squeeze(-1).numpy(), cmap="gray" if tile.shape[-1] == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (panel_inches[1] + 0.35), wspace=0.04)
    _save(fig, path, dpi=max(100, int(2 * height / panel_inches[1])))


# The training curves' panels: (title, [(metrics.jsonl key, legend label, sign)]); a panel is drawn when any of its
# keys was logged. The KALE estimate is minus the energy loss (the loop minimises -KALE).
_TRAINING_PANELS = (
    ("losses", [("energy_loss", "energy loss", 1), ("penalty", "gradient penalty", 1), ("base_loss", "base loss", 1)]),
    ("KALE estimate (minibatch)", [("energy_loss", "KALE = -energy loss", -1)]),
    ("log-partition A", [("log_partition", "A", 1)]),
    ("validation", [("validation_nll", "validation NLL (nats)", 1), ("validation_kale", "validation KALE", 1)]),
)


def training_curves(metrics_path: Path, path: Path) -> Optional[Path]:
    """training.png from a run's metrics.jsonl: the losses, the KALE estimate, the log-partition A and the
    validation score over rounds, one panel each (those that were logged). Returns path, or None when the file
    holds no metric line."""
    metrics_path = Path(metrics_path)
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.exists() else []
    lines = [line for line in lines if "round" in line]
    panels = [(title, curves) for title, curves in _TRAINING_PANELS if any(key in line for line in lines
                                                                            for key, _, _ in curves)]
    if not panels:
        return None
    fig, axes = _subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels):
        for key, label, sign in curves:
            points = [(line["round"], sign * line[key]) for line in lines if key in line]
            if points:
                rounds, values = zip(*points)
                ax.plot(rounds, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return Path(path)


def metric_vs_steps(steps: Sequence[int], curves: Dict[str, Sequence[float]], path: Path, metric: str,
                    chosen: Tuple[str, int], errors: Optional[Dict[str, Sequence[float]]] = None) -> None:
    """The sample metric (named by `metric`) against MCMC steps, one line per sampler (the paper's FID-vs-steps
    figure), with +-1 standard error bars where `errors` gives them; steps 0 are the base samples; the
    (sampler, steps) pair chosen on validation data is circled."""
    fig, ax = _subplots(figsize=(6, 4.4))
    for name, values in curves.items():
        ax.errorbar(steps, values, yerr=None if errors is None else errors[name], marker="o", markersize=3,
                    capsize=2, label=name)
    name, chosen_steps = chosen
    ax.scatter([chosen_steps], [curves[name][list(steps).index(chosen_steps)]], s=120, facecolors="none",
               edgecolors="black", zorder=3, label=f"chosen: {name}, {chosen_steps} steps")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xticks(list(steps), [str(k) for k in steps])
    ax.set_xlabel("MCMC steps (0: base samples)")
    ax.set_ylabel("\n".join(textwrap.wrap(f"{metric} on validation data", 36)), fontsize=9)
    if errors is not None:
        ax.set_title("bars: +-1 standard error", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=120)
