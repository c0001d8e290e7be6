"""Negative log-likelihood of responses given their prompts, on response tokens only."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformer_lens.model_bridge import TransformerBridge

from harmcircuit.data.chat import EncodedPair, encode_pairs
from harmcircuit.data.prompts import DataError, PromptSet
from harmcircuit.evaluation.forward import score_sequences
from harmcircuit.evaluation.stats import Estimate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LikelihoodResult:
    """Response NLL per example and over the set, in nats per response token.

    Higher NLL means the model is less likely to produce the responses. ``nll[i]`` is the mean
    over example ``i``'s response tokens, and ``mean`` averages examples with equal weight
    (bootstrap interval over examples). ``token_mean`` weights every response token equally.
    """

    example_ids: tuple[str, ...]
    nll: tuple[float, ...]
    n_tokens: tuple[int, ...]
    mean: Estimate
    token_mean: float
    total_tokens: int

    def to_dict(self) -> dict[str, object]:
        return {
            "mean": self.mean.to_dict(),
            "token_mean": self.token_mean,
            "total_tokens": self.total_tokens,
            "per_example": [
                {"id": example_id, "nll": nll, "n_tokens": n}
                for example_id, nll, n in zip(
                    self.example_ids, self.nll, self.n_tokens, strict=True
                )
            ],
        }


def response_nll(
    model: TransformerBridge,
    pairs: PromptSet | Sequence[EncodedPair],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> LikelihoodResult:
    """Measure the NLL of each response given its chat-formatted prompt.

    ``pairs`` is a prompt set whose examples all have responses (encoded with
    ``harmcircuit.data.chat.encode_pairs`` defaults, so the end-of-turn token is scored too)
    or pairs already encoded. Only tokens where ``response_mask`` is true are scored; prompt
    and template tokens are context. The model runs as it is, so prune around the call.
    """
    start_time = time.perf_counter()
    encoded = encode_pairs(model.tokenizer, pairs) if isinstance(pairs, PromptSet) else pairs
    if len(encoded) == 0:
        raise DataError("no pairs to score; pass a prompt set with at least one response")

    sequences: list[list[int]] = []
    starts: list[int] = []
    for pair in encoded:
        positions = pair.response_mask.nonzero().flatten().tolist()
        if not positions:
            raise DataError(f"example {pair.example_id!r} has no response tokens to score")
        first = positions[0]
        if first == 0 or positions != list(range(first, len(pair.input_ids))):
            raise DataError(
                f"example {pair.example_id!r}: the response mask must cover one run of tokens "
                "that ends the sequence and follows at least one prompt token; encode it with "
                "harmcircuit.data.chat.encode_pair"
            )
        sequences.append(pair.input_ids.tolist())
        starts.append(first)

    scores = score_sequences(
        model,
        sequences,
        starts,
        batch_size=batch_size,
        progress=progress,
        description="response NLL",
    )
    token_nll = [-logprobs.double() for logprobs in scores.token_logprobs]
    per_example = np.array([float(values.mean()) for values in token_nll])
    counts = tuple(len(values) for values in token_nll)
    total = sum(counts)
    token_mean = float(sum(float(values.sum()) for values in token_nll) / total)

    result = LikelihoodResult(
        example_ids=tuple(pair.example_id for pair in encoded),
        nll=tuple(float(value) for value in per_example),
        n_tokens=counts,
        mean=Estimate.from_values(per_example),
        token_mean=token_mean,
        total_tokens=total,
    )
    logger.info(
        "response NLL %s over %d tokens in %.1f s",
        result.mean,
        total,
        time.perf_counter() - start_time,
    )
    return result
