"""Tests of head and neuron scores: attribution patching against finite differences."""

import pytest
import torch
from conftest import build_tiny_llama
from scipy.stats import spearmanr
from scoring_reference import (
    TINY_EXAMPLES,
    build_tiny_float64,
    encode,
    head_hook,
    neuron_hook,
    response_means,
    total_loss,
)

from harmcircuit.masks import MaskedModel
from harmcircuit.scoring import (
    ScoringError,
    ablate,
    attribute,
    scoring_batches,
    unit_means,
)

EPS = 1e-5


@pytest.fixture(scope="module")
def masked64():
    return MaskedModel(build_tiny_float64())


# Finite differences run every example once per unit and direction, so they use three.
FD_EXAMPLES = TINY_EXAMPLES[:3]


@pytest.fixture(scope="module")
def pairs(masked64):
    return encode(masked64.model)


@pytest.fixture(scope="module")
def fd_pairs(masked64):
    return encode(masked64.model, FD_EXAMPLES)


@pytest.fixture(scope="module")
def means(masked64, fd_pairs):
    """Reference means at response positions: head z [n_layers, n_heads, d_head], neurons."""
    model, pairs = masked64.model, fd_pairs
    heads = [response_means(model, pairs, f"blocks.{i}.attn.hook_z") for i in range(2)]
    neurons = [response_means(model, pairs, f"blocks.{i}.mlp.hook_post") for i in range(2)]
    return torch.stack(heads), torch.stack(neurons)


def central_difference(model, pairs, make_hooks) -> float:
    """d loss / d alpha at alpha = 0, where make_hooks(alpha) moves one unit by alpha."""
    plus = total_loss(model, pairs, make_hooks(EPS)).item()
    minus = total_loss(model, pairs, make_hooks(-EPS)).item()
    return (plus - minus) / (2 * EPS)


# Zero ablation


def test_attribute_zero_matches_finite_difference(masked64, fd_pairs):
    pairs = fd_pairs
    scores = attribute(masked64, FD_EXAMPLES, level="both", batch_size=2, progress=False)
    assert scores.level == "both"
    assert scores.head.shape == (2, 4)
    assert scores.neuron.shape == (2, 48)
    model = masked64.model
    for layer in range(2):
        for head in range(4):
            # Mask m = 1 - alpha scales the head; the score is -dL/dm = dL/dalpha.
            def scale(a, layer=layer, head=head):
                return head_hook(layer, head, lambda z: (1 - a) * z)

            slope = central_difference(model, pairs, scale)
            assert scores.head[layer, head].item() == pytest.approx(slope, rel=1e-6, abs=1e-8)
        for neuron in (7, 47):

            def scale(a, layer=layer, neuron=neuron):
                return neuron_hook(layer, neuron, lambda x: (1 - a) * x)

            slope = central_difference(model, pairs, scale)
            assert scores.neuron[layer, neuron].item() == pytest.approx(slope, rel=1e-6, abs=1e-8)


def test_attribute_levels_agree(masked64):
    both = attribute(masked64, TINY_EXAMPLES, level="both", progress=False)
    heads = attribute(masked64, TINY_EXAMPLES, level="head", batch_size=1, progress=False)
    neurons = attribute(masked64, TINY_EXAMPLES, level="neuron", batch_size=5, progress=False)
    assert heads.neuron is None
    assert neurons.head is None
    torch.testing.assert_close(both.head, heads.head, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both.neuron, neurons.neuron, rtol=1e-10, atol=1e-12)


def test_ablate_zero_equals_reference(masked64, pairs):
    model = masked64.model
    clean = total_loss(model, pairs).item()
    heads = ablate(masked64, TINY_EXAMPLES, level="head", batch_size=2, progress=False)
    for layer in range(2):
        for head in range(4):
            ablated = total_loss(model, pairs, head_hook(layer, head, torch.zeros_like)).item()
            assert heads.head[layer, head].item() == pytest.approx(ablated - clean, rel=1e-9)
    units = [(0, 3), (1, 40)]
    neurons = ablate(masked64, TINY_EXAMPLES, level="neuron", units=units, progress=False)
    for layer, neuron in units:
        ablated = total_loss(model, pairs, neuron_hook(layer, neuron, torch.zeros_like)).item()
        assert neurons.neuron[layer, neuron].item() == pytest.approx(ablated - clean, rel=1e-9)
    measured = ~torch.isnan(neurons.neuron)
    assert int(measured.sum()) == len(units)


