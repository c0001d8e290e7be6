"""Tests of matrix naming, WeightSelection, MaskedModel (unit masks, pruning) and mask files."""

import copy
import json
import statistics
import time

import pytest
import torch
from conftest import build_tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmcircuit.masks import (
    MATRIX_TYPES,
    MaskedModel,
    MaskError,
    ModelMismatchError,
    PruneOrderError,
    WeightSelection,
    check_unit_mask,
    load_selection,
    load_selections,
    load_unit_masks,
    matrix_layer,
    matrix_name,
    matrix_sort_key,
    matrix_type,
    model_identity,
    read_metadata,
    save_selection,
    save_selections,
    save_unit_masks,
)

PROMPT_IDS = torch.tensor([[1, 5, 8, 9, 10, 11, 12, 13], [1, 20, 21, 22, 23, 24, 25, 26]])


@pytest.fixture(scope="module")
def masked():
    """MaskedModel over a 2-layer tiny Llama with 4 query heads and 2 key/value heads."""
    return MaskedModel(build_tiny_llama())


def logits(masked: MaskedModel) -> torch.Tensor:
    with torch.no_grad():
        return masked.model(PROMPT_IDS)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({name: tensor.detach() for name, tensor in model.state_dict().items()})


def assert_bitwise_equal(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in state.items():
        # Comparing the raw bits also catches -0.0 vs 0.0 and NaN payloads.
        same = torch.equal(tensor.view(torch.int32), reference[name].view(torch.int32))
        assert same, f"parameter {name} changed"


def random_selection(masked: MaskedModel, count: int, seed: int) -> WeightSelection:
    generator = torch.Generator().manual_seed(seed)
    shapes = masked.weight_shapes()
    indices = {}
    for name, (rows, columns) in shapes.items():
        indices[name] = torch.randint(rows * columns, (count,), generator=generator)
    return WeightSelection.from_indices(indices, shapes)


# Matrix names


def test_matrix_name_parsing():
    assert matrix_type("model.layers.3.self_attn.q_proj") == "q_proj"
    assert matrix_layer("model.layers.3.self_attn.q_proj") == 3
    assert matrix_type("model.layers.12.mlp.down_proj") == "down_proj"
    assert matrix_layer("model.layers.12.mlp.down_proj") == 12
    assert matrix_name(7, "up_proj") == "model.layers.7.mlp.up_proj"
    for kind in MATRIX_TYPES:
        assert matrix_type(matrix_name(4, kind)) == kind


@pytest.mark.parametrize(
    "name",
    [
        "model.embed_tokens",
        "lm_head",
        "model.layers.0.input_layernorm",
        "model.layers.0.mlp.q_proj",
        "model.layers.x.mlp.up_proj",
        "model.layers.0.self_attn.q_proj.weight",
    ],
)
def test_matrix_name_invalid(name):
    with pytest.raises(MaskError, match="invalid matrix name"):
        matrix_type(name)


def test_matrix_sort_key_orders_layer_then_type():
    names = [matrix_name(layer, kind) for layer in (10, 2) for kind in reversed(MATRIX_TYPES)]
    ordered = sorted(names, key=matrix_sort_key)
    expected = [matrix_name(layer, kind) for layer in (2, 10) for kind in MATRIX_TYPES]
    assert ordered == expected
    assert sorted(["zzz", "model.layers.0.mlp.up_proj"], key=matrix_sort_key)[-1] == "zzz"


# WeightSelection

SHAPES = {"model.layers.0.self_attn.q_proj": (4, 5), "model.layers.1.mlp.up_proj": (3, 2)}
Q, UP = SHAPES


def test_selection_validation_errors():
    with pytest.raises(MaskError, match="sorted without duplicates"):
        WeightSelection({Q: torch.tensor([3, 1])}, SHAPES)
    with pytest.raises(MaskError, match="sorted without duplicates"):
        WeightSelection({Q: torch.tensor([1, 1])}, SHAPES)
    with pytest.raises(MaskError, match=r"\[0, 20\)"):
        WeightSelection({Q: torch.tensor([0, 20])}, SHAPES)
    with pytest.raises(MaskError, match=r"\[0, 20\)"):
        WeightSelection({Q: torch.tensor([-1, 2])}, SHAPES)
    with pytest.raises(MaskError, match="no shape"):
        WeightSelection({"model.layers.5.mlp.up_proj": torch.tensor([0])}, SHAPES)
    with pytest.raises(MaskError, match="int64"):
        WeightSelection({Q: torch.tensor([0, 1], dtype=torch.int32)}, SHAPES)
    with pytest.raises(MaskError, match="invalid shape"):
        WeightSelection({}, {Q: (4,)})


def test_selection_from_indices_sorts_and_dedups():
    selection = WeightSelection.from_indices(
        {Q: torch.tensor([5, 1, 5, 0]), UP: torch.tensor([])}, SHAPES
    )
    assert selection.indices[Q].tolist() == [0, 1, 5]
    assert UP not in selection.indices
    assert len(selection) == 3
    assert selection.count_per_matrix() == {Q: 3, UP: 0}
    assert not selection.is_empty()
    assert WeightSelection.empty(SHAPES).is_empty()


def test_selection_is_immutable():
    source = torch.tensor([1, 2])
    selection = WeightSelection({Q: source}, SHAPES)
    source[0] = 0
    assert selection.indices[Q].tolist() == [1, 2]
    with pytest.raises(TypeError):
        selection.indices[UP] = torch.tensor([0])  # type: ignore[index]


def test_selection_set_operations_match_python_sets():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        parts = []
        for _ in range(2):
            indices = {
                name: torch.randint(
                    rows * cols,
                    (int(torch.randint(0, 8, (1,), generator=generator)),),
                    generator=generator,
                )
                for name, (rows, cols) in SHAPES.items()
            }
            parts.append(WeightSelection.from_indices(indices, SHAPES))
        a, b = parts

        def as_set(selection):
            return {(name, i) for name, index in selection.indices.items() for i in index.tolist()}

        assert as_set(a | b) == as_set(a) | as_set(b)
        assert as_set(a & b) == as_set(a) & as_set(b)
        assert as_set(a - b) == as_set(a) - as_set(b)
        assert as_set(b - a) == as_set(b) - as_set(a)


def test_selection_set_operations_reject_other_shapes():
    a = WeightSelection({Q: torch.tensor([1])}, SHAPES)
    b = WeightSelection({Q: torch.tensor([1])}, {Q: (5, 4)})
    with pytest.raises(MaskError, match="different models"):
        a | b


def test_selection_dense_round_trip():
    masks = {Q: torch.rand(4, 5) > 0.5, UP: torch.zeros(3, 2, dtype=torch.bool)}
    selection = WeightSelection.from_dense(masks)
    for name, mask in masks.items():
        assert torch.equal(selection.to_dense(name), mask)
    assert len(selection) == int(masks[Q].sum())
    rows, columns = selection.rows_and_columns(Q)
    assert torch.equal(masks[Q].nonzero(), torch.stack([rows, columns], dim=1))


def test_selection_counts_by_layer_and_type():
    selection = WeightSelection({Q: torch.tensor([0, 3, 7]), UP: torch.tensor([5])}, SHAPES)
    assert selection.counts_by_layer_and_type() == {(0, "q_proj"): 3, (1, "up_proj"): 1}
    table = selection.count_table(n_layers=2)
    assert table.shape == (2, len(MATRIX_TYPES))
    assert table[0, MATRIX_TYPES.index("q_proj")] == 3
    assert table[1, MATRIX_TYPES.index("up_proj")] == 1
    assert int(table.sum()) == 4


def test_selection_equality():
    a = WeightSelection({Q: torch.tensor([0, 3])}, SHAPES)
    assert a == WeightSelection.from_indices({Q: torch.tensor([3, 0, 3])}, SHAPES)
    assert a != WeightSelection({Q: torch.tensor([0, 4])}, SHAPES)


# MaskedModel attributes


def test_masked_model_dimensions(masked):
    assert (masked.n_layers, masked.n_heads, masked.n_kv_heads) == (2, 4, 2)
    assert (masked.d_head, masked.d_mlp, masked.d_model) == (8, 48, 32)
    assert len(masked.matrix_names) == 2 * len(MATRIX_TYPES)
    assert masked.matrix_names[0] == "model.layers.0.self_attn.q_proj"
    assert masked.matrix_names[-1] == "model.layers.1.mlp.down_proj"
    assert masked.n_scored_weights == sum(w.numel() for w in masked.weight_matrices().values())
    assert masked.n_parameters == sum(p.numel() for p in masked.hf_model.parameters())
    assert masked.n_scored_weights < masked.n_parameters


def test_weight_is_the_real_parameter(masked):
    hf_layer = masked.hf_model.model.layers[1]
    assert masked.weight("model.layers.1.self_attn.k_proj") is hf_layer.self_attn.k_proj.weight
    assert masked.weight("model.layers.1.mlp.down_proj") is hf_layer.mlp.down_proj.weight
    parameter_ids = {id(p) for p in masked.hf_model.parameters()}
    assert all(id(w) in parameter_ids for w in masked.weight_matrices().values())
    assert masked.weight("model.layers.1.self_attn.k_proj").shape == (16, 32)
    with pytest.raises(MaskError, match="unknown matrix"):
        masked.weight("lm_head")


# Unit masks


def test_ones_masks_change_nothing(masked):
    base = logits(masked)
    with masked.unit_masks(head=masked.ones_head_mask(), neuron=masked.ones_neuron_mask()):
        masked_logits = logits(masked)
    assert torch.equal(base, masked_logits)


@pytest.mark.parametrize("layer,head", [(0, 0), (0, 3), (1, 1), (1, 2)])
def test_head_mask_equals_zeroed_o_proj_columns(masked, layer, head):
    head_mask = masked.ones_head_mask()
    head_mask[layer, head] = 0.0
    with masked.unit_masks(head=head_mask):
        by_hook = logits(masked)

    name, index = masked.head_weight_slices(layer, head)["o"]
    weight = masked.weight(name)
    original = weight.detach().clone()
    with torch.no_grad():
        weight[index] = 0.0
    try:
        by_weights = logits(masked)
    finally:
        with torch.no_grad():
            weight.copy_(original)

    assert not torch.allclose(by_hook, logits(masked), atol=1e-3)
    torch.testing.assert_close(by_hook, by_weights, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer,neuron", [(0, 0), (1, 47), (1, 13)])
def test_neuron_mask_equals_zeroed_down_proj_column(masked, layer, neuron):
    neuron_mask = masked.ones_neuron_mask()
    neuron_mask[layer, neuron] = 0.0
    with masked.unit_masks(neuron=neuron_mask):
        by_hook = logits(masked)

    name, index = masked.neuron_weight_slices(layer, neuron)["down"]
    weight = masked.weight(name)
    original = weight.detach().clone()
    with torch.no_grad():
        weight[index] = 0.0
    try:
        by_weights = logits(masked)
    finally:
        with torch.no_grad():
            weight.copy_(original)

    assert not torch.allclose(by_hook, logits(masked), atol=1e-4)
    torch.testing.assert_close(by_hook, by_weights, atol=1e-5, rtol=0)


def test_unit_masks_scale_not_only_zero(masked):
    """A mask of 0.5 halves the head's contribution, as a multiplicative mask must."""
    head_mask = masked.ones_head_mask()
    head_mask[1, 2] = 0.5
    with masked.unit_masks(head=head_mask):
        by_hook = logits(masked)
    name, index = masked.head_weight_slices(1, 2)["o"]
    weight = masked.weight(name)
    original = weight.detach().clone()
    with torch.no_grad():
        weight[index] *= 0.5
    try:
        by_weights = logits(masked)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    torch.testing.assert_close(by_hook, by_weights, atol=1e-5, rtol=0)


def test_unit_mask_gradient_matches_finite_difference(masked):
    def metric(head_mask, neuron_mask):
        with masked.unit_masks(head=head_mask, neuron=neuron_mask):
            return masked.model(PROMPT_IDS)[:, -1, 3].sum()

    head_mask = masked.ones_head_mask(requires_grad=True)
    neuron_mask = masked.ones_neuron_mask(requires_grad=True)
    metric(head_mask, neuron_mask).backward()
    assert head_mask.grad is not None and neuron_mask.grad is not None
    assert head_mask.grad.shape == (2, 4)
    assert neuron_mask.grad.shape == (2, 48)

    step = 1e-2
    with torch.no_grad():
        for layer, head in [(0, 1), (1, 3)]:
            up, down = masked.ones_head_mask(), masked.ones_head_mask()
            up[layer, head] += step
            down[layer, head] -= step
            neurons = masked.ones_neuron_mask()
            estimate = (metric(up, neurons) - metric(down, neurons)) / (2 * step)
            torch.testing.assert_close(head_mask.grad[layer, head], estimate, atol=2e-3, rtol=2e-2)
        up_n, down_n = masked.ones_neuron_mask(), masked.ones_neuron_mask()
        up_n[1, 5] += step
        down_n[1, 5] -= step
        heads = masked.ones_head_mask()
        estimate = (metric(heads, up_n) - metric(heads, down_n)) / (2 * step)
        torch.testing.assert_close(neuron_mask.grad[1, 5], estimate, atol=2e-3, rtol=2e-2)


def test_unit_masks_removed_on_exit_and_error(masked):
    base = logits(masked)
    zeros = torch.zeros(masked.n_layers, masked.n_heads)
    with masked.unit_masks(head=zeros):
        assert not torch.allclose(logits(masked), base)
    assert torch.equal(logits(masked), base)
    with pytest.raises(RuntimeError, match="boom"), masked.unit_masks(head=zeros):
        raise RuntimeError("boom")
    assert torch.equal(logits(masked), base)


def test_unit_masks_keep_outer_hooks(masked):
    calls = []

    def record(activation, hook):
        calls.append(hook.name)
        return activation

    with masked.model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", record)]):
        with masked.unit_masks(neuron=masked.ones_neuron_mask()):
            logits(masked)
        logits(masked)
    assert len(calls) == 2


def test_unit_masks_reject_wrong_shapes(masked):
    with (
        pytest.raises(ValueError, match=r"shape \[2, 4\]"),
        masked.unit_masks(head=torch.ones(2, 5)),
    ):
        pass
    with (
        pytest.raises(ValueError, match=r"shape \[2, 48\]"),
        masked.unit_masks(neuron=torch.ones(3, 48)),
    ):
        pass
    # The dtype and rank checks behind unit_masks (beartype also catches these under pytest).
    with pytest.raises(ValueError, match=r"floating-point tensor of shape \[2, 4\]"):
        check_unit_mask(torch.ones(2, 4, dtype=torch.int64), (2, 4), "head")
    with pytest.raises(ValueError, match=r"shape \[2, 4\]"):
        check_unit_mask(torch.ones(8), (2, 4), "head")


# Weight views of units


def test_head_weight_slices_with_grouped_query_attention(masked):
    slices = masked.head_weight_slices(1, 3)
    assert slices["q"] == ("model.layers.1.self_attn.q_proj", (slice(24, 32), slice(None)))
    assert slices["o"] == ("model.layers.1.self_attn.o_proj", (slice(None), slice(24, 32)))
    # Heads 2 and 3 share key/value head 1 (4 query heads over 2 key/value heads).
    assert slices["k"] == ("model.layers.1.self_attn.k_proj", (slice(8, 16), slice(None)))
    assert slices["v"] == ("model.layers.1.self_attn.v_proj", (slice(8, 16), slice(None)))
    assert masked.head_weight_slices(1, 2)["k"] == slices["k"]
    assert masked.head_weight_slices(1, 1)["k"][1][0] == slice(0, 8)
    for name, index in slices.values():
        assert masked.weight(name)[index].numel() == 8 * 32
    with pytest.raises(MaskError, match="out of range"):
        masked.head_weight_slices(0, 4)


def test_shared_value_head_removes_its_query_group(masked):
    """Zeroing the v_proj rows of head 1's key/value head silences heads 0 and 1 together.

    This checks the grouping h // (n_heads // n_kv_heads) against the model's own
    grouped-query attention, not against the formula.
    """
    name, index = masked.head_weight_slices(1, 1)["v"]
    rows = torch.zeros(masked.weight_shapes()[name], dtype=torch.bool)
    rows[index] = True
    with masked.pruned(WeightSelection.from_dense({name: rows})):
        by_pruning = logits(masked)
    head_mask = masked.ones_head_mask()
    head_mask[1, 0:2] = 0.0
    with masked.unit_masks(head=head_mask):
        by_hook = logits(masked)
    torch.testing.assert_close(by_pruning, by_hook, atol=1e-5, rtol=0)


def test_head_and_neuron_selection_contents(masked):
    head = masked.head_selection(0, 1)
    assert head.count_per_matrix()["model.layers.0.self_attn.q_proj"] == 8 * 32
    assert head.count_per_matrix()["model.layers.0.self_attn.o_proj"] == 32 * 8
    assert len(head) == 2 * 8 * 32
    assert torch.equal(
        head.to_dense("model.layers.0.self_attn.o_proj")[:, 8:16],
        torch.ones(32, 8, dtype=torch.bool),
    )
    with_kv = masked.head_selection(0, 1, include_kv=True)
    assert len(with_kv) == 4 * 8 * 32
    assert with_kv.to_dense("model.layers.0.self_attn.k_proj")[:8].all()

    neuron = masked.neuron_selection(1, 5)
    dense_down = neuron.to_dense("model.layers.1.mlp.down_proj")
    assert dense_down[:, 5].all()
    assert int(dense_down.sum()) == 32
    assert neuron.to_dense("model.layers.1.mlp.gate_proj")[5].all()
    assert neuron.to_dense("model.layers.1.mlp.up_proj")[5].all()
    assert len(neuron) == 3 * 32


def test_pruned_head_equals_head_mask(masked):
    head_mask = masked.ones_head_mask()
    head_mask[1, 2] = 0.0
    with masked.unit_masks(head=head_mask):
        by_hook = logits(masked)
    with masked.pruned(masked.head_selection(1, 2)):
        by_pruning = logits(masked)
    torch.testing.assert_close(by_hook, by_pruning, atol=1e-5, rtol=0)


def test_pruned_neuron_equals_neuron_mask(masked):
    neuron_mask = masked.ones_neuron_mask()
    neuron_mask[0, 30] = 0.0
    with masked.unit_masks(neuron=neuron_mask):
        by_hook = logits(masked)
    with masked.pruned(masked.neuron_selection(0, 30)):
        by_pruning = logits(masked)
    torch.testing.assert_close(by_hook, by_pruning, atol=1e-5, rtol=0)


# In-place pruning


def test_apply_zeroes_exactly_the_selection(masked):
    reference = snapshot(masked.hf_model)
    originals = {name: w.detach().clone() for name, w in masked.weight_matrices().items()}
    selection = random_selection(masked, count=10, seed=1)
    handle = masked.apply(selection)
    try:
        for name, weight in masked.weight_matrices().items():
            # Slow reference: a copy of the weight with the selected entries set to zero.
            expected = originals[name].clone()
            expected[selection.to_dense(name)] = 0.0
            assert torch.equal(weight.detach(), expected)
    finally:
        masked.restore(handle)
    assert_bitwise_equal(masked.hf_model, reference)


def test_restore_is_bitwise_for_negative_zero(masked):
    name = masked.matrix_names[3]
    weight = masked.weight(name)
    original = weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[7] = -0.0
    try:
        reference = snapshot(masked.hf_model)
        selection = WeightSelection({name: torch.tensor([6, 7])}, masked.weight_shapes())
        with masked.pruned(selection):
            assert weight.view(-1)[7].item() == 0.0
        assert_bitwise_equal(masked.hf_model, reference)
        assert torch.signbit(weight.view(-1)[7])
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_nested_overlapping_selections_restore(masked):
    reference = snapshot(masked.hf_model)
    outer = random_selection(masked, count=40, seed=2)
    inner = random_selection(masked, count=40, seed=3) | outer.restrict(masked.matrix_names[:4])
    assert len(outer & inner) > 0
    with masked.pruned(outer):
        after_outer = snapshot(masked.hf_model)
        with masked.pruned(inner):
            for name, weight in masked.weight_matrices().items():
                assert (weight[(outer | inner).to_dense(name)] == 0).all()
        assert_bitwise_equal(masked.hf_model, after_outer)
    assert_bitwise_equal(masked.hf_model, reference)


def test_restore_out_of_order_raises(masked):
    reference = snapshot(masked.hf_model)
    first = masked.apply(random_selection(masked, count=5, seed=4))
    second = masked.apply(random_selection(masked, count=5, seed=5))
    assert masked.applied == (first, second)
    with pytest.raises(PruneOrderError, match="out of order"):
        masked.restore(first)
    # A second view of the same model shares the order.
    other_view = MaskedModel(masked.model)
    with pytest.raises(PruneOrderError, match="out of order"):
        other_view.restore(first)
    other_view.restore(second)
    masked.restore(first)
    with pytest.raises(PruneOrderError, match="already restored"):
        masked.restore(first)
    assert masked.applied == ()
    assert_bitwise_equal(masked.hf_model, reference)


def test_restore_on_another_model_raises(masked):
    other = MaskedModel(build_tiny_llama(seed=1))
    handle = masked.apply(random_selection(masked, count=3, seed=6))
    try:
        with pytest.raises(PruneOrderError, match="another model"):
            other.restore(handle)
    finally:
        masked.restore(handle)


def test_pruned_restores_on_error(masked):
    reference = snapshot(masked.hf_model)
    with (
        pytest.raises(RuntimeError, match="inside"),
        masked.pruned(random_selection(masked, 20, seed=7)),
    ):
        raise RuntimeError("inside")
    assert_bitwise_equal(masked.hf_model, reference)
    assert masked.applied == ()


def test_apply_rejects_selection_of_other_model(masked):
    shapes = dict(masked.weight_shapes())
    name = masked.matrix_names[0]
    shapes[name] = (shapes[name][0] + 1, shapes[name][1])
    wrong = WeightSelection({name: torch.tensor([0])}, shapes)
    with pytest.raises(MaskError, match="another model"):
        masked.apply(wrong)
    unknown = WeightSelection(
        {"model.layers.9.mlp.up_proj": torch.tensor([0])}, {"model.layers.9.mlp.up_proj": (2, 2)}
    )
    with pytest.raises(MaskError, match="does not score"):
        masked.apply(unknown)
    assert masked.applied == ()


@st.composite
def selection_counts(draw):
    depth = draw(st.integers(min_value=1, max_value=3))
    return [
        (
            draw(st.integers(min_value=0, max_value=300)),
            draw(st.integers(min_value=0, max_value=10_000)),
        )
        for _ in range(depth)
    ]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=selection_counts())
def test_apply_restore_property(masked, plan):
    """Apply then restore, nested up to three deep, leaves every parameter bitwise equal."""
    reference = snapshot(masked.hf_model)
    handles = []
    union = WeightSelection.empty(masked.weight_shapes())
    for count, seed in plan:
        selection = random_selection(masked, count, seed)
        handles.append(masked.apply(selection))
        union = union | selection
        for name, weight in masked.weight_matrices().items():
            assert (weight[union.to_dense(name)] == 0).all()
    for handle in reversed(handles):
        masked.restore(handle)
    assert_bitwise_equal(masked.hf_model, reference)


# Mask files


def test_selection_file_round_trip(masked, tmp_path):
    selection = random_selection(masked, count=30, seed=8)
    path = tmp_path / "masks.safetensors"
    save_selection(path, selection, masked, metadata={"claim": "compact", "seed": "8"})
    assert load_selection(path, masked) == selection
    assert load_selection(path, masked.model) == selection
    assert read_metadata(path) == {"claim": "compact", "seed": "8"}
    assert [p.name for p in tmp_path.iterdir()] == ["masks.safetensors"]


def test_named_selections_file_round_trip(masked, tmp_path):
    selections = {
        "harm:0.01%": random_selection(masked, count=12, seed=11),
        "control/harm": random_selection(masked, count=12, seed=12),
        "empty": WeightSelection.empty(masked.weight_shapes()),
    }
    path = tmp_path / "masks.safetensors"
    save_selections(path, selections, masked, metadata={"run": "test"})
    loaded = load_selections(path, masked)
    assert list(loaded) == list(selections)
    for name, selection in selections.items():
        assert loaded[name] == selection
    with pytest.raises(MaskError, match="contains 3 selections"):
        load_selection(path, masked)
    identity = model_identity(masked)
    assert (
        load_selections(path, masked, identity=identity)["control/harm"]
        == selections["control/harm"]
    )
    wrong_identity = dict(identity, fingerprint="0" * 64)
    with pytest.raises(ModelMismatchError):
        load_selections(path, masked, identity=wrong_identity)


def test_empty_selection_file_round_trip(masked, tmp_path):
    empty = WeightSelection.empty(masked.weight_shapes())
    save_selection(tmp_path / "empty.safetensors", empty, masked)
    assert load_selection(tmp_path / "empty.safetensors", masked) == empty


def test_selection_file_for_another_model_is_rejected(masked, tmp_path):
    path = tmp_path / "masks.safetensors"
    selection = random_selection(masked, count=5, seed=9)
    save_selection(path, selection, masked)
    other = MaskedModel(build_tiny_llama(seed=1))
    with pytest.raises(ModelMismatchError) as caught:
        load_selection(path, other)
    message = str(caught.value)
    assert "\n" not in message
    assert model_identity(masked)["fingerprint"][:12] in message
    assert model_identity(other)["fingerprint"][:12] in message
    # The same architecture with other weights loads when weights need not match.
    assert load_selection(path, other, strict_weights=False) == selection
    bigger = MaskedModel(build_tiny_llama(n_layers=3))
    with pytest.raises(ModelMismatchError, match="layers=2.*layers=3"):
        load_selection(path, bigger, strict_weights=False)


def test_identity_ignores_applied_pruning(masked, tmp_path):
    before = model_identity(masked)
    path = tmp_path / "masks.safetensors"
    selection = random_selection(masked, count=200, seed=10)
    with masked.pruned(selection):
        assert model_identity(masked) == before
        save_selection(path, selection, masked)
        # Still pruned after fingerprinting, with the handle still restorable.
        assert (
            masked.weight(masked.matrix_names[0])[selection.to_dense(masked.matrix_names[0])] == 0
        ).all()
    assert load_selection(path, masked) == selection
    assert model_identity(masked) == before


def test_identity_changes_with_weights(masked):
    before = model_identity(masked)
    weight = masked.weight(masked.matrix_names[5])
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1e-3)
    try:
        assert model_identity(masked)["fingerprint"] != before["fingerprint"]
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert model_identity(masked) == before
    assert before["architecture"] == "LlamaForCausalLM"
    assert json.loads(json.dumps(before)) == before


