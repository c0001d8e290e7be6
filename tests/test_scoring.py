"""Tests of the response loss, SNIP and Wanda against slow per-example references."""

import pytest
import torch
from conftest import build_tiny_llama
from scoring_reference import (
    TINY_EXAMPLES,
    build_tiny_float64,
    encode,
    example_loss,
    linear_inputs,
    per_example_gradients,
)

from harmcircuit.data.chat import batches
from harmcircuit.data.prompts import DataError, Example, PromptSet
from harmcircuit.masks import MaskedModel
from harmcircuit.scoring import (
    ScoringError,
    WeightScores,
    requires_grad_only,
    response_nll,
    scoring_batches,
    snip,
    wanda,
)


@pytest.fixture(scope="module")
def masked64():
    """The tiny grouped-query Llama in float64, so that references agree to ~1e-12."""
    return MaskedModel(build_tiny_float64())


@pytest.fixture(scope="module")
def masked32():
    return MaskedModel(build_tiny_llama())


def assert_scores_close(actual: WeightScores, expected: dict[str, torch.Tensor], rtol: float):
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        scale = tensor.abs().max().item()
        difference = (actual[name] - tensor).abs().max().item()
        assert difference <= rtol * scale, f"{name}: max difference {difference:.3g}"


# Response loss


@pytest.mark.parametrize("fixture", ["masked32", "masked64"])
def test_response_nll_matches_full_logits(fixture, request):
    masked = request.getfixturevalue(fixture)
    pairs = encode(masked.model)
    batch = batches(pairs, 8, masked.model.tokenizer.pad_token_id)[0]
    per_example = response_nll(masked.hf_model, batch, reduction="per_example")
    by_id = dict(zip(batch.example_ids, per_example.tolist(), strict=True))
    tolerance = 1e-5 if fixture == "masked32" else 1e-11
    for pair in pairs:
        reference = example_loss(masked.model, pair).item()
        assert by_id[pair.example_id] == pytest.approx(reference, rel=tolerance)
    total = response_nll(masked.hf_model, batch).item()
    assert total == pytest.approx(sum(by_id.values()), rel=tolerance)
    n_terms = int(batch.response_mask[:, 1:].sum())
    mean = response_nll(masked.hf_model, batch, reduction="mean").item()
    assert mean == pytest.approx(total / n_terms, rel=tolerance)


def test_requires_grad_only_restores_flags(masked32):
    hf_model = masked32.hf_model
    embedding = hf_model.get_input_embeddings().weight
    embedding.requires_grad_(False)
    weights = list(masked32.weight_matrices().values())
    try:
        with requires_grad_only(hf_model, weights[:2]):
            flags = [p.requires_grad for p in hf_model.parameters()]
            assert sum(flags) == 2
        assert not embedding.requires_grad
        assert all(w.requires_grad for w in weights)
    finally:
        embedding.requires_grad_(True)


# Signed SNIP


def test_signed_snip_equals_per_example_sum(masked64):
    pairs = encode(masked64.model)
    gradients = per_example_gradients(masked64, pairs)
    expected = {
        name: weight.detach() * sum(g[name] for g in gradients)
        for name, weight in masked64.weight_matrices().items()
    }
    scores = snip(masked64, TINY_EXAMPLES, batch_size=2, progress=False)
    assert scores.method == "snip_signed"
    assert scores.n_examples == len(TINY_EXAMPLES)
    assert scores.n_tokens == sum(int(p.response_mask[1:].sum()) for p in pairs)
    assert_scores_close(scores, expected, rtol=1e-10)


def test_signed_snip_accepts_encoded_pairs(masked64):
    pairs = encode(masked64.model)
    from_examples = snip(masked64, PromptSet(TINY_EXAMPLES), batch_size=3, progress=False)
    from_pairs = snip(masked64, pairs, batch_size=5, progress=False)
    assert_scores_close(from_pairs, dict(from_examples), rtol=1e-10)


def test_signed_snip_scale_symmetries(masked64):
    # Scaling k_proj by c and q_proj by 1/c leaves the model unchanged, so the sums of
    # W * dL/dW over the two matrices agree. The same holds for v/o and up/down, not for gate.
    totals = snip(masked64, TINY_EXAMPLES, progress=False).by_layer_and_type()
    for layer in range(masked64.n_layers):
        q, k, v, o, gate, up, down = totals[layer].tolist()
        assert q == pytest.approx(k, rel=1e-9)
        assert v == pytest.approx(o, rel=1e-9)
        assert up == pytest.approx(down, rel=1e-9)
        assert gate != pytest.approx(up, rel=1e-3)


def test_signed_snip_float32_model(masked32):
    scores = snip(masked32, TINY_EXAMPLES, progress=False)
    assert all(tensor.dtype == torch.float32 for tensor in scores.values())
    assert all(tensor.device.type == "cpu" for tensor in scores.values())


