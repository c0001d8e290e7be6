"""Chat formatting and response masks, checked with the real SmolLM2 tokenizer."""

from collections.abc import Mapping

import pytest
import torch

from harmcircuit.data import (
    DataError,
    Example,
    batches,
    collate,
    encode_pair,
    encode_pairs,
    encode_prompt,
    format_prompt,
)
from harmcircuit.data.chat import PLAIN_PROMPT_FORMAT

EXAMPLES = [
    Example("short", "Hi!", response="Hello, how can I help?"),
    Example(
        "long", "Name three rivers in Europe.", response=" The Danube, the Rhine and the Loire."
    ),
    Example("unicode", "Translate 'tea' to Japanese.", response="お茶 (ocha)."),
]


@pytest.fixture(scope="module")
def tokenizer(real_model):
    return real_model.tokenizer


def template_ids(tokenizer, messages) -> list[int]:
    result = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(result["input_ids"] if isinstance(result, Mapping) else result)


@pytest.mark.real_model
@pytest.mark.parametrize("system", [None, "You answer briefly."])
def test_prompt_matches_chat_template(tokenizer, system):
    messages = [{"role": "user", "content": "Name three rivers in Europe."}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = format_prompt(tokenizer, messages[-1]["content"], system)
    expected_text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert text == expected_text
    assert encode_prompt(tokenizer, messages[-1]["content"], system) == template_ids(
        tokenizer, messages
    )


@pytest.mark.real_model
def test_prompt_has_single_bos(tokenizer):
    ids = encode_prompt(tokenizer, "Name three rivers in Europe.")
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.bos_token_id == start
    assert ids[0] == start
    assert ids[1] != start
    # One <|im_start|> per turn: the template's default system turn, the user and the assistant.
    assert ids.count(start) == 3
    # The tokenizer on its own would prepend a second BOS to templated text.
    text = format_prompt(tokenizer, "Name three rivers in Europe.")
    assert tokenizer(text)["input_ids"][:2] == [start, start]


@pytest.mark.real_model
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_response_mask_covers_response_only(tokenizer, example):
    pair = encode_pair(tokenizer, example)
    prompt_ids = encode_prompt(tokenizer, example.prompt)
    n_prompt = len(prompt_ids)
    end = tokenizer.eos_token_id

    assert pair.input_ids[:n_prompt].tolist() == prompt_ids
    assert not pair.response_mask[:n_prompt].any()
    assert pair.response_mask[n_prompt:].all()
    response_ids = pair.input_ids[pair.response_mask].tolist()
    assert response_ids[-1] == end
    assert tokenizer.decode(response_ids[:-1]) == example.response
    assert tokenizer.decode(response_ids, skip_special_tokens=True) == example.response


@pytest.mark.real_model
def test_response_without_end_token(tokenizer):
    example = EXAMPLES[0]
    pair = encode_pair(tokenizer, example, append_end=False)
    response_ids = pair.input_ids[pair.response_mask].tolist()
    assert tokenizer.eos_token_id not in response_ids
    assert tokenizer.decode(response_ids) == example.response


@pytest.mark.real_model
def test_response_truncation(tokenizer):
    example = EXAMPLES[1]
    pair = encode_pair(tokenizer, example, max_response_tokens=3)
    assert int(pair.response_mask.sum()) == 4
    assert pair.input_ids[-1].item() == tokenizer.eos_token_id


@pytest.mark.real_model
def test_missing_response_rejected(tokenizer):
    with pytest.raises(DataError, match="has no response"):
        encode_pair(tokenizer, Example("x", "Hi"))
    with pytest.raises(DataError, match="prompt set is empty"):
        encode_pairs(tokenizer, [])


@pytest.mark.real_model
@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_keeps_each_pair(tokenizer, side):
    pairs = encode_pairs(tokenizer, EXAMPLES)
    batch = collate(pairs, pad_id=tokenizer.pad_token_id, side=side)
    assert batch.example_ids == tuple(e.id for e in EXAMPLES)
    for row, pair in enumerate(pairs):
        kept = batch.attention_mask[row]
        assert int(kept.sum()) == len(pair.input_ids)
        assert torch.equal(batch.input_ids[row][kept], pair.input_ids)
        assert torch.equal(batch.response_mask[row][kept], pair.response_mask)
        assert not batch.response_mask[row][~kept].any()
        first_kept = int(kept.long().argmax())
        assert first_kept == (
            0 if side == "right" else batch.input_ids.shape[1] - len(pair.input_ids)
        )
    assert batch.n_response_tokens == sum(int(p.response_mask.sum()) for p in pairs)


@pytest.mark.real_model
def test_batches_cover_every_pair(tokenizer):
    pairs = encode_pairs(tokenizer, EXAMPLES)
    grouped = batches(pairs, batch_size=2, pad_id=tokenizer.pad_token_id)
    ids = [i for batch in grouped for i in batch.example_ids]
    assert sorted(ids) == sorted(e.id for e in EXAMPLES)
    assert [len(b) for b in grouped] == [2, 1]
    again = batches(pairs, batch_size=2, pad_id=tokenizer.pad_token_id)
    assert [b.example_ids for b in again] == [b.example_ids for b in grouped]


def test_plain_format_without_template(tiny_tokenizer):
    tiny_tokenizer.chat_template = None
    assert format_prompt(tiny_tokenizer, "w1 w2") == PLAIN_PROMPT_FORMAT.format(prompt="w1 w2")
    ids = encode_prompt(tiny_tokenizer, "w1 w2")
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


def test_tiny_template_single_bos(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, "w1 w2")
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids[1] != tiny_tokenizer.bos_token_id
