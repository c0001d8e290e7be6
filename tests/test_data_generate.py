"""Response generation: batching, prefill, seeded sampling and the disk cache."""

import json
import logging

import pytest
import torch
from conftest import build_tiny_llama

from harmcircuit.data import DataError, Example, PromptSet, encode_prompt, generate_responses
from harmcircuit.data.generate import GumbelSampler, example_generator
from harmcircuit.models import model_fingerprint

TINY_PROMPTS = PromptSet(
    [
        Example("a", "w1 w2 w3"),
        Example("b", "w4"),
        Example("c", "w5 w6 w7 w8 w9 w10 w11"),
        Example("d", "w12 w13"),
        Example("e", "w14 w15 w16 w17"),
    ],
    name="tiny",
)

REAL_PROMPTS = PromptSet(
    [
        Example("tea", "How do I brew green tea?"),
        Example("sum", "What is 12 plus 30?"),
        Example("poem", "Write one line of a poem about a river at night, please."),
    ],
    name="real",
)


def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding through the bridge's full forward pass, one token at a time, no cache."""
    end = model.tokenizer.eos_token_id
    ids = list(prompt_ids)
    generated = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids]))
            next_id = int(logits[0, -1].argmax())
            if next_id == end:
                break
            generated.append(next_id)
            ids.append(next_id)
    return generated


def test_batched_equals_one_at_a_time(tiny_model):
    batched = generate_responses(
        tiny_model, TINY_PROMPTS, max_new_tokens=12, batch_size=3, progress=False
    )
    single = generate_responses(
        tiny_model, TINY_PROMPTS, max_new_tokens=12, batch_size=1, progress=False
    )
    assert batched.responses == single.responses
    assert [e.id for e in batched] == [e.id for e in TINY_PROMPTS]
    assert all(e.response is not None for e in batched)


def test_greedy_matches_bridge_reference(tiny_model):
    result = generate_responses(
        tiny_model, TINY_PROMPTS.take(3), max_new_tokens=8, batch_size=3, progress=False
    )
    tokenizer = tiny_model.tokenizer
    for example in result:
        prompt_ids = encode_prompt(tokenizer, example.prompt)
        expected = reference_greedy(tiny_model, prompt_ids, 8)
        assert example.response == tokenizer.decode(expected, skip_special_tokens=True)


def zero_head_one(z, hook):
    z[:, :, 1] = 0.0
    return z


def test_bridge_hooks_apply_during_generation(tiny_model, tmp_path, caplog):
    hooks = [("blocks.0.attn.hook_z", zero_head_one)]
    prompts = TINY_PROMPTS.take(3)
    plain = generate_responses(tiny_model, prompts, max_new_tokens=8, progress=False)
    with tiny_model.hooks(fwd_hooks=hooks), caplog.at_level(logging.WARNING):
        hooked = generate_responses(
            tiny_model, prompts, max_new_tokens=8, cache_dir=tmp_path, progress=False
        )
        tokenizer = tiny_model.tokenizer
        for example in hooked:
            expected = reference_greedy(tiny_model, encode_prompt(tokenizer, example.prompt), 8)
            assert example.response == tokenizer.decode(expected, skip_special_tokens=True)
    assert hooked.responses != plain.responses
    assert "forward hooks are active" in caplog.text
    assert not list(tmp_path.iterdir())


def test_response_excludes_end_token(tiny_model):
    result = generate_responses(tiny_model, TINY_PROMPTS, max_new_tokens=12, progress=False)
    assert all("<|im_end|>" not in e.response for e in result)
    assert all("<pad>" not in e.response for e in result)


def test_prefill_starts_response(tiny_model):
    result = generate_responses(
        tiny_model,
        TINY_PROMPTS.take(2),
        prefill="Sure",
        max_new_tokens=6,
        batch_size=2,
        progress=False,
    )
    tokenizer = tiny_model.tokenizer
    sure_id = tokenizer.convert_tokens_to_ids("Sure")
    for example in result:
        assert example.response.startswith("Sure")
        prompt_ids = encode_prompt(tokenizer, example.prompt) + [sure_id]
        continuation = reference_greedy(tiny_model, prompt_ids, 6)
        assert example.response == tokenizer.decode(
            [sure_id, *continuation], skip_special_tokens=True
        )


def test_seeded_sampling_reproducible(tiny_model):
    def sample(seed, batch_size):
        return generate_responses(
            tiny_model,
            TINY_PROMPTS,
            seed=seed,
            max_new_tokens=6,
            batch_size=batch_size,
            progress=False,
        ).responses

    first = sample(5, 2)
    assert sample(5, 2) == first
    assert sample(5, 5) == first
    assert sample(6, 2) != first
    greedy = generate_responses(tiny_model, TINY_PROMPTS, max_new_tokens=6, progress=False)
    assert greedy.responses != first


