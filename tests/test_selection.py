"""Tests of top-k selection, set difference, random controls and overlap statistics."""

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from harmcircuit.masks import WeightSelection, matrix_name, matrix_sort_key
from harmcircuit.selection import (
    SelectionError,
    expected_jaccard,
    jaccard,
    random_like,
    set_difference,
    top_k,
    top_units,
)

SHAPES = {
    matrix_name(0, "q_proj"): (6, 5),
    matrix_name(0, "down_proj"): (5, 9),
    matrix_name(1, "k_proj"): (3, 5),
    matrix_name(1, "up_proj"): (9, 5),
}


def random_scores(seed: int, ties: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for name, shape in SHAPES.items():
        if ties:
            # Few distinct values, so that many scores tie at the cut.
            scores[name] = torch.randint(-3, 4, shape, generator=generator).float()
        else:
            scores[name] = torch.randn(shape, generator=generator)
    # Insert the matrices in a scrambled order: ranking must not depend on dict order.
    names = list(scores)
    random.Random(seed).shuffle(names)
    return {name: scores[name] for name in names}


def reference_ranking(scores, direction: str, names=None) -> list[tuple[str, int]]:
    """Slow reference: every (matrix, flat index) sorted best first with a Python sort."""
    names = sorted(names or scores, key=matrix_sort_key)
    entries = []
    for order, name in enumerate(names):
        for position, value in enumerate(scores[name].reshape(-1).tolist()):
            key = {"negative": -value, "positive": value, "absolute": abs(value)}[direction]
            entries.append((-key, order, position, name))
    entries.sort()
    return [(name, position) for _, _, position, name in entries]


def as_set(selection: WeightSelection) -> set[tuple[str, int]]:
    return {(name, i) for name, index in selection.indices.items() for i in index.tolist()}


# top_k


@pytest.mark.parametrize("direction", ["negative", "positive", "absolute"])
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_global_matches_reference(direction, ties):
    for seed in range(5):
        scores = random_scores(seed, ties=ties)
        ranking = reference_ranking(scores, direction)
        for k in (1, 7, 40, len(ranking) - 1, len(ranking)):
            selection = top_k(scores, k=k, direction=direction)
            assert as_set(selection) == set(ranking[:k]), (seed, k)
            assert len(selection) == k


@pytest.mark.parametrize("direction", ["negative", "positive", "absolute"])
def test_top_k_matrix_scope_matches_reference(direction):
    scores = random_scores(3, ties=True)
    n_total = sum(s.numel() for s in scores.values())
    for k in (1, 10, 57, n_total):
        selection = top_k(scores, k=k, scope="matrix", direction=direction)
        counts = selection.count_per_matrix()
        assert sum(counts.values()) == k
        for name, score in scores.items():
            share = k * score.numel() / n_total
            assert math.floor(share) <= counts[name] <= math.ceil(share)
            expected = reference_ranking(scores, direction, names=[name])[: counts[name]]
            assert as_set(selection.restrict([name])) == set(expected)


def test_top_k_fraction_counts():
    scores = random_scores(1)
    n_total = sum(s.numel() for s in scores.values())
    assert len(top_k(scores, fraction=0.1)) == round(0.1 * n_total)
    assert len(top_k(scores, fraction=1.0)) == n_total
    assert len(top_k(scores, fraction=1e-9)) == 1
    per_matrix = top_k(scores, fraction=0.2, scope="matrix").count_per_matrix()
    for name, score in scores.items():
        assert abs(per_matrix[name] - 0.2 * score.numel()) < 1


def test_top_k_negation_flips_selected_end():
    scores = random_scores(4)
    negated = {name: -score for name, score in scores.items()}
    lowest = top_k(scores, k=10, direction="negative")
    highest = top_k(scores, k=10, direction="positive")
    assert len(lowest & highest) == 0
    assert top_k(negated, k=10, direction="negative") == highest
    assert top_k(negated, k=10, direction="positive") == lowest
    for name, index in lowest.indices.items():
        assert (scores[name].reshape(-1)[index] < 0).all()


def test_top_k_keeps_shapes_of_every_matrix():
    selection = top_k(random_scores(5), k=1)
    assert dict(selection.shapes) == SHAPES
    assert len(selection.indices) == 1


def test_top_k_errors():
    scores = random_scores(0)
    n_total = sum(s.numel() for s in scores.values())
    with pytest.raises(SelectionError, match="exactly one"):
        top_k(scores)
    with pytest.raises(SelectionError, match="exactly one"):
        top_k(scores, k=3, fraction=0.1)
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(SelectionError, match=r"fraction must be in \(0, 1\]"):
            top_k(scores, fraction=fraction)
    with pytest.raises(SelectionError, match="larger than"):
        top_k(scores, k=n_total + 1)
    with pytest.raises(SelectionError, match=">= 1"):
        top_k(scores, k=0)
    with pytest.raises(SelectionError, match="unknown direction"):
        top_k(scores, k=1, direction="largest")
    with pytest.raises(SelectionError, match="unknown scope"):
        top_k(scores, k=1, scope="layer")
    bad = dict(scores)
    name = matrix_name(1, "up_proj")
    bad[name] = bad[name].clone()
    bad[name][2, 3] = float("nan")
    with pytest.raises(SelectionError, match=f"{name}.*NaN"):
        top_k(bad, k=1)
    with pytest.raises(SelectionError, match="2-D float"):
        top_k({name: torch.ones(3, 3, dtype=torch.int64)}, k=1)
    with pytest.raises(SelectionError, match="empty"):
        top_k({}, k=1)


def test_top_k_large_threshold_path(monkeypatch):
    """The kthvalue path (large k) selects the same set as the topk path."""
    import harmcircuit.selection as selection_module

    scores = random_scores(6, ties=True)
    small_path = top_k(scores, k=60, direction="absolute")
    monkeypatch.setattr(selection_module, "_TOPK_LIMIT", 0)
    assert top_k(scores, k=60, direction="absolute") == small_path
    assert top_k(scores, k=60, direction="absolute", scope="matrix") == top_k(
        scores, k=60, direction="absolute", scope="matrix"
    )


def test_top_k_infinite_scores():
    name = matrix_name(0, "q_proj")
    score = torch.zeros(2, 3)
    score[0, 1] = -math.inf
    score[1, 2] = math.inf
    assert top_k({name: score}, k=1).indices[name].tolist() == [1]
    assert top_k({name: score}, k=1, direction="positive").indices[name].tolist() == [5]


# top_units


@pytest.mark.parametrize("direction", ["negative", "positive", "absolute"])
def test_top_units_matches_reference(direction):
    generator = torch.Generator().manual_seed(0)
    unit_scores = torch.randint(-4, 5, (3, 7), generator=generator).float()
    reference = reference_ranking({"units": unit_scores}, direction)
    for k in (1, 5, 21):
        result = top_units(unit_scores, k, direction)
        expected = [(position // 7, position % 7) for _, position in reference[:k]]
        assert [(layer, index) for layer, index, _ in result] == expected
        for layer, index, score in result:
            assert score == unit_scores[layer, index].item()


def test_top_units_errors():
    with pytest.raises(SelectionError, match="larger than"):
        top_units(torch.zeros(2, 3), 7)
    with pytest.raises(SelectionError, match="NaN"):
        top_units(torch.full((2, 3), float("nan")), 1)


# set_difference


def test_set_difference_matches_set_reference():
    for seed in range(4):
        harm = top_k(random_scores(seed), k=30, direction="negative")
        benign = {name: score.abs() for name, score in random_scores(seed + 100, ties=True).items()}
        n_total = sum(s.numel() for s in benign.values())
        for q in (0.05, 0.3, 0.9, 1.0):
            for scope in ("global", "matrix"):
                result = set_difference(harm, benign, q, scope=scope)
                # Slow reference: the benign top set built by a Python sort, then a set minus.
                if scope == "global":
                    top = set(reference_ranking(benign, "positive")[: round(q * n_total)])
                else:
                    counts = top_k(benign, fraction=q, scope="matrix").count_per_matrix()
                    top = {
                        entry
                        for name in benign
                        for entry in reference_ranking(benign, "positive", [name])[: counts[name]]
                    }
                assert as_set(result) == as_set(harm) - top, (seed, q, scope)
                assert as_set(result) <= as_set(harm)


def test_set_difference_zero_q_returns_harm():
    harm = top_k(random_scores(0), k=12)
    benign = {name: score.abs() for name, score in random_scores(1).items()}
    assert set_difference(harm, benign, 0.0) is harm
    assert len(set_difference(harm, benign, 1.0)) == 0


def test_set_difference_sign_matters():
    """Flipping the benign sign subtracts the other end, so a sign error changes the result."""
    harm = top_k(random_scores(2), k=40)
    benign = {name: score.abs() for name, score in random_scores(3).items()}
    negated = {name: -score for name, score in benign.items()}
    with pytest.raises(SelectionError, match="negative values"):
        set_difference(harm, negated, 0.2)
    remaining = set_difference(harm, benign, 0.2)
    remaining_negated = set_difference(harm, negated, 0.2, allow_negative=True)
    assert remaining != remaining_negated


def test_set_difference_errors():
    harm = top_k(random_scores(0), k=12)
    benign = {name: score.abs() for name, score in random_scores(1).items()}
    with pytest.raises(SelectionError, match=r"q must be in \[0, 1\]"):
        set_difference(harm, benign, 1.5)
    missing = dict(benign)
    del missing[harm.names[0]]
    with pytest.raises(SelectionError, match="no entry"):
        set_difference(harm, missing, 0.1)
    wrong_shape = dict(benign)
    wrong_shape[harm.names[0]] = torch.ones(2, 2)
    with pytest.raises(SelectionError, match="shape"):
        set_difference(harm, wrong_shape, 0.1)


# random_like


def test_random_like_same_counts_and_reproducible():
    selection = top_k(random_scores(0), k=25, scope="matrix")
    first = random_like(selection, seed=1)
    assert first.count_per_matrix() == selection.count_per_matrix()
    assert dict(first.shapes) == dict(selection.shapes)
    assert random_like(selection, seed=1) == first
    assert random_like(selection, seed=2) != first


@pytest.mark.parametrize("count", [3, 20])
def test_random_like_is_uniform(count):
    """Each position is drawn equally often (chi-square), on the sparse and the dense path."""
    name = matrix_name(0, "q_proj")
    shapes = {name: (5, 10)}
    selection = WeightSelection({name: torch.arange(count)}, shapes)
    frequency = np.zeros(50)
    draws = 3000
    for seed in range(draws):
        drawn = random_like(selection, seed).indices[name]
        assert drawn.numel() == count
        frequency[drawn.numpy()] += 1
    expected = np.full(50, draws * count / 50)
    assert stats.chisquare(frequency, expected).pvalue > 1e-4


# Overlap statistics


def test_jaccard_matches_sets():
    a = top_k(random_scores(0), k=30)
    b = top_k(random_scores(1), k=45)
    expected = len(as_set(a) & as_set(b)) / len(as_set(a) | as_set(b))
    assert jaccard(a, b) == pytest.approx(expected)
    assert jaccard(a, a) == 1.0
    empty = WeightSelection.empty(SHAPES)
    assert jaccard(empty, empty) == 1.0
    assert jaccard(a, empty) == 0.0


def test_expected_jaccard_matches_scipy_sum():
    for a, b, n in [(30, 50, 200), (5, 5, 10), (700, 900, 100_000), (1, 1, 2)]:
        i = np.arange(max(0, a + b - n), min(a, b) + 1)
        p = stats.hypergeom(n, a, b).pmf(i)
        reference = float(np.sum(p * i / (a + b - i)))
        assert expected_jaccard(a, b, n) == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_expected_jaccard_matches_simulation():
    a, b, n = 30, 50, 200
    generator = np.random.default_rng(0)
    samples = []
    for _ in range(20_000):
        first = set(generator.choice(n, a, replace=False).tolist())
        second = set(generator.choice(n, b, replace=False).tolist())
        samples.append(len(first & second) / len(first | second))
    mean, error = np.mean(samples), np.std(samples) / math.sqrt(len(samples))
    assert abs(expected_jaccard(a, b, n) - mean) < 4 * error


def test_expected_jaccard_edge_cases():
    assert expected_jaccard(0, 0, 10) == 1.0
    assert expected_jaccard(0, 5, 10) == 0.0
    assert expected_jaccard(10, 4, 10) == pytest.approx(0.4)
    # Large sets: close to the ratio of expectations a*b/n / (a + b - a*b/n).
    a, b, n = 50_000, 80_000, 100_000_000
    approximation = (a * b / n) / (a + b - a * b / n)
    assert expected_jaccard(a, b, n) == pytest.approx(approximation, rel=1e-2)
    with pytest.raises(SelectionError):
        expected_jaccard(11, 4, 10)


def _random_scores(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.self_attn.q_proj": torch.randn(6, 5, generator=generator),
        "model.layers.0.mlp.down_proj": torch.randn(4, 7, generator=generator),
        "model.layers.1.self_attn.o_proj": torch.randn(5, 5, generator=generator),
    }


@pytest.mark.parametrize("direction", ["negative", "positive"])
def test_top_k_outside_matches_reference(direction):
    from harmcircuit.selection import top_k_outside

    scores = _random_scores(11)
    excluded = top_k({n: s.abs() for n, s in scores.items()}, k=12, direction="positive")
    chosen = top_k_outside(scores, excluded, k=9, direction=direction)

    # Reference: rank every weight outside the exclusion in Python and take the first nine.
    candidates = []
    for name, score in scores.items():
        banned = set(excluded.indices.get(name, torch.empty(0, dtype=torch.long)).tolist())
        for position, value in enumerate(score.flatten().tolist()):
            if position not in banned:
                candidates.append((value if direction == "negative" else -value, name, position))
    candidates.sort()
    expected: dict[str, list[int]] = {}
    for _, name, position in candidates[:9]:
        expected.setdefault(name, []).append(position)

    assert len(chosen) == 9
    assert (chosen & excluded).is_empty()
    assert {n: sorted(i.tolist()) for n, i in chosen.indices.items()} == {
        n: sorted(p) for n, p in expected.items()
    }


def test_top_k_outside_rejects_impossible_count():
    from harmcircuit.selection import SelectionError, top_k_outside

    scores = _random_scores(12)
    n_total = sum(s.numel() for s in scores.values())
    excluded = top_k(scores, k=n_total - 3, direction="positive")
    with pytest.raises(SelectionError, match="cannot select 4 weights"):
        top_k_outside(scores, excluded, k=4)