def test_attribute_correlates_with_ablate(masked64):
    # First order is only an estimate, but on this model it must rank units like ablation.
    estimate = attribute(masked64, TINY_EXAMPLES, level="neuron", progress=False)
    measured = ablate(masked64, TINY_EXAMPLES, level="neuron", progress=False)
    rho = spearmanr(estimate.neuron.flatten(), measured.neuron.flatten()).statistic
    assert rho > 0.5


# Mean ablation


def test_unit_means_equal_reference(masked64, means):
    batch_list = scoring_batches(masked64.model.tokenizer, FD_EXAMPLES, 2)
    computed = unit_means(masked64, batch_list, "both", progress=False)
    head_means, neuron_means = means
    torch.testing.assert_close(computed.head, head_means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(computed.neuron, neuron_means, rtol=1e-12, atol=1e-12)


def test_attribute_mean_matches_finite_difference(masked64, fd_pairs, means):
    pairs = fd_pairs
    head_means, neuron_means = means
    scores = attribute(
        masked64, FD_EXAMPLES, level="both", ablation="mean", batch_size=2, progress=False
    )
    assert scores.ablation == "mean"
    model = masked64.model
    for layer in range(2):
        for head in range(4):
            mean = head_means[layer, head]  # [d_head]

            def move(a, layer=layer, head=head, mean=mean):
                return head_hook(layer, head, lambda z: z + a * (mean - z))

            slope = central_difference(model, pairs, move)
            assert scores.head[layer, head].item() == pytest.approx(slope, rel=1e-6, abs=1e-8)
        for neuron in (1, 30):
            mean = neuron_means[layer, neuron]

            def move(a, layer=layer, neuron=neuron, mean=mean):
                return neuron_hook(layer, neuron, lambda x: x + a * (mean - x))

            slope = central_difference(model, pairs, move)
            assert scores.neuron[layer, neuron].item() == pytest.approx(slope, rel=1e-6, abs=1e-8)


def test_ablate_mean_equals_reference(masked64, fd_pairs, means):
    pairs = fd_pairs
    head_means, _ = means
    model = masked64.model
    clean = total_loss(model, pairs).item()
    units = [(0, 1), (1, 2)]
    scores = ablate(
        masked64, FD_EXAMPLES, level="head", ablation="mean", units=units, progress=False
    )
    for layer, head in units:
        mean = head_means[layer, head]
        hooks = head_hook(layer, head, lambda z, mean=mean: mean.expand_as(z))
        ablated = total_loss(model, pairs, hooks).item()
        assert scores.head[layer, head].item() == pytest.approx(ablated - clean, rel=1e-9)
    # Mean ablation is not zero ablation.
    zero = ablate(masked64, FD_EXAMPLES, level="head", units=units, progress=False)
    assert scores.head[0, 1].item() != pytest.approx(zero.head[0, 1].item(), rel=1e-3)


# Options and errors


def test_unit_scoring_rejects_bad_options(masked64):
    # Under pytest, beartype rejects values outside the Literal types first (a TypeError).
    invalid = (ScoringError, TypeError)
    with pytest.raises(invalid, match="level"):
        attribute(masked64, TINY_EXAMPLES, level="layer", progress=False)
    with pytest.raises(invalid, match="ablation"):
        attribute(masked64, TINY_EXAMPLES, ablation="resample", progress=False)
    with pytest.raises(invalid, match="level"):
        ablate(masked64, TINY_EXAMPLES, level="both", progress=False)
    with pytest.raises(ScoringError, match="out of range"):
        ablate(masked64, TINY_EXAMPLES, units=[(2, 0)], progress=False)


def test_attribute_names_batch_with_nan():
    masked = MaskedModel(build_tiny_llama())
    with torch.no_grad():
        masked.weight("model.layers.0.self_attn.v_proj")[3, 3] = float("inf")
    with pytest.raises(ScoringError, match=r"non-finite .*\['c', 'a'\]"):
        attribute(masked, TINY_EXAMPLES, batch_size=2, progress=False)


def test_attribute_leaves_weights_without_grad(masked64):
    attribute(masked64, TINY_EXAMPLES, level="both", progress=False)
    assert all(p.grad is None for p in masked64.hf_model.parameters())
    assert all(p.requires_grad for p in masked64.hf_model.parameters())
