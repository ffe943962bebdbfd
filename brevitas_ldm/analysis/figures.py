"""Pictures a person would rather look at than tables: sample grids and SQNR curves (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from brevitas_ldm.io import write_bytes_atomic


def save_figure(fig, path: Path) -> None:
    """Save a PNG atomically (rendered to memory, then one rename)."""

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())


def _to_display(image: torch.Tensor):
    image = image.detach().float().clamp(0, 1)
    return image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()


def sample_grid(images_by_row: Sequence[torch.Tensor], row_labels: Sequence[str], path: Path, title: str = "",
                columns: int = 10) -> None:
    """One row per label, up to ``columns`` images each; images (N, C, H, W) in [0, 1]."""
    rows = len(images_by_row)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.85 + 0.4), squeeze=False)
    for r, (images, label) in enumerate(zip(images_by_row, row_labels)):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(_to_display(images[c]), cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def grid_by_label(images: torch.Tensor, labels: Sequence[int | None], path: Path, title: str = "",
                  columns: int = 10, class_names: Sequence[str] | None = None) -> None:
    """Sample grid with one row per class, named by ``class_names`` ("digit N" without them), or one row of
    everything when labels are unknown."""
    known = sorted({label for label in labels if label is not None})
    if not known:
        sample_grid([images[:columns]], ["samples"], path, title, columns)
        return
    rows = [images[[i for i, label in enumerate(labels) if label == digit]] for digit in known]
    names = [class_names[d] if class_names is not None else f"digit {d}" for d in known]
    sample_grid(rows, names, path, title, columns)


def comparison_grid(images_by_config: dict[str, torch.Tensor], path: Path, title: str = "", columns: int = 10) -> None:
    """One row per configuration (FP first), same seeds in each column."""
    sample_grid(list(images_by_config.values()), list(images_by_config), path, title, columns)


def line_plot(series: dict[str, Sequence[float]], path: Path, title: str, xlabel: str, ylabel: str,
              xticklabels: Sequence[str] | None = None) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * max(len(v) for v in series.values())), 3.6))
    for name, values in series.items():
        finite = [v if v != float("inf") else float("nan") for v in values]
        ax.plot(range(len(finite)), finite, marker="o", label=name)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)))
        ax.set_xticklabels(xticklabels, rotation=45, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def training_curve(losses: Sequence[float], path: Path, title: str, window: int = 25) -> None:
    """A loss per training step, as faint points plus its running mean over ``window`` steps, on a log scale: one
    step's loss depends on which recorded call it drew (early sampling steps cost ten times more), so only the
    running mean shows the trend. Fixed size, whatever the number of steps."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    values = torch.tensor([float(v) for v in losses], dtype=torch.float64)
    ax.plot(range(len(values)), values.numpy(), ".", markersize=2, alpha=0.35, label="per step")
    if len(values) >= window:
        running = values.unfold(0, window, 1).mean(dim=1).numpy()
        ax.plot(range(window - 1, len(values)), running, linewidth=2, label=f"running mean ({window} steps)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE vs the float output")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)
