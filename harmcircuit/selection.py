"""Turn weight scores into weight selections: top-k, set difference, random controls, overlap.

Scores are a mapping from matrix name to a float tensor of the weight's shape (for example
signed SNIP ``W * dL/dW`` on harmful responses, or unsigned SNIP ``|W| * sum |dL/dW|`` on
benign ones). Ranking helpers take a ``direction`` that names the end of the scores to
select, so that a sign convention is always explicit at the call site:

- ``"negative"``: the most negative scores. For signed SNIP, zeroing weight ``w`` changes the
  loss by about ``-s``, so these are the weights whose removal raises the loss the most.
- ``"positive"``: the largest scores (unsigned importance such as benign SNIP or Wanda).
- ``"absolute"``: the largest ``|s|``.

Ties are broken by position: matrices ordered by layer then ``MATRIX_TYPES``, then flat
row-major index, lowest first.
"""

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from harmcircuit.masks import MaskError, WeightSelection, matrix_sort_key

logger = logging.getLogger(__name__)

DIRECTIONS = ("negative", "positive", "absolute")
SCOPES = ("global", "matrix")
# Up to this many selected weights, the threshold comes from torch.topk; above it, from
# torch.kthvalue, whose memory does not grow with k.
_TOPK_LIMIT = 1_000_000


class SelectionError(MaskError):
    """Invalid scores or selection arguments."""


# Validation


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise SelectionError(f"unknown direction {direction!r}: use one of {DIRECTIONS}")


def _check_scores(scores: Mapping[str, Tensor]) -> list[str]:
    """Validate score tensors and return the matrix names in ranking order."""
    if len(scores) == 0:
        raise SelectionError("scores are empty: pass one score tensor per weight matrix")
    for name, score in scores.items():
        if not isinstance(score, Tensor):
            raise SelectionError(f"score of {name!r} must be a tensor, got {type(score).__name__}")
        if not score.dtype.is_floating_point or score.dim() != 2:
            raise SelectionError(
                f"score of {name!r} must be a 2-D float tensor of the weight's shape, "
                f"got {score.dtype} {tuple(score.shape)}"
            )
        if bool(torch.isnan(score).any()):
            raise SelectionError(
                f"score of {name!r} contains NaN; check the loss and gradients of that matrix"
            )
    return sorted(scores, key=matrix_sort_key)


def _resolve_count(k: int | None, fraction: float | None, n_candidates: int) -> int:
    """Return the number of weights to select from exactly one of ``k`` and ``fraction``."""
    if (k is None) == (fraction is None):
        raise SelectionError("pass exactly one of k and fraction")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise SelectionError(f"fraction must be in (0, 1], got {fraction}")
        return max(1, round(fraction * n_candidates))
    assert k is not None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SelectionError(f"k must be an integer >= 1, got {k!r}")
    if k > n_candidates:
        raise SelectionError(f"k={k} is larger than the {n_candidates} candidates")
    return k


# Ranking core
#
# A selection is described per matrix by a cut: every entry whose ranking key is above the
# threshold, plus the listed tied entries equal to it. Building cuts first lets set_difference
# test membership for a few harm weights without materialising a large benign selection.


@dataclass(frozen=True)
class _Cut:
    """The selected entries of one matrix: ``key > threshold``, plus ``ties`` (positions)."""

    threshold: Tensor
    ties: Tensor

    def positions(self, key: Tensor) -> Tensor:
        """Return the sorted flat positions selected by this cut."""
        selected = key > self.threshold
        selected[self.ties] = True
        return selected.nonzero().squeeze(1)

    def contains(self, key: Tensor, positions: Tensor) -> Tensor:
        """Return a bool tensor: which of ``positions`` this cut selects."""
        return (key[positions] > self.threshold) | torch.isin(positions, self.ties)


class _RankingKeys:
    """Flat ranking keys per matrix, computed on demand: larger means selected first."""

    def __init__(self, scores: Mapping[str, Tensor], names: list[str], direction: str) -> None:
        self.scores, self.names, self.direction = scores, names, direction
        self.sizes = [scores[name].numel() for name in names]
        # One dtype for all keys, so that a threshold compares exactly in every matrix.
        self.dtype = functools.reduce(torch.promote_types, [scores[n].dtype for n in names])

    def __call__(self, name: str) -> Tensor:
        flat = self.scores[name].detach().reshape(-1).to(self.dtype)
        if self.direction == "negative":
            return -flat
        if self.direction == "positive":
            return flat
        return flat.abs()


