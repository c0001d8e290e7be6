"""Wanda scores (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

The score of weight ``W[i, j]`` of an ``nn.Linear`` is ``|W[i, j]| * ||X_j||_2``, where ``X_j``
is input feature ``j`` of that layer over every calibration token. As in Wanda's calibration,
all non-padding tokens count (prompt, template and response alike), not only the response.
"""

import logging
from contextlib import ExitStack

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from harmcircuit.data.chat import Batch
from harmcircuit.masks import MaskedModel
from harmcircuit.scoring.containers import WeightScores
from harmcircuit.scoring.linears import scored_linears
from harmcircuit.scoring.loss import check_finite, count_loss_tokens, decoder_module
from harmcircuit.scoring.pairs import Pairs, scoring_batches

logger = logging.getLogger(__name__)


def wanda(
    masked: MaskedModel, pairs: Pairs, *, batch_size: int = 8, progress: bool = True
) -> WeightScores:
    """Score every weight of the scored matrices as ``|W| * ||X||_2`` (Wanda, non-negative).

    One forward pass per batch without gradients; forward pre-hooks on the scored
    ``nn.Linear`` layers add the squared input of every non-padding token per input feature.
    ``n_tokens`` in the result counts response tokens like the other methods, although Wanda
    uses all non-padding tokens. Raises ``DataError`` for empty pairs and ``ScoringError`` for a
    non-finite activation, naming the batch.
    """
    tokenizer = masked.model.tokenizer
    batch_list = scoring_batches(tokenizer, pairs, batch_size)
    linears = scored_linears(masked)
    squared_norms = {
        name: torch.zeros(linear.in_features, dtype=torch.float64, device=linear.weight.device)
        for name, linear in linears.items()
    }

    current: list[Batch] = []

    def make_hook(name: str):
        def add_squares(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            batch = current[0]
            tokens = inputs[0][batch.attention_mask.to(inputs[0].device)]  # [n_tokens, in]
            check_finite(tokens, f"input of {name}", batch)
            squared_norms[name] += tokens.double().square().sum(dim=0)

        return add_squares

    hf_model = masked.hf_model
    decoder = decoder_module(hf_model)
    device = masked.weight(masked.matrix_names[0]).device
    with ExitStack() as stack, torch.no_grad():
        for name, linear in linears.items():
            stack.callback(linear.register_forward_pre_hook(make_hook(name)).remove)
        for batch in tqdm(batch_list, desc="Wanda", disable=not progress, leave=False):
            current[:] = [batch]
            # The unembedding is skipped: no scored layer comes after the decoder.
            decoder(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
            )

    scores: dict[str, Tensor] = {}
    for name, linear in linears.items():
        weight = linear.weight.detach()
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        norms = squared_norms[name].sqrt().to(dtype)  # [in]
        scores[name] = (weight.to(dtype).abs() * norms[None, :]).cpu()  # [out, in]
    return WeightScores(
        scores,
        method="wanda",
        n_examples=sum(len(batch) for batch in batch_list),
        n_tokens=count_loss_tokens(batch_list),
        info={"norm_tokens": str(sum(int(b.attention_mask.sum()) for b in batch_list))},
    )
