"""What every figure of the pipeline shares: matplotlib without a display, and one way to save a
PNG (atomically, without the matplotlib version in its metadata, so that equal figures are
byte-identical)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from grad2vae.atomic import atomic_path  # noqa: E402


def save_png(fig: plt.Figure, path: Path, dpi: int) -> None:
    """Write ``fig`` to ``path`` as PNG (tight bounding box) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