def test_unit_mask_file_round_trip(masked, tmp_path):
    head = torch.rand(2, 4)
    neuron = torch.rand(2, 48)
    path = tmp_path / "units.safetensors"
    save_unit_masks(path, masked, head=head, neuron=neuron, metadata={"metric": "logit diff"})
    loaded = load_unit_masks(path, masked)
    assert torch.equal(loaded.head, head)
    assert torch.equal(loaded.neuron, neuron)
    assert read_metadata(path) == {"metric": "logit diff"}

    save_unit_masks(path, masked, head=head)
    assert load_unit_masks(path, masked).neuron is None
    with pytest.raises(MaskError, match="not a harmcircuit.weight_selection"):
        load_selection(path, masked)
    with pytest.raises(ValueError, match=r"shape \[2, 4\]"):
        save_unit_masks(path, masked, head=torch.rand(3, 4))
    other = MaskedModel(build_tiny_llama(seed=2))
    with pytest.raises(ModelMismatchError):
        load_unit_masks(path, other)


# Real model


@pytest.mark.real_model
def test_real_model_apply_restore_speed(real_model):
    masked = MaskedModel(real_model)
    assert (masked.n_layers, masked.n_heads, masked.n_kv_heads, masked.d_mlp) == (30, 9, 3, 1536)
    assert len(masked.matrix_names) == 210
    generator = torch.Generator().manual_seed(0)
    shapes = masked.weight_shapes()
    names = list(shapes)
    # 100,000 weights spread over all 210 matrices in proportion to their size.
    sizes = torch.tensor([rows * cols for rows, cols in shapes.values()], dtype=torch.float64)
    chosen = torch.multinomial(sizes, 100_000, replacement=True, generator=generator)
    global_counts = torch.bincount(chosen, minlength=len(names))
    indices = {
        name: torch.randperm(rows * cols, generator=generator)[: int(global_counts[i])]
        for i, (name, (rows, cols)) in enumerate(shapes.items())
    }
    selection = WeightSelection.from_indices(indices, shapes)
    assert len(selection) == 100_000

    originals = {name: w.detach().clone() for name, w in masked.weight_matrices().items()}
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        handle = masked.apply(selection)
        masked.restore(handle)
        timings.append(time.perf_counter() - start)
    median_ms = 1000 * statistics.median(timings)
    print(f"apply+restore of 100,000 weights: median {median_ms:.1f} ms over 20 runs")
    for name, weight in masked.weight_matrices().items():
        assert torch.equal(weight.detach().view(torch.int32), originals[name].view(torch.int32))
    assert median_ms <= 50.0
