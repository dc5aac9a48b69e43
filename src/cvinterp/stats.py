"""Estimates for the comparison table: a measured value with its 95% interval and its null.

Every measured claim reports an `estimate`: the value, a 95% percentile-bootstrap interval over
the units, images or targets the value averages (scipy's `bootstrap`, seeded, so the same run
gives the same interval), and, where the claim is "more than chance", the same quantity under a
null measured in the same run (random weights, shuffled labels, permuted units, other seeds).
`cvinterp.compare` turns an estimate and a claim's rule into pass, fail or inconclusive.

A claim over several models (or layers) gives one estimate per part; the weakest part decides
(`cvinterp.compare.decide`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _stats

#: Resamples of every bootstrap; 95% percentile intervals.
N_RESAMPLES = 2000
LEVEL = 0.95
#: The interval of a value whose spread cannot be measured (one image, one class).
UNKNOWN = (float("nan"), float("nan"))


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)] if x.ndim == 1 else x


def bootstrap(
    samples: Sequence | np.ndarray | tuple,
    statistic: Callable = np.mean,
    *,
    seed: int = 0,
    paired: bool = False,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of `statistic` over the samples.

    `samples` is one 1-D array (the statistic of one sample: a mean over units) or a tuple of
    arrays: independent groups resampled separately (a difference of two groups' means), or, with
    `paired=True`, arrays of one length resampled together (a correlation over units).
    `statistic` takes the arrays and an `axis` keyword, as scipy's bootstrap requires.
    Samples of equal values give the point interval [v, v] (no spread observed); a group of
    fewer than two values, or a bootstrap without a finite interval, gives (nan, nan): the
    spread is unknown, and `estimate` records it so (such a value cannot pass a claim).
    """
    data = samples if isinstance(samples, tuple) else (samples,)
    data = tuple(np.asarray(d, dtype=np.float64) for d in data)
    if not paired:
        data = tuple(_finite(d) for d in data)
    if min(len(d) for d in data) < 2:
        return UNKNOWN
    value = float(statistic(*data, axis=-1))
    if all(np.ptp(d) == 0 for d in data):
        return (value, value)
    res = _stats.bootstrap(
        data,
        statistic,
        n_resamples=N_RESAMPLES,
        confidence_level=LEVEL,
        method="percentile",
        paired=paired,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(lo) or np.isnan(hi):
        return UNKNOWN
    return (min(lo, value), max(hi, value))


def mean_difference(a, b, axis=-1):
    """mean(a) - mean(b): the statistic of two independent groups."""
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def spearman(x, y, axis=-1):
    """Spearman's rank correlation along `axis` (vectorised, for the paired bootstrap)."""
    rx = _stats.rankdata(x, axis=axis)
    ry = _stats.rankdata(y, axis=axis)
    return pearson(rx, ry, axis=axis)


def pearson(x, y, axis=-1):
    """Pearson's correlation along `axis`; 0 where one side is constant."""
    x = x - np.mean(x, axis=axis, keepdims=True)
    y = y - np.mean(y, axis=axis, keepdims=True)
    den = np.sqrt(np.sum(x * x, axis=axis) * np.sum(y * y, axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(x * y, axis=axis) / den
    return np.where(den > 0, r, 0.0)


def estimate(
    value: float,
    interval: tuple[float, float] | None = None,
    *,
    null: float | None = None,
    null_interval: tuple[float, float] | None = None,
    note: str | None = None,
) -> dict:
    """One measured quantity as the metrics JSON stores it.

    `interval` is None only where the value is exact (a count on a fixed set, a perplexity over
    a whole stream, a p-value, which carries its own uncertainty). An interval with a NaN end
    (`UNKNOWN`: one image, one class) is stored as `"spread": "unknown"`, and such a value is at
    best inconclusive. An infinite end (a quantity that may be unbounded, such as a context
    never reached on the grid) is stored as null: open on that side. `null` is the same quantity
    under the null of the claim, measured in the same run, and `null_interval` its spread (a
    bootstrap interval, or the range over seeds). `note` says what was left out of this part
    and why.
    """
    out: dict = {"value": float(value)}
    if interval is not None:
        lo, hi = (float(x) for x in interval)
        if np.isnan(lo) or np.isnan(hi):
            out["spread"] = "unknown"
        else:
            out["interval"] = [lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None]
    if null is not None:
        out["null"] = float(null)
        if null_interval is not None and not np.isnan(null_interval).any():
            out["null_interval"] = [float(null_interval[0]), float(null_interval[1])]
    if note:
        out["note"] = note
    return out


def interval_text(est: dict, fmt: str = "+.3f") -> str:
    """An estimate's interval for the `ours` text: "[lo, hi]" (an open end as +-inf),
    "(spread unknown)" or "(exact)"."""
    if est.get("spread") == "unknown":
        return "(spread unknown)"
    if "interval" not in est:
        return "(exact)"
    lo, hi = est["interval"]
    lo, hi = (-np.inf if lo is None else lo), (np.inf if hi is None else hi)
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def claim(
    parts: dict[str, dict],
    ours: str,
    conditions: str,
    *,
    left_out: dict[str, str] | None = None,
) -> dict:
    """A claim's entry in the metrics: one estimate per part (model or layer), the weakest
    decides. `left_out` names parts that could not be measured and why (they do not decide,
    and the reason shows in the table); with no part left, the claim is n/a."""
    left_out = dict(left_out or {})
    if not parts:
        why = "; ".join(f"{k}: {v}" for k, v in left_out.items()) or "nothing to measure"
        return {"na": why, "conditions": conditions}
    out = {"parts": parts, "ours": ours, "conditions": conditions}
    if left_out:
        out["left_out"] = left_out
    return out