def _kth_largest(values: Tensor, k: int) -> Tensor:
    """Return the k-th largest entry of a 1-D tensor as a 0-d tensor."""
    if k <= _TOPK_LIMIT:
        return torch.topk(values, k, sorted=False).values.min()
    return torch.kthvalue(values, values.numel() - k + 1).values  # (n-k+1)-th smallest


def _matrix_cut(key: Tensor, count: int) -> _Cut:
    """Return the cut of the ``count`` largest keys of one matrix, ties to the lowest position."""
    threshold = _kth_largest(key, count)
    n_above = int((key > threshold).sum())
    ties = (key == threshold).nonzero().squeeze(1)[: count - n_above]
    return _Cut(threshold, ties)


def _global_cuts(keys: _RankingKeys, total: int) -> dict[str, _Cut]:
    """Return per-matrix cuts of the ``total`` largest keys over all matrices together."""
    n_candidates = sum(keys.sizes)
    per_matrix = [min(total, size) for size in keys.sizes]
    if sum(per_matrix) <= n_candidates // 2:
        # The global top-k lies inside the union of each matrix's top-k, which is smaller
        # than all keys and avoids one slow topk over the concatenation.
        candidates = torch.cat(
            [
                torch.topk(keys(name), count, sorted=False).values
                for name, count in zip(keys.names, per_matrix, strict=True)
            ]
        )
    else:
        candidates = torch.cat([keys(name) for name in keys.names])
    threshold = _kth_largest(candidates, total)
    del candidates

    n_above = sum(int((keys(name) > threshold).sum()) for name in keys.names)
    ties_left = total - n_above
    cuts = {}
    for name in keys.names:
        ties = torch.zeros(0, dtype=torch.int64, device=threshold.device)
        if ties_left > 0:
            ties = (keys(name) == threshold).nonzero().squeeze(1)[:ties_left]
            ties_left -= ties.numel()
        cuts[name] = _Cut(threshold, ties)
    return cuts


