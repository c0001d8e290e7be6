"""Slow, obvious reference computations for the scoring tests.

Each reference runs one example at a time without padding, takes the loss from the full bridge
logits, and uses its own hooks, so that it shares no code path with harmcircuit.scoring.
"""

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from harmcircuit.data.chat import EncodedPair, encode_pairs
from harmcircuit.data.prompts import Example

# Prompts and responses in the tiny tokenizer's vocabulary, of different lengths so that
# batches need padding.
TINY_EXAMPLES = [
    Example("a", "w1 w2 w3 ?", "Sure w4 w5 ."),
    Example("b", "w7 w8", "no w9 w10 w11 w12 w13 ."),
    Example("c", "w20 w21 w22 w23 w24", "yes ."),
    Example("d", "w30 w31 w32 ?", "Sure w33 w34 w35 w36 ."),
    Example("e", "w5 w6 w7 w8 w9 w10 w11", "w12 w13 ."),
]

HookList = list[tuple[str, Callable]]


def build_tiny_float64():
    """The tiny test Llama in float64 throughout, attention softmax included.

    TransformerLens 4.3 attention bridges compute the softmax in float32, and transformers'
    LlamaRMSNorm normalises in float32, whatever the model dtype. That limits finite
    differences to about 1e-2 relative error, so both are replaced here by the same formulas
    in the input's dtype.
    """
    from conftest import build_tiny_llama
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model = build_tiny_llama()
    model.double()
    for module in model.modules():
        if hasattr(module, "_masked_softmax"):
            module._masked_softmax = _softmax_in_input_dtype
        if isinstance(module, LlamaRMSNorm):
            module.forward = partial(_rms_norm_in_input_dtype, module)
    return model


def _softmax_in_input_dtype(scores: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.softmax(scores, dim=-1)


def _rms_norm_in_input_dtype(norm: nn.Module, hidden: Tensor) -> Tensor:
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return norm.weight * (hidden * torch.rsqrt(variance + norm.variance_epsilon))


def encode(model, examples: Sequence[Example] = TINY_EXAMPLES) -> list[EncodedPair]:
    return encode_pairs(model.tokenizer, examples)


def example_loss(model, pair: EncodedPair, hooks: HookList | None = None) -> Tensor:
    """Summed response NLL of one unpadded example, from the bridge's full logits."""
    with model.hooks(fwd_hooks=hooks or []):
        logits = model(pair.input_ids[None])[0]  # [pos, vocab]
    logprobs = torch.log_softmax(logits[:-1].double(), dim=-1)  # predicts tokens 1..pos-1
    targets = pair.input_ids[1:]
    picked = logprobs.gather(-1, targets[:, None])[:, 0]
    return -picked[pair.response_mask[1:]].sum()


def total_loss(model, pairs: Sequence[EncodedPair], hooks: HookList | None = None) -> Tensor:
    return sum(
        (example_loss(model, pair, hooks) for pair in pairs), torch.zeros((), dtype=torch.float64)
    )


def owner_linear(hf_model: nn.Module, weight: Tensor) -> nn.Linear:
    for module in hf_model.modules():
        if isinstance(module, nn.Linear) and module.weight is weight:
            return module
    raise LookupError("no nn.Linear owns this weight")


def per_example_gradients(masked, pairs: Sequence[EncodedPair]) -> list[dict[str, Tensor]]:
    weights = masked.weight_matrices()
    gradients = []
    for pair in pairs:
        loss = example_loss(masked.model, pair)
        grads = torch.autograd.grad(loss, list(weights.values()))
        gradients.append(dict(zip(weights, grads, strict=True)))
    return gradients


def linear_inputs(masked, pairs: Sequence[EncodedPair]) -> dict[str, Tensor]:
    """Inputs of every scored nn.Linear over all tokens of all pairs: name -> [tokens, in]."""
    inputs: dict[str, list[Tensor]] = {name: [] for name in masked.matrix_names}
    handles = []
    for name, weight in masked.weight_matrices().items():
        module = owner_linear(masked.hf_model, weight)

        def save(module, args, name=name):
            inputs[name].append(args[0][0].detach())

        handles.append(module.register_forward_pre_hook(save))
    try:
        with torch.no_grad():
            for pair in pairs:
                masked.model(pair.input_ids[None])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(rows) for name, rows in inputs.items()}


def head_hook(layer: int, head: int, change: Callable[[Tensor], Tensor]) -> HookList:
    """A hook that replaces one head's z [batch, pos, d_head] by ``change(z)``."""

    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = change(z[:, :, head])
        return z

    return [(f"blocks.{layer}.attn.hook_z", hook)]


def neuron_hook(layer: int, neuron: int, change: Callable[[Tensor], Tensor]) -> HookList:
    """A hook that replaces one neuron's activation [batch, pos] by ``change(activation)``."""

    def hook(post, hook):
        post = post.clone()
        post[:, :, neuron] = change(post[:, :, neuron])
        return post

    return [(f"blocks.{layer}.mlp.hook_post", hook)]


def response_means(model, pairs: Sequence[EncodedPair], hook_name: str) -> Tensor:
    """Mean activation at ``hook_name`` over the response positions of all pairs."""
    rows: list[Tensor] = []

    def save(activation, hook):
        rows.append(activation[0].detach())

    total: list[Tensor] = []
    with torch.no_grad():
        for pair in pairs:
            rows.clear()
            with model.hooks(fwd_hooks=[(hook_name, save)]):
                model(pair.input_ids[None])
            total.append(rows[0][pair.response_mask])
    return torch.cat(total).double().mean(dim=0)
