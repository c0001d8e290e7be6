"""Tests of WeightScores and UnitScores: aggregations, arithmetic and safetensors files."""

import pytest
import torch
from conftest import build_tiny_llama

from harmcircuit.masks import MATRIX_TYPES, MaskedModel, matrix_name
from harmcircuit.scoring import ScoreFileError, UnitScores, WeightScores


@pytest.fixture(scope="module")
def masked():
    return MaskedModel(build_tiny_llama())


@pytest.fixture
def scores(masked):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        name: torch.randn(shape, generator=generator)
        for name, shape in masked.weight_shapes().items()
    }
    return WeightScores(tensors, method="snip_signed", n_examples=4, n_tokens=30, info={"k": "v"})


def test_mapping_orders_by_layer_then_type(scores, masked):
    assert list(scores) == list(masked.matrix_names)
    assert len(scores) == 14
    assert scores.n_layers == 2
    assert scores.n_weights == masked.n_scored_weights


def test_by_layer_and_type_sums(scores):
    table = scores.by_layer_and_type()
    assert table.shape == (2, len(MATRIX_TYPES))
    for layer in range(2):
        for column, kind in enumerate(MATRIX_TYPES):
            expected = scores[matrix_name(layer, kind)].double().sum().item()
            assert table[layer, column].item() == pytest.approx(expected, rel=1e-9)
    absolute = scores.by_layer_and_type(absolute=True)
    expected = scores["model.layers.1.mlp.up_proj"].abs().double().sum().item()
    assert absolute[1, MATRIX_TYPES.index("up_proj")].item() == pytest.approx(expected, rel=1e-9)
    assert bool((absolute >= table.abs()).all())


def test_by_layer_and_by_type_are_margins(scores):
    table = scores.by_layer_and_type(absolute=True)
    torch.testing.assert_close(scores.by_layer(absolute=True), table.sum(dim=1))
    by_type = scores.by_matrix_type(absolute=True)
    assert list(by_type) == list(MATRIX_TYPES)
    for column, kind in enumerate(MATRIX_TYPES):
        assert by_type[kind] == pytest.approx(table[:, column].sum().item(), rel=1e-12)


def test_to_heads_sums_q_rows_and_o_columns(scores, masked):
    d_head = masked.d_head
    heads = scores.to_heads(masked)
    assert heads.shape == (2, 4)
    q = scores["model.layers.1.self_attn.q_proj"]
    o = scores["model.layers.1.self_attn.o_proj"]
    expected = q[2 * d_head : 3 * d_head, :].sum() + o[:, 2 * d_head : 3 * d_head].sum()
    assert heads[1, 2].item() == pytest.approx(expected.item(), rel=1e-5)
    # Over all heads, q and o are covered exactly once.
    assert heads[1].sum().item() == pytest.approx((q.sum() + o.sum()).item(), rel=1e-5)


def test_to_heads_shares_kv_within_group(scores, masked):
    with_kv = scores.to_heads(masked, include_kv=True)
    without = scores.to_heads(masked)
    d_head = masked.d_head
    k = scores["model.layers.0.self_attn.k_proj"]
    v = scores["model.layers.0.self_attn.v_proj"]
    # 4 query heads share 2 key/value heads: heads 2 and 3 use key/value head 1.
    shared = (k[d_head : 2 * d_head].sum() + v[d_head : 2 * d_head].sum()).item() / 2
    assert (with_kv[0, 3] - without[0, 3]).item() == pytest.approx(shared, rel=1e-5)
    total = sum(
        scores[matrix_name(0, t)].sum().item() for t in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    assert with_kv[0].sum().item() == pytest.approx(total, rel=1e-5)


def test_to_neurons_sums_weight_slices(scores, masked):
    neurons = scores.to_neurons(masked, absolute=True)
    assert neurons.shape == (2, masked.d_mlp)
    gate = scores["model.layers.0.mlp.gate_proj"].abs()
    up = scores["model.layers.0.mlp.up_proj"].abs()
    down = scores["model.layers.0.mlp.down_proj"].abs()
    expected = gate[5].sum() + up[5].sum() + down[:, 5].sum()
    assert neurons[0, 5].item() == pytest.approx(expected.item(), rel=1e-5)


def test_negation_and_abs(scores):
    negated = -scores
    assert negated.method == "-snip_signed"
    assert (-negated).method == "snip_signed"
    name = next(iter(scores))
    torch.testing.assert_close(negated[name], -scores[name])
    absolute = scores.abs()
    assert absolute.method == "abs(snip_signed)"
    assert bool((absolute[name] >= 0).all())
    assert negated.n_examples == 4
    assert negated.n_tokens == 30


def test_weight_scores_file_round_trip(scores, tmp_path):
    path = tmp_path / "scores.safetensors"
    scores.save(path)
    loaded = WeightScores.load(path)
    assert list(loaded) == list(scores)
    for name in scores:
        assert torch.equal(loaded[name], scores[name])
    assert loaded.method == "snip_signed"
    assert (loaded.n_examples, loaded.n_tokens) == (4, 30)
    assert loaded.info == {"k": "v"}
    with pytest.raises(ScoreFileError, match="unit"):
        UnitScores.load(path)


def test_unit_scores_file_round_trip(tmp_path):
    unit = UnitScores(
        head=torch.randn(2, 4, dtype=torch.float64),
        neuron=None,
        method="attribution",
        ablation="mean",
        n_examples=3,
        n_tokens=12,
    )
    assert unit.level == "head"
    path = tmp_path / "units.safetensors"
    unit.save(path)
    loaded = UnitScores.load(path)
    assert loaded.level == "head"
    assert loaded.neuron is None
    assert torch.equal(loaded.head, unit.head)
    assert (loaded.method, loaded.ablation) == ("attribution", "mean")
    with pytest.raises(ScoreFileError, match="weight"):
        WeightScores.load(path)


def test_load_rejects_missing_file(tmp_path):
    with pytest.raises(ScoreFileError, match="failed to read"):
        WeightScores.load(tmp_path / "absent.safetensors")


def test_weight_scores_reject_bad_tensors():
    with pytest.raises(ValueError, match="2-D"):
        WeightScores(
            {"model.layers.0.mlp.up_proj": torch.zeros(3)}, method="x", n_examples=1, n_tokens=1
        )
    with pytest.raises(ValueError, match="floating"):
        WeightScores(
            {"model.layers.0.mlp.up_proj": torch.zeros(3, 3, dtype=torch.long)},
            method="x",
            n_examples=1,
            n_tokens=1,
        )
