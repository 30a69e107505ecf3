"""The picture of a data-pruning choice: the score histogram (all samples, and those kept) and the
fraction kept per class, as a PNG (matplotlib, Agg canvas)."""

from __future__ import annotations

import numpy as np


def summary(scores, kept, y=None) -> dict:
    """A JSON-able summary: counts, the kept fraction overall and per class, score quantiles.

    >>> import numpy as np
    >>> from spa_keras.data_pruning.report import summary
    >>> summary(np.array([0.1, 0.5, 0.9, 0.3]), np.array([2, 1]), y=np.array([0, 0, 1, 1]))["kept_per_class"]
    {'0': 0.5, '1': 0.5}
    """
    scores = np.asarray(scores, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.int64)
    out = dict(samples=int(len(scores)), kept=int(len(kept)), kept_fraction=round(len(kept) / len(scores), 6),
               score_quantiles={q: float(np.quantile(scores, float(q))) for q in ("0", "0.25", "0.5", "0.75", "1")})
    if y is not None:
        y = np.asarray(y)
        mask = np.zeros(len(scores), bool)
        mask[kept] = True
        out["kept_per_class"] = {str(c): round(float(mask[y == c].mean()), 6) for c in np.unique(y)}
    return out


def save_png(path, scores, kept, y=None, title="data pruning", overwrite=False) -> str:
    """Write the report PNG at ``path`` atomically (see :func:`spa_keras.io.atomic_write`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from ..io import atomic_write

    scores = np.asarray(scores, dtype=np.float64)
    mask = np.zeros(len(scores), bool)
    mask[np.asarray(kept, dtype=np.int64)] = True
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=(3, 2)))
    bins = np.histogram_bin_edges(scores, bins=50)
    ax1.hist(scores, bins=bins, color="0.75", label=f"all ({len(scores)})")
    ax1.hist(scores[mask], bins=bins, color="tab:blue", alpha=0.8, label=f"kept ({int(mask.sum())})")
    ax1.set(title=f"{title}: score histogram", xlabel="score (higher = more important)", ylabel="samples")
    ax1.legend()
    if y is not None:
        y = np.asarray(y)
        classes = np.unique(y)
        frac = [mask[y == c].mean() for c in classes]
        ax2.bar([str(c) for c in classes], frac, color="tab:blue")
        ax2.axhline(mask.mean(), color="k", ls="--", lw=1, label=f"overall {mask.mean():.3f}")
        ax2.set(title="kept fraction per class", xlabel="class", ylabel="kept fraction", ylim=(0, 1))
        ax2.legend()
    else:
        ax2.axis("off")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=overwrite,
                        suffixes=(".png",))