def test_snip_keeps_caller_state(masked64):
    hf_model = masked64.hf_model
    weight = masked64.weight(masked64.matrix_names[0])
    sentinel = torch.full_like(weight, 7.0)
    weight.grad = sentinel
    flags = [p.requires_grad for p in hf_model.parameters()]
    try:
        snip(masked64, TINY_EXAMPLES[:2], progress=False)
        snip(masked64, TINY_EXAMPLES[:2], signed=False, progress=False)
        assert weight.grad is sentinel
        assert all(p.grad is None for p in hf_model.parameters() if p is not weight)
        assert [p.requires_grad for p in hf_model.parameters()] == flags
    finally:
        weight.grad = None


# Unsigned SNIP


def test_unsigned_snip_equals_per_example_loop(masked64):
    pairs = encode(masked64.model)
    gradients = per_example_gradients(masked64, pairs)
    expected = {
        name: weight.detach().abs() * sum(g[name].abs() for g in gradients)
        for name, weight in masked64.weight_matrices().items()
    }
    scores = snip(masked64, TINY_EXAMPLES, signed=False, batch_size=3, progress=False)
    assert scores.method == "snip_unsigned"
    assert_scores_close(scores, expected, rtol=1e-10)
    signed = snip(masked64, TINY_EXAMPLES, progress=False)
    # |sum| <= sum of |.|, strictly somewhere when examples disagree in sign.
    gaps = [(scores[n] - signed[n].abs()).min().item() for n in scores]
    assert min(gaps) >= -1e-10
    assert any((scores[n] > signed[n].abs() + 1e-6).any() for n in scores)


# Layerwise mode


@pytest.mark.parametrize("signed", [True, False])
def test_layerwise_snip_equals_one_pass(masked64, signed):
    one_pass = snip(masked64, TINY_EXAMPLES, signed=signed, batch_size=2, progress=False)
    layerwise = snip(
        masked64, TINY_EXAMPLES, signed=signed, batch_size=2, progress=False, layerwise=True
    )
    assert layerwise.info["layerwise"] == "True"
    assert_scores_close(layerwise, dict(one_pass), rtol=1e-12)


# Errors


def test_snip_rejects_empty_pairs(masked32):
    with pytest.raises(DataError, match="no pairs"):
        snip(masked32, [], progress=False)
    with pytest.raises(DataError, match="no pairs"):
        wanda(masked32, PromptSet([]), progress=False)


def test_snip_rejects_missing_response(masked32):
    examples = [*TINY_EXAMPLES[:2], Example("late", "w1 w2")]
    with pytest.raises(DataError, match="late"):
        snip(masked32, examples, progress=False)


@pytest.mark.parametrize("signed", [True, False])
def test_snip_names_batch_with_nan(signed):
    masked = MaskedModel(build_tiny_llama())
    with torch.no_grad():
        masked.weight("model.layers.1.mlp.down_proj")[0, 0] = float("nan")
    # Batches are sorted by length, so with batch size 2 the shortest two come first.
    with pytest.raises(ScoringError, match=r"non-finite .*\['c', 'a'\]"):
        snip(masked, TINY_EXAMPLES, signed=signed, batch_size=2, progress=False)


def test_scoring_batches_sort_and_pad(masked32):
    batch_list = scoring_batches(masked32.model.tokenizer, TINY_EXAMPLES, 2)
    assert [len(batch) for batch in batch_list] == [2, 2, 1]
    for batch in batch_list:
        lengths = batch.attention_mask.sum(dim=1)
        assert bool(batch.attention_mask[:, 0].all())  # right padding
        assert batch.input_ids.shape[1] == int(lengths.max())


# Wanda


def test_wanda_equals_norm_loop(masked64):
    pairs = encode(masked64.model)
    inputs = linear_inputs(masked64, pairs)
    expected = {
        name: weight.detach().abs() * torch.linalg.vector_norm(inputs[name], dim=0)[None, :]
        for name, weight in masked64.weight_matrices().items()
    }
    scores = wanda(masked64, TINY_EXAMPLES, batch_size=2, progress=False)
    assert scores.method == "wanda"
    assert_scores_close(scores, expected, rtol=1e-12)
    n_tokens = sum(len(pair.input_ids) for pair in pairs)
    assert scores.info["norm_tokens"] == str(n_tokens)


def test_wanda_ignores_padding(masked64):
    # Batching pads the shorter examples; with batch size 1 nothing is padded.
    padded = wanda(masked64, TINY_EXAMPLES, batch_size=5, progress=False)
    unpadded = wanda(masked64, TINY_EXAMPLES, batch_size=1, progress=False)
    assert_scores_close(padded, dict(unpadded), rtol=1e-12)
