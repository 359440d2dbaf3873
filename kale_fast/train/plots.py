"""Figures of a run (matplotlib, written as PNG): samples against held-out data, and the energy of 2-D runs."""
from pathlib import Path
from typing import Dict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def scatter_samples(samples: Dict[str, Tensor], path: Path) -> None:
    """One panel per named sample set (first two coordinates), on the axes of the first set (the data)."""
    reference = next(iter(samples.values()))[:, :2]
    margin = 0.1 * (reference.max(0).values - reference.min(0).values)
    low, high = reference.min(0).values - margin, reference.max(0).values + margin
    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4), sharex=True, sharey=True)
    for ax, (title, points) in zip(axes, samples.items()):
        points = points[:, :2].cpu().numpy()
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_xlim(low[0].item(), high[0].item())
        ax.set_ylim(low[1].item(), high[1].item())
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def energy_landscape(energy, data: Tensor, path: Path, resolution: int = 200) -> None:
    """exp(-E(x)) on a grid over the data's range (2-D data only)."""
    low, high = data.min(0).values - 0.5, data.max(0).values + 0.5
    xs = torch.linspace(low[0].item(), high[0].item(), resolution)
    ys = torch.linspace(low[1].item(), high[1].item(), resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).to(data.device)
    values = energy(grid).reshape(resolution, resolution)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(torch.exp(-(values - values.min())).cpu().numpy(), origin="lower",
                      extent=(xs[0].item(), xs[-1].item(), ys[0].item(), ys[-1].item()), cmap="viridis")
    ax.set_title("exp(-E(x)), rescaled")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def image_grid(images: Tensor, path: Path, columns: int = 10, title: str = "") -> None:
    """The first rows * columns images (N, C, H, W) in [-1, 1] as one grid."""
    count = min(len(images), columns * columns)
    images = ((images[:count].detach().cpu().float() + 1) / 2).clamp(0, 1)
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows + 0.4), squeeze=False)
    for ax, image in zip(axes.flat, images):
        ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if image.shape[0] == 1 else None,
                  vmin=0, vmax=1)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