def _apportion(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder method).

    Each group gets ``floor(total * size / sum(sizes))`` or one more; the extra ones go to the
    largest remainders, ties to the earlier group. The parts sum to ``total``.
    """
    n_total = sum(sizes)
    floors = [total * size // n_total for size in sizes]
    remainders = [total * size % n_total for size in sizes]
    leftover = total - sum(floors)
    order = sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))
    for i in order[:leftover]:
        floors[i] += 1
    return floors


def _cuts(
    scores: Mapping[str, Tensor],
    k: int | None,
    fraction: float | None,
    scope: str,
    direction: str,
) -> tuple[_RankingKeys, dict[str, _Cut]]:
    _check_direction(direction)
    if scope not in SCOPES:
        raise SelectionError(f"unknown scope {scope!r}: use one of {SCOPES}")
    names = _check_scores(scores)
    keys = _RankingKeys(scores, names, direction)
    total = _resolve_count(k, fraction, sum(keys.sizes))
    if scope == "global":
        return keys, _global_cuts(keys, total)
    cuts = {}
    for name, count in zip(names, _apportion(total, keys.sizes), strict=True):
        if count > 0:
            cuts[name] = _matrix_cut(keys(name), count)
    return keys, cuts


def top_k(
    scores: Mapping[str, Tensor],
    k: int | None = None,
    fraction: float | None = None,
    scope: str = "global",
    direction: str = "negative",
) -> WeightSelection:
    """Select the ``k`` (or ``fraction`` of all) weights at the ``direction`` end of the scores.

    ``scores[name]`` is a float tensor of the weight's shape. ``direction="negative"`` selects
    the most negative scores. For signed SNIP these are the weights whose removal raises the
    loss the most. ``"positive"`` selects the largest scores and ``"absolute"`` the largest
    magnitudes. ``scope="global"`` ranks all matrices together; ``scope="matrix"`` gives each
    matrix a share of the total in proportion to its size (each gets ``floor`` or ``ceil`` of
    ``total * size / n_candidates``) and ranks within it. ``fraction`` selects
    ``max(1, round(fraction * n_candidates))`` weights in total. Ties go to the lowest position.
    """
    keys, cuts = _cuts(scores, k, fraction, scope, direction)
    shapes = {name: tuple(scores[name].shape) for name in keys.names}
    indices = {}
    for name, cut in cuts.items():
        positions = cut.positions(keys(name))
        if positions.numel():
            indices[name] = positions.cpu()
    return WeightSelection(indices, shapes)


def top_units(
    unit_scores: Float[Tensor, "n_layers n_units"],
    k: int,
    direction: str = "negative",
) -> list[tuple[int, int, float]]:
    """Return the ``k`` heads or neurons at the ``direction`` end, best first.

    ``unit_scores`` is ``[n_layers, n_heads]`` or ``[n_layers, d_mlp]``. Each entry of the
    result is ``(layer, unit index, score)``. Ties go to the lower ``(layer, index)``.
    """
    _check_direction(direction)
    if bool(torch.isnan(unit_scores).any()):
        raise SelectionError("unit scores contain NaN; check the loss and gradients")
    n_units = unit_scores.shape[1]
    total = _resolve_count(k, None, unit_scores.numel())
    keys = _RankingKeys({"units": unit_scores}, ["units"], direction)
    key = keys("units")
    positions = _matrix_cut(key, total).positions(key)
    # A stable sort keeps increasing position among equal keys.
    order = torch.sort(key[positions], descending=True, stable=True).indices
    flat = unit_scores.detach().reshape(-1)
    return [
        (int(p) // n_units, int(p) % n_units, float(flat[p])) for p in positions[order].tolist()
    ]


def top_k_outside(
    scores: Mapping[str, Tensor],
    excluded: WeightSelection,
    k: int | None = None,
    fraction: float | None = None,
    scope: str = "global",
    direction: str = "negative",
) -> WeightSelection:
    """Select the top ``k`` weights as ``top_k`` does, among those not in ``excluded``.

    Unlike ``set_difference``, which can shrink a top-k set (even to nothing when the top harm
    weights all rank high on benign scores too), this always returns ``k`` weights (or the
    ``fraction`` of all candidates) when enough weights lie outside ``excluded``. Excluded
    weights are moved to the far end of the ranking on a copy of the scores.
    """
    _check_direction(direction)
    worst = {"negative": math.inf, "positive": -math.inf, "absolute": 0.0}[direction]
    names = _check_scores(scores)
    n_candidates = sum(scores[name].numel() for name in names)
    total = _resolve_count(k, fraction, n_candidates)
    if total > n_candidates - len(excluded):
        raise SelectionError(
            f"cannot select {total} weights outside an exclusion of {len(excluded)} among "
            f"{n_candidates}; lower k or the excluded fraction"
        )
    masked_scores = {}
    for name in names:
        score = scores[name]
        if name in excluded.indices:
            score = score.clone()
            score.view(-1)[excluded.indices[name].to(score.device)] = worst
        masked_scores[name] = score
    selection = top_k(masked_scores, k=total, scope=scope, direction=direction)
    overlap = selection & excluded
    if not overlap.is_empty():
        # Only possible with scope="matrix" when a matrix has fewer free weights than its share.
        raise SelectionError(
            f"{len(overlap)} selected weights fall inside the exclusion with scope={scope!r}; "
            "use scope='global' or a smaller exclusion"
        )
    return selection


# Set difference and controls


def set_difference(
    harm: WeightSelection,
    benign_scores: Mapping[str, Tensor],
    q: float,
    scope: str = "global",
    allow_negative: bool = False,
) -> WeightSelection:
    """Return the harm selection minus every weight in the top-``q`` fraction of benign scores.

    The benign set is subtracted from the harm set: ``harm - top_k(benign_scores,
    fraction=q, scope=scope, direction="positive")``. Benign scores are unsigned SNIP, where a
    higher score means more important for benign responses, so the subtracted weights are
    those with the largest benign scores. ``q=0`` returns ``harm`` unchanged.

    Negative benign scores raise ``SelectionError`` unless ``allow_negative=True``, because a
    negated score would silently subtract the least important weights instead.
    """
    if not 0.0 <= q <= 1.0:
        raise SelectionError(f"q must be in [0, 1], got {q}")
    for name in harm.indices:
        if name not in benign_scores:
            raise SelectionError(f"benign scores have no entry for {name!r} of the harm selection")
        if tuple(benign_scores[name].shape) != tuple(harm.shapes[name]):
            raise SelectionError(
                f"benign score of {name!r} has shape {tuple(benign_scores[name].shape)}, "
                f"but the harm selection has {harm.shapes[name]}"
            )
    if q == 0.0:
        return harm
    if not allow_negative:
        for name, score in benign_scores.items():
            if isinstance(score, Tensor) and bool((score < 0).any()):
                raise SelectionError(
                    f"benign score of {name!r} has negative values (min {float(score.min()):.3g}); "
                    "unsigned SNIP is >= 0, so check the sign or pass allow_negative=True"
                )
    keys, cuts = _cuts(benign_scores, None, q, scope, "positive")

    # Keep the harm weights that the benign top-q cut does not contain.
    indices = {}
    for name, index in harm.indices.items():
        if name not in cuts:
            indices[name] = index
            continue
        key = keys(name)
        in_benign_top = cuts[name].contains(key, index.to(key.device)).cpu()
        indices[name] = index[~in_benign_top]
    result = WeightSelection(indices, harm.shapes)
    logger.info(
        "set difference: %d harm weights, %d in the benign top %.4g, %d remain",
        len(harm),
        len(harm) - len(result),
        q,
        len(result),
    )
    return result


def _sample_without_replacement(n: int, count: int, generator: torch.Generator) -> Tensor:
    """Return ``count`` distinct integers drawn uniformly from ``range(n)``, sorted."""
    if count * 8 >= n:
        return torch.randperm(n, generator=generator)[:count].sort().values
    # For sparse draws, avoid a permutation of all n. The distinct values of iid uniform draws
    # form a uniformly random subset given their number, and a uniform subset of that is
    # uniform too; 2 * count draws almost always give enough distinct values.
    while True:
        draws = torch.randint(n, (2 * count + 16,), generator=generator)
        distinct = torch.unique(draws)
        if distinct.numel() >= count:
            keep = torch.randperm(distinct.numel(), generator=generator)[:count]
            return distinct[keep].sort().values


def random_like(selection: WeightSelection, seed: int) -> WeightSelection:
    """Return a uniformly random selection with the same number of weights in each matrix.

    The draw is reproducible: the same ``seed`` and selection give the same result.
    """
    generator = torch.Generator().manual_seed(seed)
    indices = {}
    for name, index in selection.indices.items():
        rows, columns = selection.shapes[name]
        indices[name] = _sample_without_replacement(rows * columns, index.numel(), generator)
    return WeightSelection(indices, selection.shapes)


# Overlap statistics


def jaccard(a: WeightSelection, b: WeightSelection) -> float:
    """Return ``|a & b| / |a | b|``; two empty selections give 1.0."""
    intersection = len(a.intersection(b))
    union = len(a) + len(b) - intersection
    return 1.0 if union == 0 else intersection / union


def _log_choose(top: int | float | Tensor, bottom: int | float | Tensor) -> Tensor:
    """Return log C(top, bottom) in float64 through the log-gamma function."""
    top_t = torch.as_tensor(top, dtype=torch.float64)
    bottom_t = torch.as_tensor(bottom, dtype=torch.float64)
    return torch.lgamma(top_t + 1) - torch.lgamma(bottom_t + 1) - torch.lgamma(top_t - bottom_t + 1)


def expected_jaccard(size_a: int, size_b: int, n_total: int) -> float:
    """Return the expected Jaccard index of two independent uniform random sets.

    The sets have ``size_a`` and ``size_b`` items drawn from ``n_total``. Their intersection
    size ``I`` is hypergeometric, ``P(I=i) = C(a,i) C(n-a,b-i) / C(n,b)``, and the Jaccard index
    is ``I / (a + b - I)``, so the expectation is ``sum_i P(I=i) * i / (a + b - i)``. This is
    computed exactly over the range of ``i`` that carries probability (within 50 standard
    deviations of the mean). It is close to ``ab/n / (a + b - ab/n)`` for large sets.
    """
    if min(size_a, size_b, n_total) < 0 or max(size_a, size_b) > n_total:
        raise SelectionError(
            f"need 0 <= size_a, size_b <= n_total, got {size_a}, {size_b}, {n_total}"
        )
    if size_a + size_b == 0:
        return 1.0
    a, b, n = size_a, size_b, n_total
    low, high = max(0, a + b - n), min(a, b)
    mean = a * b / n
    spread = math.sqrt(a * (b / n) * (1 - b / n) * (n - a) / max(n - 1, 1))
    low = max(low, math.floor(mean - 50 * spread) - 10)
    high = min(high, math.ceil(mean + 50 * spread) + 10)

    i = torch.arange(low, high + 1, dtype=torch.float64)

    log_p = _log_choose(a, i) + _log_choose(n - a, b - i) - _log_choose(n, b)
    p = torch.exp(log_p)
    value = torch.sum(p * i / (a + b - i)) / torch.sum(p)
    return float(value)
