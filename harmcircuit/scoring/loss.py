"""The response loss that every scoring method differentiates or measures.

The loss is the negative log-likelihood (NLL) of the response tokens only, given the prompt
formatted with the chat template. Prompt and template tokens are never scored. It is summed over
response tokens, so that losses, gradients and scores add across batches.
"""

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, cast

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from harmcircuit.data.chat import Batch

logger = logging.getLogger(__name__)

Reduction = Literal["sum", "mean", "per_example"]


class ScoringError(ValueError):
    """A score could not be computed: a non-finite loss or gradient, or invalid options."""


def response_nll(
    hf_model: nn.Module, batch: Batch, *, reduction: Reduction = "sum"
) -> Float[Tensor, ""] | Float[Tensor, " batch"]:
    """Compute the NLL of the response tokens of a right-padded batch.

    The logit at position ``t`` predicts token ``t + 1``, so the rows that enter the loss are the
    positions just before each response token. Only those rows go through the unembedding
    (``lm_head``), which skips most of its cost: the vocabulary projection of every prompt
    position. The result equals the loss from the full logits of the bridge (tested).

    ``reduction``: ``"sum"`` (nats summed over all response tokens of the batch), ``"mean"``
    (nats per response token) or ``"per_example"`` (a ``[batch]`` tensor of summed nats).
    The loss has the dtype of the model, promoted to at least float32.
    """
    device = _model_device(hf_model)
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    response_mask = batch.response_mask.to(device)

    decoder = decoder_module(hf_model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    predicts_response = response_mask[:, 1:]  # [batch, pos - 1]
    rows = hidden[:, :-1][predicts_response]  # [n_response, d_model]
    targets = input_ids[:, 1:][predicts_response]  # [n_response]

    unembed = cast(nn.Module, hf_model.get_output_embeddings())  # type: ignore[operator]
    logits = unembed(rows)  # [n_response, d_vocab]
    logits = _apply_final_softcap(hf_model, logits)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits, targets, reduction="none")  # [n_response]

    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.mean()
    if reduction == "per_example":
        n_examples, n_positions = predicts_response.shape
        example_index = torch.arange(n_examples, device=device)[:, None]
        example_index = example_index.expand(n_examples, n_positions)[predicts_response]
        per_example = torch.zeros(n_examples, dtype=nll.dtype, device=device)
        return per_example.index_add(0, example_index, nll)
    raise ScoringError(f"invalid reduction {reduction!r}: use 'sum', 'mean' or 'per_example'")


def decoder_module(hf_model: nn.Module) -> nn.Module:
    """Return the decoder stack of a Hugging Face causal LM, without its unembedding."""
    return cast(nn.Module, hf_model.get_decoder())  # type: ignore[operator]


def _model_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _apply_final_softcap(hf_model: nn.Module, logits: Tensor) -> Tensor:
    # Gemma 2 caps its logits after lm_head; Hugging Face applies the cap in the causal-LM
    # forward, which this fast path does not call.
    # NOTE: other post-processing in a causal-LM forward (such as a logit scale factor) is not
    # applied; the equality with the full logits is tested for Llama models only.
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


@contextmanager
def requires_grad_only(module: nn.Module, parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Let only ``parameters`` require gradients inside ``module``, and restore the flags after.

    Freezing the embeddings, norms and ``lm_head`` saves their gradient computation and memory.
    Pass no parameters to freeze everything (attribution differentiates masks, not weights).
    """
    wanted = {id(parameter) for parameter in parameters}
    saved = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    try:
        for parameter, _ in saved:
            parameter.requires_grad_(id(parameter) in wanted)
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)


def check_finite(value: Tensor, what: str, batch: Batch) -> None:
    """Raise ``ScoringError`` naming the batch's example ids when ``value`` has a NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise ScoringError(
            f"non-finite {what} in the batch of examples {list(batch.example_ids)}; check those "
            "examples and score in float32 or float64"
        )


def count_loss_tokens(batch_list: Sequence[Batch]) -> int:
    """Return the number of response tokens that enter the loss (those after position 0)."""
    return sum(int(batch.response_mask[:, 1:].sum()) for batch in batch_list)
