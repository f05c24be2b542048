"""What a prepared data file holds: samples, images, tokens, the modality split and the token lengths
(`wings data stats`), with a histogram of the lengths per modality."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc

from .prepared import PreparedSource


@dataclass
class DataStats:
    """Counts of one prepared source (good samples only, except `bad_samples`).

    Attributes:
        source: the data file's name.
        samples, bad_samples: good and bad samples.
        image_samples, text_samples: good samples with at least one image / without.
        images: images over all good samples.
        tokens: tokens over all good samples (image tokens included); label_tokens: the trained ones.
        length: token length percentiles {"min", "p50", "p90", "p99", "max"} and "mean".
    """

    source: str
    samples: int
    bad_samples: int
    image_samples: int
    text_samples: int
    images: int
    tokens: int
    label_tokens: int
    length: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def data_stats(prepared: PreparedSource) -> tuple[DataStats, np.ndarray, np.ndarray]:
    """(stats, lengths [N], has_images [N]) of the good samples of `prepared`."""
    table = prepared.rows.data.table
    good = table.filter(pc.is_null(table.column("error")))
    lengths = good.column("length").to_numpy()
    n_images = good.column("n_images").to_numpy()
    spans = pc.list_flatten(good.column("label_spans")).to_numpy()  # each row's list is [start, end, ...]
    quantiles = np.percentile(lengths, [0, 50, 90, 99, 100]) if len(lengths) else np.zeros(5)
    stats = DataStats(
        source=prepared.path.name,
        samples=len(lengths),
        bad_samples=table.num_rows - len(lengths),
        image_samples=int((n_images > 0).sum()),
        text_samples=int((n_images == 0).sum()),
        images=int(n_images.sum()),
        tokens=int(lengths.sum()),
        label_tokens=int(spans[1::2].sum() - spans[0::2].sum()),
        length={**dict(zip(("min", "p50", "p90", "p99", "max"), map(float, quantiles))),
                "mean": float(lengths.mean()) if len(lengths) else 0.0},
    )
    return stats, lengths, n_images > 0


def plot_lengths(lengths: np.ndarray, has_images: np.ndarray, path: str | os.PathLike, title: str = "",
                 max_length: int | None = None) -> None:
    """A histogram of token lengths [N], image and text-only samples stacked, written to `path` (PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    top = max(int(lengths.max()) if len(lengths) else 1, max_length or 0)
    bins = np.linspace(0, top, 51)
    axes.hist([lengths[has_images], lengths[~has_images]], bins=bins, stacked=True,
              label=[f"with image ({int(has_images.sum())})", f"text-only ({int((~has_images).sum())})"])
    if max_length:
        axes.axvline(max_length, color="k", linestyle="--", linewidth=1, label=f"max_length {max_length}")
    axes.set_xlabel("tokens per sample (image tokens included)")
    axes.set_ylabel("samples")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
