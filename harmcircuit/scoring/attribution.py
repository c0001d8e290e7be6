"""Head and neuron scores: attribution patching (fast) and activation patching (reference).

A unit is an attention head (its output ``z`` at ``blocks.{i}.attn.hook_z``, before ``o_proj``)
or an MLP neuron (its activation at ``blocks.{i}.mlp.hook_post``, before ``down_proj``).
Ablating a unit replaces its activation at every position by

- ``"zero"``: zero;
- ``"mean"``: its mean over the response-token positions of the scored pairs.

Both functions return ``UnitScores`` with the same sign convention: the score of a unit is
``loss(unit ablated) - loss(clean)`` in nats summed over all response tokens, estimated to
first order by ``attribute`` and measured by ``ablate``. A positive score means that removing
the unit raises the response loss.

Both ablations are written with a mask ``m`` per unit that is 1 in the clean run:
``a' = a + (1 - m) * (ablated - a)``, which is ``m * a`` for zero ablation. Attribution
patching reports ``-dL/dm`` at ``m = 1``, which is ``sum over positions of dL/da * (ablated - a)``
(Nanda 2023, "Attribution Patching"; Syed et al. 2023). One forward and one backward pass per
batch score every head and neuron, against one forward pass per unit per batch for ``ablate``.
"""

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from harmcircuit.data.chat import Batch
from harmcircuit.masks import MaskedModel, check_unit_mask
from harmcircuit.scoring.containers import UnitScores
from harmcircuit.scoring.loss import (
    ScoringError,
    check_finite,
    count_loss_tokens,
    decoder_module,
    requires_grad_only,
    response_nll,
)
from harmcircuit.scoring.pairs import Pairs, scoring_batches

logger = logging.getLogger(__name__)

Level = Literal["head", "neuron", "both"]
Ablation = Literal["zero", "mean"]


@dataclass(frozen=True)
class UnitMeans:
    """Mean activation of every unit over the response-token positions of a set of pairs.

    ``head`` is ``[n_layers, n_heads, d_head]`` (the mean ``z`` of each head) and ``neuron`` is
    ``[n_layers, d_mlp]``; either is None when that level is not needed.
    """

    head: Float[Tensor, "n_layers n_heads d_head"] | None
    neuron: Float[Tensor, "n_layers d_mlp"] | None


def attribute(
    masked: MaskedModel,
    pairs: Pairs,
    *,
    level: Level = "head",
    ablation: Ablation = "zero",
    batch_size: int = 8,
    progress: bool = True,
) -> UnitScores:
    """Estimate the effect of ablating each head and/or neuron with attribution patching.

    Returns ``UnitScores`` (method ``"attribution"``) whose entries estimate
    ``loss(unit ablated) - loss(clean)`` in nats summed over response tokens: ``-dL/dm`` at
    ``m = 1`` for zero ablation, ``sum_positions dL/da * (mean - a)`` for mean ablation. The
    means come from a first forward pass over the same pairs. The estimate is first order:
    it is exact for a loss linear in the unit's activation, and units with large effects often
    deviate from ``ablate``.

    Raises ``DataError`` for empty pairs and ``ScoringError`` for a non-finite loss or gradient,
    naming the batch's example ids, or for an unknown ``level`` or ``ablation``.
    """
    _check_options(level, ablation, ("head", "neuron", "both"))
    batch_list = scoring_batches(masked.model.tokenizer, pairs, batch_size)
    means = unit_means(masked, batch_list, level, progress) if ablation == "mean" else None
    dtype = _mask_dtype(masked)
    head, neuron = _ones_masks(masked, level, dtype, requires_grad=True)
    masks = [mask for mask in (head, neuron) if mask is not None]
    totals = [torch.zeros_like(mask, dtype=torch.float64) for mask in masks]

    hf_model = masked.hf_model
    with requires_grad_only(hf_model, []):
        for batch in tqdm(batch_list, desc="attribution", disable=not progress, leave=False):
            with patched_units(masked, head, neuron, means):
                loss = response_nll(hf_model, batch)
            check_finite(loss, "response loss", batch)
            gradients = torch.autograd.grad(loss, masks)
            for total, gradient in zip(totals, gradients, strict=True):
                check_finite(gradient, "mask gradient", batch)
                total -= gradient.double()  # removing a unit moves its mask from 1 to 0

    scores = iter(totals)
    return UnitScores(
        head=next(scores).cpu() if head is not None else None,
        neuron=next(scores).cpu() if neuron is not None else None,
        method="attribution",
        ablation=ablation,
        n_examples=sum(len(batch) for batch in batch_list),
        n_tokens=count_loss_tokens(batch_list),
    )


