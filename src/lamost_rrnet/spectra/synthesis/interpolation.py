"""Keys cubic interpolation (a = -1/2) of model spectra at fractional pixels: the simulator's
RV shifts and resampling, and the sub-pixel template shifts of the RV fit."""

from __future__ import annotations

import numpy as np


def _keys_weights(t: np.ndarray) -> tuple[np.ndarray, ...]:
    t2 = t * t
    t3 = t2 * t
    return (
        -0.5 * t3 + t2 - 0.5 * t,
        1.5 * t3 - 2.5 * t2 + 1.0,
        -1.5 * t3 + 2.0 * t2 + 0.5 * t,
        0.5 * t3 - 0.5 * t2,
    )


def cubic_columns(model: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Keys (a = -1/2) cubic interpolation of every row of ``model`` at the same fractional
    column indices ``pos`` (clamped at the ends)."""
    i = np.floor(pos).astype(np.int64)
    weights = _keys_weights((pos - i).astype(np.float32))
    last = model.shape[1] - 1
    out = np.zeros((model.shape[0], pos.size), np.float32)
    for k, w in enumerate(weights):
        out += w[None, :] * model[:, np.clip(i + (k - 1), 0, last)]
    return out


def cubic_shift(model: np.ndarray, start: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``model`` sampled at ``start[row] + arange(n)``: a uniform shift per row."""
    i = np.rint(start).astype(np.int64)
    t = start - i
    windows = np.lib.stride_tricks.sliding_window_view(model, n, axis=1)
    rows = np.arange(model.shape[0])
    if not t.any():  # whole-pixel shifts (RV 0): no interpolation
        return windows[rows, i]
    i = np.floor(start).astype(np.int64)
    if i.min() < 1 or i.max() + n + 2 > model.shape[1]:
        raise ValueError("the shifted spectrum leaves the model grid (|RV| too large)")
    weights = _keys_weights((start - i).astype(np.float32)[:, None])
    out = np.zeros((model.shape[0], n), np.float32)
    for k, w in enumerate(weights):
        out += w * windows[rows, i + (k - 1)]
    return out
