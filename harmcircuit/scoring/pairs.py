"""Turn (prompt, response) pairs into right-padded batches for scoring."""

from collections.abc import Sequence
from typing import cast

from harmcircuit.data.chat import Batch, EncodedPair, batches, encode_pairs
from harmcircuit.data.prompts import DataError, Example, PromptSet

# A prompt set whose examples all have responses, a sequence of such examples, or pairs that
# were encoded before (for example to share one encoding between several scoring methods).
Pairs = PromptSet | Sequence[Example] | Sequence[EncodedPair]


def encode_scoring_pairs(tokenizer, pairs: Pairs) -> list[EncodedPair]:
    """Encode examples with ``encode_pairs``, or pass encoded pairs through.

    Raises ``DataError`` for an empty input or an example without a response.
    """
    if len(pairs) == 0:
        raise DataError("no pairs to score; pass a prompt set with at least one example")
    items = list(pairs)
    if all(isinstance(item, EncodedPair) for item in items):
        return cast(list[EncodedPair], items)
    if not all(isinstance(item, Example) for item in items):
        kinds = sorted({type(item).__name__ for item in items})
        raise DataError(f"pairs must all be Example or all EncodedPair, got {kinds}")
    examples = cast(list[Example], items)
    missing = [example.id for example in examples if example.response is None]
    if missing:
        raise DataError(
            f"{len(missing)} examples have no response, first {missing[:5]}; generate responses "
            "before scoring"
        )
    return encode_pairs(tokenizer, examples)


def scoring_batches(tokenizer, pairs: Pairs, batch_size: int) -> list[Batch]:
    """Encode ``pairs`` and group them into right-padded batches sorted by length."""
    encoded = encode_scoring_pairs(tokenizer, pairs)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if pad_id is None:
        # Right padding sits after every real token and is masked out, so any id works.
        pad_id = 0
    return batches(encoded, batch_size, pad_id, side="right")
