"""Numeric-column statistics of the training split (pure numpy; no TensorFlow).

The preprocessing graph imputes a missing value (NaN) with the column's training mean and then standardises
with the training mean and standard deviation, so an imputed value becomes exactly 0 after standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MIN_STD = 1e-6
"""A column whose training values (almost) never vary is scaled by 1 instead of by ~0 (no blow-up)."""


@dataclass(frozen=True)
class NumericStatistics:
    columns: tuple[str, ...]
    mean: np.ndarray
    """float32 [F]: training mean of the observed (non-NaN) values; also the imputation value."""
    std: np.ndarray
    """float32 [F]: training population standard deviation (1.0 where below ``MIN_STD`` or unobserved)."""
    observed: np.ndarray
    """int64 [F]: training rows with a value in this column."""
    rows: int
    """Training rows the statistics were computed on."""

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": int(self.rows),
            "columns": [
                {"name": name, "mean": float(m), "std": float(s), "observed": int(o),
                 "missing": int(self.rows - o)}
                for name, m, s, o in zip(self.columns, self.mean, self.std, self.observed)
            ],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "NumericStatistics":
        cols = doc["columns"]
        return cls(
            columns=tuple(c["name"] for c in cols),
            mean=np.asarray([c["mean"] for c in cols], dtype=np.float32),
            std=np.asarray([c["std"] for c in cols], dtype=np.float32),
            observed=np.asarray([c["observed"] for c in cols], dtype=np.int64),
            rows=int(doc["rows"]),
        )


def compute_numeric_statistics(rows: np.ndarray, columns: Sequence[str]) -> NumericStatistics:
    """Per-column mean and std of ``rows`` (float [N, F], NaN = missing), ignoring missing values.

    Accumulates in float64 so large datasets do not lose precision; a column with no observed value gets
    mean 0 and std 1 (it then carries no information, and imputes to 0).
    """
    data = np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))
    present = ~np.isnan(data)
    observed = present.sum(axis=0)
    safe_n = np.maximum(observed, 1)
    mean = np.where(present, data, 0.0).sum(axis=0) / safe_n
    var = np.where(present, (data - mean) ** 2, 0.0).sum(axis=0) / safe_n
    std = np.sqrt(var)
    std = np.where((observed == 0) | (std < MIN_STD), 1.0, std)
    mean = np.where(observed == 0, 0.0, mean)
    return NumericStatistics(
        columns=tuple(columns),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        observed=observed.astype(np.int64),
        rows=int(data.shape[0]),
    )
