"""SNIP scores of single weights: signed ``W * dL/dW`` and unsigned ``|W| * sum |dL_e/dW|``.

``L`` is the response NLL summed over response tokens (``harmcircuit.scoring.loss``).

- Signed SNIP sums ``W * dL_e/dW`` over examples ``e``. The sum is linear in the gradient, so it
  equals ``W * dL/dW`` of the summed loss: one backward pass per batch, gradients summed over
  batches, one multiplication by ``W`` at the end. Zeroing a weight changes the loss by about
  ``-s`` (first order), so the most negative scores mark the weights whose removal raises the
  loss most.
- Unsigned SNIP sums ``|W| * |dL_e/dW|`` over examples, which needs one gradient per example.
  For ``nn.Linear`` with input ``x`` and output gradient ``g`` the per-example gradient is
  ``sum_t g[e, t]^T x[e, t]``, so hooks on the scored layers form it exactly from one batched
  forward and backward pass, with no weight gradient computed by autograd. On SmolLM2-135M on a
  2-core CPU this was several times faster than one backward pass per example (measured with
  ``benchmarks/bench_scoring.py``); the per-example loop stays as the test reference.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harmcircuit.data.chat import Batch
from harmcircuit.masks import MaskedModel, matrix_layer
from harmcircuit.scoring.containers import WeightScores
from harmcircuit.scoring.linears import scored_linears
from harmcircuit.scoring.loss import (
    check_finite,
    count_loss_tokens,
    decoder_module,
    requires_grad_only,
    response_nll,
)
from harmcircuit.scoring.pairs import Pairs, scoring_batches

logger = logging.getLogger(__name__)


def snip(
    masked: MaskedModel,
    pairs: Pairs,
    *,
    signed: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    layerwise: bool = False,
) -> WeightScores:
    """Score every weight of the scored matrices with SNIP on the response loss of ``pairs``.

    ``signed=True`` gives ``s = W * sum_e dL_e/dW`` (method ``"snip_signed"``);
    ``signed=False`` gives ``|W| * sum_e |dL_e/dW|`` (method ``"snip_unsigned"``), where ``L_e``
    is the summed response NLL of example ``e``. Scores add across examples, so scoring two
    sets separately and adding equals scoring their union.

    ``layerwise=True`` computes gradients for one decoder layer at a time, with one forward and
    backward pass per layer per batch. Autograd then keeps activations only from that layer on,
    which saves memory for models whose full backward does not fit, at about ``n_layers`` times
    the compute. The scores equal the one-pass scores up to float rounding.

    Raises ``DataError`` for empty pairs or examples without responses, and ``ScoringError``
    naming the batch's example ids when a loss or gradient is NaN or infinite.
    """
    tokenizer = masked.model.tokenizer
    batch_list = scoring_batches(tokenizer, pairs, batch_size)
    groups = _layer_groups(masked, layerwise)
    if signed:
        totals = _summed_gradients(masked, batch_list, groups, progress)
    else:
        totals = _summed_absolute_gradients(masked, batch_list, groups, progress)

    weights = masked.weight_matrices()
    scores: dict[str, Tensor] = {}
    for name, total in totals.items():
        weight = weights[name].detach().to(device=total.device, dtype=total.dtype)
        factor = weight if signed else weight.abs()
        scores[name] = total.mul_(factor).cpu()  # in place: no second copy of the weights
    n_examples = sum(len(batch) for batch in batch_list)
    return WeightScores(
        scores,
        method="snip_signed" if signed else "snip_unsigned",
        n_examples=n_examples,
        n_tokens=count_loss_tokens(batch_list),
        info={"layerwise": str(layerwise)},
    )


def _layer_groups(masked: MaskedModel, layerwise: bool) -> list[list[str]]:
    """Return the matrix names to differentiate per pass: all at once, or one layer per pass."""
    names = list(masked.matrix_names)
    if not layerwise:
        return [names]
    return [[n for n in names if matrix_layer(n) == layer] for layer in range(masked.n_layers)]


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _progress_bar(total: int, progress: bool, description: str) -> tqdm:
    return tqdm(total=total, desc=description, disable=not progress, leave=False)


# Signed SNIP: summed weight gradients


def _summed_gradients(
    masked: MaskedModel, batch_list: Sequence[Batch], groups: list[list[str]], progress: bool
) -> dict[str, Tensor]:
    """Return ``sum over batches of dL_batch/dW`` for every scored matrix.

    Each gradient leaves ``.grad`` as soon as autograd writes it (a post-accumulate hook) and is
    added to a per-matrix total, so memory holds one total per matrix, not a total plus a
    gradient. The first gradient of a matrix becomes its total without a copy.
    """
    weights = masked.weight_matrices()
    totals: dict[str, Tensor] = {}
    current: list[Batch] = []

    def take_gradient(name: str, parameter: Tensor) -> None:
        gradient = parameter.grad
        parameter.grad = None
        assert gradient is not None
        check_finite(gradient, f"gradient of {name}", current[0])
        if name in totals:
            totals[name].add_(gradient)
        else:
            dtype = _accumulator_dtype(gradient.dtype)
            totals[name] = gradient if gradient.dtype == dtype else gradient.to(dtype)

    hf_model = masked.hf_model
    bar = _progress_bar(len(batch_list) * len(groups), progress, "SNIP (signed)")
    with ExitStack() as stack:
        stack.enter_context(_detached_grads(weights.values()))
        for name, parameter in weights.items():
            hook = parameter.register_post_accumulate_grad_hook(_bind(take_gradient, name))
            stack.callback(hook.remove)
        for batch in batch_list:
            current[:] = [batch]
            for group in groups:
                with requires_grad_only(hf_model, [weights[name] for name in group]):
                    loss = response_nll(hf_model, batch)
                    check_finite(loss, "response loss", batch)
                    loss.backward()
                bar.update()
    bar.close()
    return totals


def _bind(function: Callable[[str, Tensor], None], name: str) -> Callable[[Tensor], None]:
    return lambda parameter: function(name, parameter)


@contextmanager
def _detached_grads(parameters) -> Iterator[None]:
    """Set ``.grad`` to None inside the block and put the caller's gradients back after."""
    saved = [(parameter, parameter.grad) for parameter in parameters]
    for parameter, _ in saved:
        parameter.grad = None
    try:
        yield
    finally:
        for parameter, gradient in saved:
            parameter.grad = gradient


