"""Point estimates with percentile bootstrap confidence intervals."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Resampled values held in memory at once; larger inputs are resampled in chunks of rows.
_MAX_CHUNK_VALUES = 4_000_000

# Per-example values: floats, or 0/1 outcomes as ints or bools.
Values = Sequence[float] | Sequence[int] | np.ndarray


@dataclass(frozen=True)
class Estimate:
    """A metric over ``n`` examples: its value and a confidence interval ``[low, high]``.

    For the metrics in this package ``value`` is the mean over examples (a rate for 0/1
    outcomes) and the interval is a 95% percentile bootstrap over examples, unless the
    producing function says otherwise.
    """

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    @classmethod
    def from_values(
        cls,
        values: Values,
        *,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> "Estimate":
        """Build the mean of ``values`` with its bootstrap confidence interval."""
        array = _as_finite_array(values)
        low, high = bootstrap_ci(array, n_resamples=n_resamples, confidence=confidence, seed=seed)
        return cls(float(array.mean()), low, high, int(array.size))


def bootstrap_ci(
    values: Values,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Callable[..., np.ndarray] = np.mean,
) -> tuple[float, float]:
    """Return the percentile bootstrap interval ``(low, high)`` of ``statistic(values)``.

    ``statistic`` must reduce along an ``axis`` keyword, as ``np.mean`` and ``np.median`` do:
    it is called once on a ``[n_resamples, n]`` array of resampled values with ``axis=1``.
    The same ``seed`` gives the same interval. One value gives a zero-width interval.
    """
    array = _as_finite_array(values)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    rng = np.random.default_rng(seed)
    n = array.size
    rows_per_chunk = max(1, _MAX_CHUNK_VALUES // n)
    resampled: list[np.ndarray] = []
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        indices = rng.integers(0, n, size=(rows, n))  # [rows, n]
        resampled.append(np.asarray(statistic(array[indices], axis=1), dtype=float))
    statistics = np.concatenate(resampled)  # [n_resamples]

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return float(low), float(high)


def _as_finite_array(values: Values) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size == 0:
        raise ValueError("cannot estimate a metric from zero values; evaluate at least one example")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{bad} of {array.size} values are NaN or infinite; check the inputs")
    return array