def ablate(
    masked: MaskedModel,
    pairs: Pairs,
    *,
    level: Literal["head", "neuron"] = "head",
    ablation: Ablation = "zero",
    units: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> UnitScores:
    """Measure the effect of ablating each unit, one unit at a time (activation patching).

    For every unit ``(layer, index)`` in ``units`` (default: every head, or every neuron, of
    ``level``), each batch runs once with that unit ablated and no gradient, and the score is
    ``loss(unit ablated) - loss(clean)`` in nats summed over response tokens. Units left out
    of ``units`` score NaN. This is the slow ground truth for ``attribute``: it costs one
    forward pass per unit per batch.
    """
    _check_options(level, ablation, ("head", "neuron"))
    batch_list = scoring_batches(masked.model.tokenizer, pairs, batch_size)
    means = unit_means(masked, batch_list, level, progress) if ablation == "mean" else None
    dtype = _mask_dtype(masked)
    head, neuron = _ones_masks(masked, level, dtype, requires_grad=False)
    mask = head if head is not None else neuron
    assert mask is not None
    unit_list = _check_units(units, tuple(mask.shape), level)
    deltas = torch.full(mask.shape, float("nan"), dtype=torch.float64)
    for layer, index in unit_list:
        deltas[layer, index] = 0.0

    hf_model = masked.hf_model
    bar = tqdm(
        total=len(batch_list) * len(unit_list), desc="ablation", disable=not progress, leave=False
    )
    with torch.no_grad():
        for batch in batch_list:
            with patched_units(masked, head, neuron, means):
                clean = _finite_loss(hf_model, batch)
            for layer, index in unit_list:
                mask[layer, index] = 0.0
                with patched_units(masked, head, neuron, means):
                    deltas[layer, index] += _finite_loss(hf_model, batch) - clean
                mask[layer, index] = 1.0
                bar.update()
    bar.close()
    return UnitScores(
        head=deltas if level == "head" else None,
        neuron=deltas if level == "neuron" else None,
        method="ablation",
        ablation=ablation,
        n_examples=sum(len(batch) for batch in batch_list),
        n_tokens=count_loss_tokens(batch_list),
    )


def unit_means(
    masked: MaskedModel, batch_list: Sequence[Batch], level: str, progress: bool = True
) -> UnitMeans:
    """Average each head's ``z`` and/or each neuron's activation over response-token positions.

    Positions where ``batch.response_mask`` is true count; prompt, template and padding
    positions do not. Sums are taken in float64.
    """
    want_heads = level in ("head", "both")
    want_neurons = level in ("neuron", "both")
    n_layers = masked.n_layers
    head_sums = torch.zeros(n_layers, masked.n_heads, masked.d_head, dtype=torch.float64)
    neuron_sums = torch.zeros(n_layers, masked.d_mlp, dtype=torch.float64)
    current: list[Tensor] = []

    def add_head_sum(layer: int, z: Tensor, hook: object) -> None:
        # z: [batch, pos, n_heads, d_head] -> response rows [n_response, n_heads, d_head]
        head_sums[layer] += z[current[0].to(z.device)].double().sum(dim=0).cpu()

    def add_neuron_sum(layer: int, post: Tensor, hook: object) -> None:
        # post: [batch, pos, d_mlp] -> response rows [n_response, d_mlp]
        neuron_sums[layer] += post[current[0].to(post.device)].double().sum(dim=0).cpu()

    hooks = []
    for layer in range(n_layers):
        if want_heads:
            hooks.append((f"blocks.{layer}.attn.hook_z", partial(add_head_sum, layer)))
        if want_neurons:
            hooks.append((f"blocks.{layer}.mlp.hook_post", partial(add_neuron_sum, layer)))

    device = masked.weight(masked.matrix_names[0]).device
    decoder = decoder_module(masked.hf_model)
    n_positions = 0
    with torch.no_grad(), masked.model.hooks(fwd_hooks=hooks):
        for batch in tqdm(batch_list, desc="unit means", disable=not progress, leave=False):
            current[:] = [batch.response_mask]
            decoder(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
            )
            n_positions += int(batch.response_mask.sum())
    return UnitMeans(
        head=(head_sums / n_positions).to(device) if want_heads else None,
        neuron=(neuron_sums / n_positions).to(device) if want_neurons else None,
    )


@contextmanager
def patched_units(
    masked: MaskedModel,
    head: Float[Tensor, "n_layers n_heads"] | None,
    neuron: Float[Tensor, "n_layers d_mlp"] | None,
    means: UnitMeans | None,
) -> Iterator[None]:
    """Interpolate each unit between clean (mask 1) and ablated (mask 0) inside the block.

    Without ``means`` this is zero ablation through ``MaskedModel.unit_masks``. With ``means``
    the hooks compute ``a + (1 - m) * (mean - a)``, which returns ``a`` bit for bit at ``m = 1``.
    """
    if means is None:
        with masked.unit_masks(head, neuron):
            yield
        return
    hooks = []
    for layer in range(masked.n_layers):
        if head is not None:
            check_unit_mask(head, (masked.n_layers, masked.n_heads), "head")
            if means.head is None:
                raise ScoringError("head means are missing; compute them with level='head'")
            patch = partial(_patch_heads, head, means.head, layer)
            hooks.append((f"blocks.{layer}.attn.hook_z", patch))
        if neuron is not None:
            check_unit_mask(neuron, (masked.n_layers, masked.d_mlp), "neuron")
            if means.neuron is None:
                raise ScoringError("neuron means are missing; compute them with level='neuron'")
            patch = partial(_patch_neurons, neuron, means.neuron, layer)
            hooks.append((f"blocks.{layer}.mlp.hook_post", patch))
    with masked.model.hooks(fwd_hooks=hooks):
        yield


def _patch_heads(mask: Tensor, mean: Tensor, layer: int, z: Tensor, hook: object) -> Tensor:
    # z: [batch, pos, n_heads, d_head]; mean[layer]: [n_heads, d_head]
    removed = 1.0 - mask[layer].to(z.dtype)[:, None]  # [n_heads, 1]
    return z + removed * (mean[layer].to(z.dtype) - z)


def _patch_neurons(mask: Tensor, mean: Tensor, layer: int, post: Tensor, hook: object) -> Tensor:
    # post: [batch, pos, d_mlp]; mean[layer]: [d_mlp]
    removed = 1.0 - mask[layer].to(post.dtype)
    return post + removed * (mean[layer].to(post.dtype) - post)


def _check_options(level: str, ablation: str, levels: tuple[str, ...]) -> None:
    if level not in levels:
        raise ScoringError(f"invalid level {level!r}: use one of {levels}")
    if ablation not in ("zero", "mean"):
        raise ScoringError(f"invalid ablation {ablation!r}: use 'zero' or 'mean'")


def _check_units(
    units: Sequence[tuple[int, int]] | None, shape: tuple[int, ...], level: str
) -> list[tuple[int, int]]:
    n_layers, n_units = shape
    if units is None:
        return [(layer, index) for layer in range(n_layers) for index in range(n_units)]
    checked = []
    for layer, index in units:
        if not (0 <= layer < n_layers and 0 <= index < n_units):
            raise ScoringError(
                f"{level} unit ({layer}, {index}) is out of range: layers [0, {n_layers}), "
                f"units [0, {n_units})"
            )
        checked.append((int(layer), int(index)))
    return checked


def _mask_dtype(masked: MaskedModel) -> torch.dtype:
    # float64 masks for a float64 model keep reference tests exact; float32 otherwise.
    weight_dtype = masked.weight(masked.matrix_names[0]).dtype
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def _ones_masks(
    masked: MaskedModel, level: str, dtype: torch.dtype, requires_grad: bool
) -> tuple[Tensor | None, Tensor | None]:
    device = masked.weight(masked.matrix_names[0]).device
    head = neuron = None
    if level in ("head", "both"):
        head = torch.ones(masked.n_layers, masked.n_heads, dtype=dtype, device=device)
        head.requires_grad_(requires_grad)
    if level in ("neuron", "both"):
        neuron = torch.ones(masked.n_layers, masked.d_mlp, dtype=dtype, device=device)
        neuron.requires_grad_(requires_grad)
    return head, neuron


def _finite_loss(hf_model, batch: Batch) -> float:
    loss = response_nll(hf_model, batch)
    check_finite(loss, "response loss", batch)
    return float(loss)