# Unsigned SNIP: summed absolute per-example weight gradients


def _summed_absolute_gradients(
    masked: MaskedModel, batch_list: Sequence[Batch], groups: list[list[str]], progress: bool
) -> dict[str, Tensor]:
    """Return ``sum over examples e of |dL_e/dW|`` for every scored matrix.

    Forward hooks save each scored layer's input ``x [batch, pos, in]``, and a hook on its
    output gradient ``g [batch, pos, out]`` adds ``|g[e]^T x[e]|`` for each example ``e``. With
    right padding, positions after an example's last token have zero output gradient (causal
    attention), so each product stops at the example's length. Every parameter stays frozen,
    and the input of the group's first layer is made a leaf that requires grad, so autograd
    builds the graph from that layer on and computes no weight gradient.
    """
    linears = scored_linears(masked)
    totals = {
        name: torch.zeros(
            linear.weight.shape,
            dtype=_accumulator_dtype(linear.weight.dtype),
            device=linear.weight.device,
        )
        for name, linear in linears.items()
    }
    hf_model = masked.hf_model
    bar = _progress_bar(len(batch_list) * len(groups), progress, "SNIP (unsigned)")
    for batch in batch_list:
        lengths = batch.attention_mask.sum(dim=1).tolist()
        for group in groups:
            first_layer = min(matrix_layer(name) for name in group)
            with ExitStack() as stack:
                stack.enter_context(requires_grad_only(hf_model, []))
                stack.enter_context(_layer_input_requires_grad(hf_model, first_layer))
                for name in group:
                    accumulate = _PerExampleAbsGradient(name, totals[name], lengths, batch)
                    handle = linears[name].register_forward_hook(accumulate.on_forward)
                    stack.callback(handle.remove)
                loss = response_nll(hf_model, batch)
                check_finite(loss, "response loss", batch)
                loss.backward()
            bar.update()
    bar.close()
    return totals


class _PerExampleAbsGradient:
    """Forward and gradient hooks that add ``|dL_e/dW|`` of one ``nn.Linear`` to a total."""

    def __init__(self, name: str, total: Tensor, lengths: list[int], batch: Batch) -> None:
        self.name = name
        self.total = total
        self.lengths = lengths
        self.batch = batch

    def on_forward(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        activation = inputs[0].detach()  # [batch, pos, in]
        output.register_hook(lambda gradient: self.on_gradient(activation, gradient))

    def on_gradient(self, activation: Tensor, gradient: Tensor) -> None:
        # Checking both factors is far cheaper than checking every product, and a product of
        # finite factors is finite unless it overflows.
        check_finite(gradient, f"output gradient of {self.name}", self.batch)
        check_finite(activation, f"input of {self.name}", self.batch)
        dtype = self.total.dtype
        per_example = torch.empty_like(self.total)  # [out, in], reused for every example
        for example, length in enumerate(self.lengths):
            g = gradient[example, :length].to(dtype)  # [pos, out]
            x = activation[example, :length].to(dtype)  # [pos, in]
            torch.mm(g.T, x, out=per_example)
            self.total.add_(per_example.abs_())


@contextmanager
def _layer_input_requires_grad(hf_model: nn.Module, layer: int) -> Iterator[None]:
    """Replace the hidden states entering decoder layer ``layer`` by a leaf that requires grad."""

    def make_leaf(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": hidden.detach().requires_grad_(True)}

    layers = cast(nn.ModuleList, decoder_module(hf_model).layers)
    decoder_layer = layers[layer]
    handle = decoder_layer.register_forward_pre_hook(make_leaf, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
