"""Masked point metrics, horizon reports and probabilistic metrics.

Every function takes numpy arrays or torch tensors and gives the same numbers for
both: the array operations go through :class:`_Namespace`, a small shim that maps
the few calls that differ between numpy and torch. With torch inputs the result is
a 0-d tensor that keeps its graph (``masked_mae`` doubles as a training loss); with
numpy inputs it is a numpy float.

Conventions (BasicTS / DCRNN masked metrics, ``docs/protocol.md``):

- An entry counts ("is observed") when the given ``mask`` is nonzero there, the
  target is finite, and the target is not ``null_value`` (compared with absolute
  tolerance :data:`NULL_ATOL`, relative tolerance 0). For METR-LA / PEMS-style data
  pass ``null_value=0.0``: a target of 0.0 means missing.
- The mask is re-weighted by its mean and NaNs in the loss are zeroed:
  ``mean(nan_to_zero(err * m / mean(m)))``, which equals ``sum(err * m) / sum(m)``;
  the code computes the latter. A NaN *prediction* at an observed entry therefore
  adds zero error but still counts in the denominator, as in BasicTS;
  :class:`MetricAccumulator` warns when that happens.
- MAPE also skips targets with ``|y| <= eps`` (absolute, default :data:`MAPE_EPS`,
  the tolerance BasicTS uses) and is a fraction, not a percentage.
- RMSE is the square root of the global masked MSE, never a mean of batch RMSEs.
- When no entry is observed the result is NaN (not 0, not an exception): a score
  over nothing is undefined. As a training loss, skip batches without observed
  targets.

Shapes are anything that broadcasts; the usual layout is ``[batch, horizon, nodes,
channels]``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from llm_st.errors import ConfigError, DataError

logger = logging.getLogger("llm_st")

Array = TypeVar("Array", np.ndarray, torch.Tensor)

NULL_ATOL = 5e-5
"""Absolute tolerance for "target equals ``null_value``" (as BasicTS)."""

MAPE_EPS = 5e-5
"""Default absolute threshold below which ``|target|`` is skipped by MAPE (as BasicTS)."""


class _Namespace:
    """The array operations the metrics need, for numpy arrays or torch tensors alike.

    Operations spelled the same in numpy and torch (``abs``, ``where``, ``isnan``,
    ``moveaxis``, ``broadcast_to``, ...) pass through to the library; the methods
    below cover the ones that differ.
    """

    def __init__(self, like: Any):
        self.is_torch = isinstance(like, torch.Tensor)
        self.lib = torch if self.is_torch else np
        self.device = like.device if self.is_torch else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lib, name)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if self.is_torch:
            return torch.as_tensor(x, dtype=dtype, device=self.device)
        return np.asarray(x, dtype=dtype)

    def as_float(self, *arrays: Any, dtype: Any = None) -> list[Any]:
        """Convert to this library and one floating dtype: ``dtype`` (a name such as
        ``"float64"``) or else the promoted one, at least float32."""
        arrays = [self.asarray(a) for a in arrays]
        if isinstance(dtype, str):
            dtype = getattr(self.lib, dtype)
        elif dtype is None:
            if self.is_torch:
                dtype = arrays[0].dtype
                for a in arrays[1:]:
                    dtype = torch.promote_types(dtype, a.dtype)
                if not dtype.is_floating_point:
                    dtype = torch.get_default_dtype()
                elif dtype in (torch.float16, torch.bfloat16):
                    dtype = torch.float32
            else:
                dtype = np.result_type(*arrays)
                if not np.issubdtype(dtype, np.floating):
                    dtype = np.float64
                elif dtype == np.float16:
                    dtype = np.float32
        return [self.asarray(a, dtype) for a in arrays]

    def broadcast_arrays(self, *arrays: Any) -> list[Any]:
        if self.is_torch:
            return list(torch.broadcast_tensors(*arrays))
        return list(np.broadcast_arrays(*arrays))

    def sum(self, x: Any, axis: int | tuple[int, ...] | None = None) -> Any:
        if axis == ():
            return x  # torch.sum(dim=()) would reduce every axis
        if self.is_torch:
            return x.sum() if axis is None else torch.sum(x, dim=axis)
        return np.sum(x, axis=axis)

    def sort(self, x: Any, axis: int) -> Any:
        if self.is_torch:
            return torch.sort(x, dim=axis).values
        return np.sort(x, axis=axis)

    def isclose(self, x: Any, value: float, atol: float) -> Any:
        if self.is_torch:
            return torch.isclose(x, torch.full_like(x, value), rtol=0.0, atol=atol)
        return np.isclose(x, value, rtol=0.0, atol=atol)

    def ratio(self, total: Any, count: Any) -> Any:
        """``total / count``, NaN where ``count`` is 0; a numpy scalar for 0-d numpy input."""
        has = count > 0
        out = self.where(has, total / self.where(has, count, 1), math.nan)
        return out if self.is_torch else out[()]

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if self.is_torch else np.asarray(x)


def _valid_mask(xp: _Namespace, target: Any, mask: Any, null_value: float | None) -> Any:
    """Boolean "observed" mask: ``mask != 0`` and finite target and target != ``null_value``."""
    valid = xp.isfinite(target)
    if null_value is not None and not math.isnan(null_value):
        valid = valid & ~xp.isclose(target, float(null_value), NULL_ATOL)
    if mask is not None:
        valid = valid & (xp.asarray(mask) != 0)
    return valid


def _prepare(
    pred: Any, target: Any, mask: Any, null_value: float | None, dtype: Any = None
) -> tuple[_Namespace, Any, Any, Any]:
    """Convert to pred's library and a float dtype; return ``(xp, pred, target, valid)``,
    all broadcast to one shape."""
    xp = _Namespace(pred)
    pred, target = xp.as_float(pred, target, dtype=dtype)
    valid = _valid_mask(xp, target, mask, null_value)
    pred, target, valid = xp.broadcast_arrays(pred, target, valid)
    return xp, pred, target, valid


def _error_sum(
    xp: _Namespace,
    pred: Any,
    target: Any,
    valid: Any,
    kind: str,
    axes: tuple[int, ...] | None = None,
    eps: float = MAPE_EPS,
) -> tuple[Any, Any]:
    """Sum of masked elementwise errors and the number of entries counted, over ``axes``.

    ``kind`` is ``"abs"`` (|e|), ``"sq"`` (e^2) or ``"ape"`` (|e| / |y|, which also
    skips |y| <= eps).
    """
    # Masked targets are replaced before subtracting so that NaN/inf there reach
    # neither the sum nor, through torch.where's backward, the gradient.
    target = xp.where(valid, target, 0.0)
    err = xp.abs(pred - target)
    if kind == "sq":
        err = err * err
    elif kind == "ape":
        valid = valid & (xp.abs(target) > eps)
        err = err / xp.where(valid, xp.abs(target), 1.0)
    err = xp.where(valid & ~xp.isnan(err), err, 0.0)
    return xp.sum(err, axes), xp.sum(valid, axes)


def masked_mae(pred: Array, target: Array, mask: Any = None, null_value: float | None = None):
    """Masked mean absolute error.

    Parameters
    ----------
    pred, target : array or tensor, broadcastable (e.g. ``[B, H, N, C]``)
    mask : array or tensor, optional
        Broadcastable to the same shape; nonzero marks an observed entry.
    null_value : float, optional
        Target value that means "missing" (0.0 for METR-LA / PEMS data).

    Returns
    -------
    0-d tensor (differentiable) or numpy float; NaN when nothing is observed.
    """
    xp, pred, target, valid = _prepare(pred, target, mask, null_value)
    return xp.ratio(*_error_sum(xp, pred, target, valid, "abs"))


def masked_mse(pred: Array, target: Array, mask: Any = None, null_value: float | None = None):
    """Masked mean squared error; arguments and result as :func:`masked_mae`."""
    xp, pred, target, valid = _prepare(pred, target, mask, null_value)
    return xp.ratio(*_error_sum(xp, pred, target, valid, "sq"))


def masked_rmse(pred: Array, target: Array, mask: Any = None, null_value: float | None = None):
    """Square root of the global :func:`masked_mse` (not a mean of per-batch RMSEs)."""
    xp = _Namespace(pred)
    return xp.sqrt(masked_mse(pred, target, mask, null_value))


def masked_mape(
    pred: Array,
    target: Array,
    mask: Any = None,
    null_value: float | None = None,
    eps: float = MAPE_EPS,
):
    """Masked mean absolute percentage error, as a fraction (multiply by 100 for %).

    Targets with ``|y| <= eps`` (absolute) are skipped as well as unobserved ones;
    other arguments and the result as :func:`masked_mae`.
    """
    xp, pred, target, valid = _prepare(pred, target, mask, null_value)
    return xp.ratio(*_error_sum(xp, pred, target, valid, "ape", eps=eps))


def mae(pred: Array, target: Array):
    """Mean absolute error (long-term series protocol, normalized scale); NaN targets skipped."""
    return masked_mae(pred, target)


def mse(pred: Array, target: Array):
    """Mean squared error (long-term series protocol, normalized scale); NaN targets skipped."""
    return masked_mse(pred, target)


_ROWS = ("abs", "sq", "ape", "count", "mape_count")


class MetricAccumulator:
    """Streaming MAE / MSE / RMSE / MAPE per horizon step over many batches.

    Keeps, per horizon step, the sums of masked absolute error, squared error and
    absolute percentage error and the two entry counts (float64), so the final
    numbers equal those computed on the concatenation of all batches, without
    holding the split in memory.

    Parameters
    ----------
    null_value : float, optional
        Target value meaning "missing", as in :func:`masked_mae`.
    horizons : sequence of int
        Reported horizon steps, 1-based (3 is index 2 on the horizon axis). Steps
        beyond the forecast length are left out of the report.
    axis : int
        Horizon axis of the batches (1 for ``[B, H, N, C]``).
    mape_eps : float
        As ``eps`` in :func:`masked_mape`.

    Attributes
    ----------
    totals : numpy.ndarray or None
        ``[5, H]`` float64 sums, rows ``abs, sq, ape, count, mape_count``; None
        before the first batch. Several processes can add theirs (see :meth:`merge`).
    nan_predictions : int
        NaN predictions met at observed entries (they count as zero error).
    """

    def __init__(
        self,
        null_value: float | None = None,
        horizons: Sequence[int] = (3, 6, 12),
        axis: int = 1,
        mape_eps: float = MAPE_EPS,
    ):
        bad = [h for h in horizons if isinstance(h, bool) or not isinstance(h, int) or h < 1]
        if bad:
            raise ConfigError(
                f"reported horizons must be 1-based positive integers, got {bad}",
                "pass steps such as (3, 6, 12); horizon 1 is the first forecast step",
            )
        self.null_value = null_value
        self.horizons = tuple(horizons)
        self.axis = axis
        self.mape_eps = mape_eps
        self.totals: np.ndarray | None = None
        self.nan_predictions = 0

    def update(self, pred: Any, target: Any, mask: Any = None) -> None:
        """Add one batch; ``pred``, ``target`` and ``mask`` as in :func:`masked_mae`."""
        if isinstance(pred, torch.Tensor):
            pred = pred.detach()
        xp, pred, target, valid = _prepare(pred, target, mask, self.null_value, dtype="float64")
        if pred.ndim == 0:
            raise DataError("metric batch is a scalar", "pass predictions with a horizon axis")
        axis = self.axis % pred.ndim
        axes = tuple(i for i in range(pred.ndim) if i != axis)
        abs_sum, count = _error_sum(xp, pred, target, valid, "abs", axes)
        sq_sum, _ = _error_sum(xp, pred, target, valid, "sq", axes)
        ape_sum, mape_count = _error_sum(xp, pred, target, valid, "ape", axes, self.mape_eps)
        rows = [abs_sum, sq_sum, ape_sum, count, mape_count]
        batch = np.stack([xp.to_numpy(r).astype(np.float64) for r in rows])
        self._add(batch, int(xp.to_numpy(xp.sum(valid & xp.isnan(pred)))))

    def merge(self, other: MetricAccumulator) -> None:
        """Add the sums of another accumulator (e.g. from another process)."""
        if other.totals is not None:
            self._add(other.totals, other.nan_predictions)

    def _add(self, totals: np.ndarray, nan_predictions: int) -> None:
        if self.totals is None:
            self.totals = totals.copy()
        elif self.totals.shape != totals.shape:
            raise DataError(
                f"batch has {totals.shape[1]} horizon steps, earlier batches had "
                f"{self.totals.shape[1]}",
                "evaluate forecasts of one length per accumulator (or call reset())",
            )
        else:
            self.totals += totals
        self.nan_predictions += nan_predictions

    def reset(self) -> None:
        """Forget all batches."""
        self.totals = None
        self.nan_predictions = 0

    def compute(self) -> dict[str, dict[str, float]]:
        """Metrics per reported horizon and over all steps.

        Returns
        -------
        dict
            ``{"h3": {"mae", "mse", "rmse", "mape"}, ..., "avg": {...}}``: one entry
            per reported horizon within the forecast length, keyed ``h<step>``, and
            ``"avg"``, the masked metrics over all horizon steps together (RMSE the
            root of the global MSE). Values are floats, NaN where nothing was observed.
        """
        if self.totals is None:
            raise DataError("no batches were accumulated", "call update() before compute()")
        if self.nan_predictions:
            warnings.warn(
                f"{self.nan_predictions} predictions at observed targets were NaN; they "
                "count as zero error (BasicTS convention), so the metrics look better than "
                "the model is: find where the model produces NaN",
                stacklevel=2,
            )
        steps = self.totals.shape[1]
        skipped = [h for h in self.horizons if h > steps]
        if skipped:
            logger.debug("horizons %s exceed the forecast length %d; not reported", skipped, steps)
        report = {f"h{h}": _summarize(self.totals[:, h - 1]) for h in self.horizons if h <= steps}
        report["avg"] = _summarize(self.totals.sum(axis=1))
        return report


def _summarize(sums: np.ndarray) -> dict[str, float]:
    """Metrics from one column of :attr:`MetricAccumulator.totals`."""
    abs_sum, sq_sum, ape_sum, count, mape_count = (float(v) for v in sums)
    mse_value = sq_sum / count if count else math.nan
    return {
        "mae": abs_sum / count if count else math.nan,
        "mse": mse_value,
        "rmse": math.sqrt(mse_value),
        "mape": ape_sum / mape_count if mape_count else math.nan,
    }


def horizon_metrics(
    pred: Any,
    target: Any,
    mask: Any = None,
    null_value: float | None = None,
    horizons: Sequence[int] = (3, 6, 12),
    axis: int = 1,
    mape_eps: float = MAPE_EPS,
) -> dict[str, dict[str, float]]:
    """MAE / MSE / RMSE / MAPE at each reported horizon step and over all steps.

    Parameters
    ----------
    pred, target : array or tensor, e.g. ``[B, H, N, C]``
    mask, null_value : as in :func:`masked_mae`
    horizons : 1-based steps to report (horizon 3 is index 2 on ``axis``); steps
        beyond the forecast length are skipped.
    axis : horizon axis.
    mape_eps : as ``eps`` in :func:`masked_mape`.

    Returns
    -------
    dict
        As :meth:`MetricAccumulator.compute`, e.g. ``result["h12"]["mae"]`` and
        ``result["avg"]["rmse"]``.
    """
    acc = MetricAccumulator(null_value=null_value, horizons=horizons, axis=axis, mape_eps=mape_eps)
    acc.update(pred, target, mask)
    return acc.compute()


def crps_from_samples(
    samples: Array,
    target: Array,
    mask: Any = None,
    null_value: float | None = None,
    sample_axis: int = 0,
):
    """Masked mean CRPS of a sample forecast.

    Per entry, the energy form over the empirical distribution of the ``S`` samples

        CRPS = E|X - y| - 0.5 E|X - X'| = mean_i |x_i - y| - 1/(2 S^2) sum_{i,j} |x_i - x_j|,

    where the pair term is computed exactly from the sorted samples
    ``x_(1) <= ... <= x_(S)`` as ``sum_{i,j} |x_i - x_j| = 2 sum_k (2k - S - 1) x_(k)``
    (O(S log S) time, O(S) memory per entry). A point mass (all samples equal) gives
    the absolute error. The result is averaged over observed entries as in
    :func:`masked_mae`.

    Parameters
    ----------
    samples : array or tensor, ``[S, ...]`` (samples on ``sample_axis``)
    target : array or tensor broadcastable to ``samples`` without its sample axis
    mask, null_value : as in :func:`masked_mae`
    sample_axis : int

    Returns
    -------
    0-d tensor or numpy float; NaN when nothing is observed.
    """
    xp = _Namespace(samples)
    x, y = xp.as_float(samples, target)
    x = xp.moveaxis(x, sample_axis, 0)
    num_samples = x.shape[0]
    valid = _valid_mask(xp, y, mask, null_value)
    _, y, valid = xp.broadcast_arrays(x[0], y, valid)
    x = xp.broadcast_to(x, (num_samples, *y.shape))
    y = xp.where(valid, y, 0.0)
    spread = xp.sum(xp.abs(x - y), 0) / num_samples
    ranks = np.arange(1, num_samples + 1)
    weights = xp.asarray(2 * ranks - num_samples - 1, dtype=x.dtype)
    weights = weights.reshape((num_samples,) + (1,) * y.ndim)
    pair = 2 * xp.sum(weights * xp.sort(x, 0), 0) / num_samples**2
    crps = spread - 0.5 * pair
    crps = xp.where(valid & ~xp.isnan(crps), crps, 0.0)
    return xp.ratio(xp.sum(crps), xp.sum(valid))


def _check_quantiles(quantiles: Sequence[float]) -> np.ndarray:
    levels = np.asarray(quantiles, dtype=np.float64)
    if levels.ndim != 1 or len(levels) == 0 or np.any((levels <= 0) | (levels >= 1)):
        raise ConfigError(
            f"quantile levels must be a non-empty list of numbers in (0, 1), got {quantiles}",
            "pass levels such as (0.1, 0.5, 0.9)",
        )
    return levels


def quantiles_from_samples(samples: Array, quantiles: Sequence[float], sample_axis: int = 0):
    """Empirical quantiles of samples, linear interpolation (``numpy.quantile``'s default).

    Parameters
    ----------
    samples : array or tensor, ``[S, ...]`` (samples on ``sample_axis``)
    quantiles : sequence of Q levels in (0, 1)

    Returns
    -------
    array or tensor ``[..., Q]``: the sample axis removed, quantile levels last (the
    layout :func:`weighted_quantile_loss` and Chronos' ``predict_quantiles`` use).
    """
    levels = _check_quantiles(quantiles)
    xp = _Namespace(samples)
    (x,) = xp.as_float(samples)
    x = xp.sort(xp.moveaxis(x, sample_axis, -1), -1)
    position = levels * (x.shape[-1] - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, x.shape[-1] - 1)
    below, above = x[..., xp.asarray(low)], x[..., xp.asarray(high)]
    return below + (above - below) * xp.asarray(position - low, dtype=x.dtype)


def weighted_quantile_loss(
    quantile_preds: Array,
    target: Array,
    quantiles: Sequence[float],
    mask: Any = None,
    null_value: float | None = None,
    quantile_axis: int = -1,
):
    """Mean weighted quantile loss (WQL) as in GluonTS and Chronos.

    With the pinball loss ``rho_q(y, yhat) = max(q (y - yhat), (q - 1)(y - yhat))``
    and sums over the observed entries ``t``::

        WQL = 1/Q sum_q [ 2 sum_t rho_q(y_t, yhat_{q,t}) / sum_t |y_t| ]

    (GluonTS ``mean_wQuantileLoss``; Chronos' "WQL").

    Parameters
    ----------
    quantile_preds : array or tensor ``[..., Q]`` (levels on ``quantile_axis``)
    target : array or tensor broadcastable to ``quantile_preds`` without the level axis
    quantiles : sequence of the Q levels in (0, 1), in the order of ``quantile_axis``
    mask, null_value : as in :func:`masked_mae`
    quantile_axis : int

    Returns
    -------
    0-d tensor or numpy float; NaN when nothing is observed or all observed |y| are 0.
    """
    levels = _check_quantiles(quantiles)
    xp = _Namespace(quantile_preds)
    qp, y = xp.as_float(quantile_preds, target)
    qp = xp.moveaxis(qp, quantile_axis, -1)
    if qp.shape[-1] != len(levels):
        raise DataError(
            f"quantile_preds has {qp.shape[-1]} levels on axis {quantile_axis} but "
            f"{len(levels)} quantiles were given",
            "pass one level per prediction along quantile_axis",
        )
    valid = _valid_mask(xp, y, mask, null_value)
    _, y, valid = xp.broadcast_arrays(qp[..., 0], y, valid)
    y = xp.where(valid, y, 0.0)
    q = xp.asarray(levels, dtype=qp.dtype)
    diff = y[..., None] - qp
    pinball = xp.where(diff >= 0, q * diff, (q - 1) * diff)
    pinball = xp.where(valid[..., None] & ~xp.isnan(pinball), pinball, 0.0)
    return xp.ratio(2 * xp.sum(pinball) / len(levels), xp.sum(xp.abs(y)))


# ------------------------------------------------------------------ detection (numpy)
def _flat_scores(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` (float64) and ``labels`` (bool) flattened, NaN scores dropped."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise DataError(
            f"{s.size} scores for {y.size} labels",
            "pass one score per labelled item (same shape)",
        )
    keep = ~np.isnan(s)
    return s[keep], y[keep]


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` (higher = more anomalous) against ``labels``.

    The Mann-Whitney form: the probability that a random positive scores above a random
    negative, ties counting one half (average ranks), so it equals scikit-learn's
    ``roc_auc_score``. NaN scores are left out; NaN when there is no positive or no
    negative.
    """
    s, y = _flat_scores(scores, labels)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    # average ranks (1-based) over runs of equal scores
    edges = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [len(s)]])
    ranks[order] = np.repeat((starts + stops + 1) / 2.0, stops - starts)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def precision_recall_f1(predicted: Any, labels: Any) -> dict[str, float]:
    """``{"precision", "recall", "f1"}`` of boolean predictions against boolean labels.

    A ratio over nothing is 0 (no predicted positives: precision 0; no positives:
    recall 0), as scikit-learn's ``zero_division=0``.
    """
    p = np.asarray(predicted).astype(bool).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if p.shape != y.shape:
        raise DataError(f"{p.size} predictions for {y.size} labels", "pass matching shapes")
    tp = float(np.sum(p & y))
    precision = tp / p.sum() if p.sum() else 0.0
    recall = tp / y.sum() if y.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def best_f1_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """``(threshold, f1)``: the threshold ``t`` (an item is flagged when its score
    ``>= t``) with the highest F1 over all distinct scores; the highest such ``t`` on a
    tie. NaN scores are left out. ``(inf, 0.0)`` when there is no positive label.
    """
    s, y = _flat_scores(scores, labels)
    if not y.any():
        return float("inf"), 0.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, len(s) + 1)
    last = np.concatenate([np.flatnonzero(np.diff(s)), [len(s) - 1]])  # end of each tie run
    tp, flagged = tp[last], flagged[last]
    f1 = 2 * tp / (flagged + y.sum())  # = 2 P R / (P + R)
    best = int(np.argmax(f1))  # first = highest threshold among equal F1
    return float(s[last[best]]), float(f1[best])
