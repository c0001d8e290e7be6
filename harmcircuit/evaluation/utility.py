"""General capability checks by log-probability: true/false statements and MMLU as cloze."""

import logging
import time
from collections.abc import Sequence

import numpy as np
from transformer_lens.model_bridge import TransformerBridge

from harmcircuit.data.evalsets import MultipleChoice, StatementPair
from harmcircuit.data.prompts import DataError
from harmcircuit.evaluation.forward import score_sequences
from harmcircuit.evaluation.stats import Estimate

logger = logging.getLogger(__name__)

MMLU_PROMPT = "Question: {question}\nAnswer:"
MMLU_CHANCE = 0.25
FACTUAL_CHANCE = 0.5


def factual_correct(
    model: TransformerBridge,
    pairs: Sequence[StatementPair],
    *,
    length_normalised: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> list[bool]:
    """Return, per pair, whether the true statement outscores the false one.

    Each statement is tokenised as plain text (no chat template) after the BOS token and
    scored by its mean log-probability per token, or by the total over its tokens with
    ``length_normalised=False``. Totals favour the shorter statement: in the 200 pairs of
    ``load_factual_pairs`` most true statements are longer than their false partners, and
    SmolLM2-135M-Instruct scores 24% by total against 69% per token. Ties count as wrong.
    """
    if len(pairs) == 0:
        raise DataError("no statement pairs to score; pass at least one StatementPair")
    tokenizer = model.tokenizer
    encoded = [_plain_tokens(tokenizer, text) for pair in pairs for text in (pair.true, pair.false)]
    scores = score_sequences(
        model,
        [ids for ids, _ in encoded],
        [start for _, start in encoded],
        batch_size=batch_size,
        progress=progress,
        description="factual pairs",
    )
    logprobs = [values.double() for values in scores.token_logprobs]
    statement_scores = np.array(
        [float(v.mean() if length_normalised else v.sum()) for v in logprobs]
    )
    correct = statement_scores[0::2] > statement_scores[1::2]  # [pairs]: true beats false
    return [bool(value) for value in correct]


def factual_accuracy(
    model: TransformerBridge,
    pairs: Sequence[StatementPair],
    *,
    length_normalised: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> Estimate:
    """Measure how often the true statement of a pair outscores the false one (chance 0.5).

    Scoring as in ``factual_correct``; the interval is a bootstrap over pairs.
    """
    start_time = time.perf_counter()
    correct = factual_correct(
        model, pairs, length_normalised=length_normalised, batch_size=batch_size, progress=progress
    )
    estimate = Estimate.from_values(np.array(correct, dtype=float))
    logger.info(
        "factual accuracy %s (chance %.2f) in %.1f s",
        estimate,
        FACTUAL_CHANCE,
        time.perf_counter() - start_time,
    )
    return estimate


def mmlu_correct(
    model: TransformerBridge,
    items: Sequence[MultipleChoice],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> list[bool]:
    """Return, per MMLU item, whether cloze scoring picks the right answer.

    The context is ``MMLU_PROMPT`` as plain text after BOS; each choice is appended as
    ``" " + choice`` and scored by its mean log-probability per token (length
    normalisation). The choice with the highest mean is the prediction, and ties go to the
    first. Each question's context runs once for its four choices, and ``batch_size``
    counts choices, so 16 scores four questions per forward pass.
    """
    if len(items) == 0:
        raise DataError("no MMLU items to score; pass at least one MultipleChoice")
    means = choice_mean_logprobs(model, items, batch_size=batch_size, progress=progress)
    return [int(np.argmax(m)) == item.answer for m, item in zip(means, items, strict=True)]


def mmlu_cloze(
    model: TransformerBridge,
    items: Sequence[MultipleChoice],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Estimate:
    """Measure MMLU accuracy scored as cloze (chance 0.25), as in ``mmlu_correct``.

    The interval is a bootstrap over items.
    """
    start_time = time.perf_counter()
    correct = mmlu_correct(model, items, batch_size=batch_size, progress=progress)
    estimate = Estimate.from_values(np.array(correct, dtype=float))
    logger.info(
        "MMLU cloze accuracy %s (chance %.2f) in %.1f s",
        estimate,
        MMLU_CHANCE,
        time.perf_counter() - start_time,
    )
    return estimate


def choice_mean_logprobs(
    model: TransformerBridge,
    items: Sequence[MultipleChoice],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """Return, per item, each choice's mean log-probability per token after the context."""
    tokenizer = model.tokenizer
    sequences: list[list[int]] = []
    starts: list[int] = []
    groups: list[int] = []
    for index, item in enumerate(items):
        context, _ = _plain_tokens(tokenizer, MMLU_PROMPT.format(question=item.question.strip()))
        for choice in item.choices:
            choice_ids = tokenizer(f" {choice.strip()}", add_special_tokens=False)["input_ids"]
            if not choice_ids:
                raise DataError(f"MMLU item {item.id!r} has a choice that tokenises to nothing")
            sequences.append(context + choice_ids)
            starts.append(len(context))
            groups.append(index)
    scores = score_sequences(
        model,
        sequences,
        starts,
        groups=groups,
        batch_size=batch_size,
        progress=progress,
        description="MMLU cloze",
    )
    means = [float(logprobs.double().mean()) for logprobs in scores.token_logprobs]
    n_choices = [len(item.choices) for item in items]
    offsets = np.cumsum([0, *n_choices])
    return [means[offsets[i] : offsets[i + 1]] for i in range(len(items))]


def _plain_tokens(tokenizer, text: str) -> tuple[list[int], int]:
    """Return BOS followed by the tokens of ``text``, and the index of the first text token.

    Without a BOS token the first text token has nothing to condition on and is not scored.
    """
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError(f"text {text!r} tokenises to nothing; remove empty statements")
    bos = tokenizer.bos_token_id
    if bos is None:
        # NOTE: without BOS the first token goes unscored, so totals miss one token each.
        return ids, 1
    return [bos, *ids], 1
