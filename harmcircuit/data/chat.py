"""Chat formatting: token ids for (prompt, response) pairs with a mask on response tokens."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from harmcircuit.data.prompts import DataError, Example

# Used when a tokenizer has no chat template (base models such as Gemma 3 270M).
PLAIN_PROMPT_FORMAT = "User: {prompt}\nAssistant:"


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one formatted example.

    ``response_mask`` is true exactly on the response tokens (including the end-of-turn
    token when one was appended), never on prompt or template tokens.
    """

    example_id: str
    input_ids: Int[Tensor, " pos"]
    response_mask: Bool[Tensor, " pos"]


@dataclass(frozen=True)
class Batch:
    """Padded token ids of several pairs, ready for one forward pass."""

    example_ids: tuple[str, ...]
    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Bool[Tensor, "batch pos"]
    response_mask: Bool[Tensor, "batch pos"]

    def __len__(self) -> int:
        return len(self.example_ids)

    @property
    def n_response_tokens(self) -> int:
        return int(self.response_mask.sum())


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """Return the templated text that precedes the model's response, as a string."""
    if not _has_chat_template(tokenizer):
        text = PLAIN_PROMPT_FORMAT.format(prompt=prompt)
        return f"{system}\n{text}" if system else text
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_text(tokenizer, text: str) -> list[int]:
    """Tokenise templated text, adding BOS only when the text does not already start with it."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    wants_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if wants_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode_prompt(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of the formatted prompt, ending where the response starts."""
    return encode_text(tokenizer, format_prompt(tokenizer, prompt, system))


def end_of_turn_id(tokenizer) -> int | None:
    """Return the token that ends an assistant turn (``<|im_end|>`` for SmolLM2)."""
    return tokenizer.eos_token_id


def encode_pair(
    tokenizer,
    example: Example,
    *,
    system: str | None = None,
    append_end: bool = True,
    max_response_tokens: int | None = None,
) -> EncodedPair:
    """Encode a prompt and its response; the mask marks the response tokens only.

    The prompt and the response are tokenised separately, so the response tokens decode back
    to the response text exactly and no response token merges with the template.
    """
    if example.response is None:
        raise DataError(f"example {example.id!r} has no response to encode; generate one first")
    prompt_ids = encode_prompt(tokenizer, example.prompt, system)
    response_ids: list[int] = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if max_response_tokens is not None:
        response_ids = response_ids[:max_response_tokens]
    end = end_of_turn_id(tokenizer)
    if append_end and end is not None and (not response_ids or response_ids[-1] != end):
        response_ids = [*response_ids, end]
    if not response_ids:
        raise DataError(f"example {example.id!r} has an empty response and no end token")
    input_ids = torch.tensor(prompt_ids + response_ids, dtype=torch.long)
    response_mask = torch.zeros(len(input_ids), dtype=torch.bool)
    response_mask[len(prompt_ids) :] = True
    return EncodedPair(example.id, input_ids, response_mask)


def encode_pairs(tokenizer, examples: Sequence[Example], **options) -> list[EncodedPair]:
    """Encode every example; ``options`` are those of ``encode_pair``."""
    if len(examples) == 0:
        raise DataError("the prompt set is empty; load or filter a set with at least one example")
    return [encode_pair(tokenizer, example, **options) for example in examples]


def collate(pairs: Sequence[EncodedPair], pad_id: int, side: str = "right") -> Batch:
    """Pad pairs to one length. Right padding suits scoring; left padding suits generation."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max(len(pair.input_ids) for pair in pairs)
    input_ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), length), dtype=torch.bool)
    response_mask = torch.zeros((len(pairs), length), dtype=torch.bool)
    for row, pair in enumerate(pairs):
        n = len(pair.input_ids)
        span = slice(0, n) if side == "right" else slice(length - n, length)
        input_ids[row, span] = pair.input_ids
        attention_mask[row, span] = True
        response_mask[row, span] = pair.response_mask
    ids = tuple(pair.example_id for pair in pairs)
    return Batch(ids, input_ids, attention_mask, response_mask)


def batches(
    pairs: Sequence[EncodedPair], batch_size: int, pad_id: int, side: str = "right"
) -> list[Batch]:
    """Group pairs into padded batches, sorted by length to waste little padding.

    The order within and across batches is deterministic for the same input.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i].input_ids), i))
    groups = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return [collate([pairs[i] for i in group], pad_id, side) for group in groups]