def test_sampling_leaves_global_rng_alone(tiny_model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_responses(tiny_model, TINY_PROMPTS, seed=1, max_new_tokens=4, progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gumbel_sampler_matches_softmax(temperature):
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    rows, steps = 4000, 5
    sampler = GumbelSampler([example_generator(0, str(row)) for row in range(rows)], temperature)
    input_ids = torch.zeros((rows, 1), dtype=torch.long)
    counts = torch.zeros(5)
    for _ in range(steps):
        choices = sampler(input_ids, logits.expand(rows, 5)).argmax(dim=-1)
        counts += torch.bincount(choices, minlength=5)
    draws = rows * steps
    expected = torch.softmax(logits / temperature, dim=-1)
    standard_error = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((counts / draws - expected).abs() < 5 * standard_error)


def test_cache_hit_skips_generate(tiny_model, tmp_path, monkeypatch):
    options = {"max_new_tokens": 6, "cache_dir": tmp_path, "progress": False}
    first = generate_responses(tiny_model, TINY_PROMPTS, **options)
    files = list(tmp_path.glob("responses-*.json"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("generate was called despite a cached result")

    monkeypatch.setattr(tiny_model.original_model, "generate", fail)
    second = generate_responses(tiny_model, TINY_PROMPTS, **options)
    assert second.responses == first.responses
    assert second.content_hash() == first.content_hash()
    with pytest.raises(AssertionError, match="despite a cached result"):
        generate_responses(tiny_model, TINY_PROMPTS, **{**options, "max_new_tokens": 7})


def test_corrupt_cache_regenerates(tiny_model, tmp_path, caplog):
    options = {"max_new_tokens": 6, "cache_dir": tmp_path, "progress": False}
    first = generate_responses(tiny_model, TINY_PROMPTS, **options)
    (path,) = tmp_path.glob("responses-*.json")
    path.write_text('{"format": 1, "key": "trunc', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="harmcircuit.data.generate"):
        second = generate_responses(tiny_model, TINY_PROMPTS, **options)
    assert second.responses == first.responses
    assert "ignoring unusable response cache" in caplog.text
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_pruned_weight_misses_cache(tiny_model, tmp_path, monkeypatch):
    options = {"max_new_tokens": 6, "cache_dir": tmp_path, "progress": False}
    generate_responses(tiny_model, TINY_PROMPTS, **options)
    calls = []
    original_generate = tiny_model.original_model.generate

    def counting_generate(*args, **kwargs):
        calls.append(1)
        return original_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_model.original_model, "generate", counting_generate)
    with torch.no_grad():
        tiny_model.original_model.model.layers[1].mlp.down_proj.weight[3, 5] = 0.0
    generate_responses(tiny_model, TINY_PROMPTS, **options)
    assert calls
    assert len(list(tmp_path.glob("responses-*.json"))) == 2


def test_fingerprint_equal_for_equal_weights():
    first = build_tiny_llama(seed=0)
    second = build_tiny_llama(seed=0)
    other = build_tiny_llama(seed=1)
    assert model_fingerprint(first) == model_fingerprint(second)
    assert model_fingerprint(first) != model_fingerprint(other)


def test_fingerprint_tracks_single_weight(tiny_model):
    before = model_fingerprint(tiny_model)
    assert model_fingerprint(tiny_model) == before
    with torch.no_grad():
        tiny_model.original_model.model.layers[0].self_attn.q_proj.weight[0, 0] = 0.0
    assert model_fingerprint(tiny_model) != before


def test_empty_prompt_set_rejected(tiny_model):
    with pytest.raises(DataError, match="prompt set 'nothing' is empty") as info:
        generate_responses(tiny_model, PromptSet([], name="nothing"), progress=False)
    assert "\n" not in str(info.value)


def test_invalid_options_rejected(tiny_model):
    with pytest.raises(DataError, match="max_new_tokens must be at least 1"):
        generate_responses(tiny_model, TINY_PROMPTS, max_new_tokens=0, progress=False)
    with pytest.raises(DataError, match="temperature must be positive"):
        generate_responses(tiny_model, TINY_PROMPTS, seed=0, temperature=0.0, progress=False)


@pytest.mark.real_model
def test_real_batched_equals_one_at_a_time(real_model):
    batched = generate_responses(
        real_model, REAL_PROMPTS, max_new_tokens=16, batch_size=3, progress=False
    )
    single = generate_responses(
        real_model, REAL_PROMPTS, max_new_tokens=16, batch_size=1, progress=False
    )
    assert batched.responses == single.responses
    assert all(len(e.response) > 0 for e in batched)


@pytest.mark.real_model
def test_real_prefill_in_response(real_model):
    prefill = "Sure, here is"
    result = generate_responses(
        real_model, REAL_PROMPTS.take(1), prefill=prefill, max_new_tokens=8, progress=False
    )
    response = result[0].response
    assert response.startswith(prefill)
    assert len(response) > len(prefill)

    # The first generated token is the bridge's greedy choice after the prefill tokens.
    tokenizer = real_model.tokenizer
    prefill_ids = tokenizer(prefill, add_special_tokens=False)["input_ids"]
    prompt_ids = encode_prompt(tokenizer, result[0].prompt) + prefill_ids
    (first_token,) = reference_greedy(real_model, prompt_ids, 1)
    assert response.startswith(tokenizer.decode(prefill_ids + [first_token]))
