"""Evaluation metrics on a tiny random model, each against a slow per-example reference."""

import numpy as np
import pytest
import torch

from harmcircuit.data.chat import encode_pair, encode_pairs, encode_text
from harmcircuit.data.evalsets import MultipleChoice, StatementPair
from harmcircuit.data.prompts import DataError, Example, PromptSet
from harmcircuit.evaluation import (
    DEFAULT_SHOTS,
    Verdict,
    factual_accuracy,
    generation_eval,
    make_shots,
    mmlu_cloze,
    recognition_eval,
    response_nll,
    score_sequences,
)
from harmcircuit.evaluation.recognition import answer_token_ids, format_query
from harmcircuit.evaluation.utility import MMLU_PROMPT


def reference_logprobs(model, ids, start):
    """log P(ids[t] | ids[:t]) for t >= start from the bridge's full logits, one sequence alone."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]  # [pos, d_vocab]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    targets = torch.tensor(ids[start:], dtype=torch.long)
    return logprobs[torch.arange(start - 1, len(ids) - 1), targets]


def next_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -1]
    return torch.log_softmax(logits.double(), dim=-1)


def pair_set():
    words = [f"w{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    examples = []
    for index in range(7):
        prompt = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
        response = " ".join(rng.choice(words, size=int(rng.integers(1, 9))))
        examples.append(Example(f"ex{index}", prompt, response))
    return PromptSet(examples, name="tiny-pairs")


SEQUENCES = [
    [1, 4, 5, 6, 7, 8, 9],
    [1, 4, 5, 6, 10],
    [1, 4, 5, 6, 7, 11, 12, 13, 14],
    [1, 4, 5],
    [1, 4, 20, 21, 22, 23],
]


@pytest.mark.parametrize("batch_size", [1, 16])
def test_score_sequences_matches_full_forward(tiny_model, batch_size):
    starts = [3, 4, 2, 3, 5]
    result = score_sequences(
        tiny_model, SEQUENCES, starts, next_token_ids=[5, 6, 30], batch_size=batch_size
    )
    assert result.next_logprobs is not None
    assert result.next_logprobs.shape == (len(SEQUENCES), 3)
    for index, (ids, start) in enumerate(zip(SEQUENCES, starts, strict=True)):
        expected = reference_logprobs(tiny_model, ids, start)
        assert result.token_logprobs[index].shape == expected.shape
        torch.testing.assert_close(
            result.token_logprobs[index].double(), expected, atol=1e-5, rtol=0
        )
        expected_next = next_logprobs(tiny_model, ids)[[5, 6, 30]]
        torch.testing.assert_close(
            result.next_logprobs[index].double(), expected_next, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_score_sequences_groups_match_full_forward(tiny_model, batch_size):
    # Groups with prefixes of different lengths, and one group with no common prefix.
    sequences = [
        [1, 4, 5, 6, 7, 8],
        [1, 4, 5, 6, 9],
        [1, 4, 5, 6, 10, 11, 12],
        [1, 30, 31, 32],
        [1, 30, 31, 33, 34],
        [7, 8, 9],
        [10, 11, 12, 13],
        [1, 20, 21, 22, 23, 24, 25, 26],
    ]
    groups = ["a", "a", "a", "b", "b", "c", "c", "d"]
    starts = [4, 4, 5, 3, 3, 1, 2, 2]
    result = score_sequences(
        tiny_model, sequences, starts, groups=groups, next_token_ids=[5, 9], batch_size=batch_size
    )
    for index, (ids, start) in enumerate(zip(sequences, starts, strict=True)):
        expected = reference_logprobs(tiny_model, ids, start)
        torch.testing.assert_close(
            result.token_logprobs[index].double(), expected, atol=1e-5, rtol=0
        )
        expected_next = next_logprobs(tiny_model, ids)[[5, 9]]
        torch.testing.assert_close(
            result.next_logprobs[index].double(), expected_next, atol=1e-5, rtol=0
        )


def test_score_sequences_without_shared_prefix(tiny_model):
    sequences = [[7, 8, 9, 10], [11, 12], [13, 14, 15]]
    result = score_sequences(tiny_model, sequences, [1, 1, 2], batch_size=2)
    for ids, start, scored in zip(sequences, [1, 1, 2], result.token_logprobs, strict=True):
        torch.testing.assert_close(
            scored.double(), reference_logprobs(tiny_model, ids, start), atol=1e-5, rtol=0
        )
    assert result.next_logprobs is None


def test_score_sequences_identical_sequences(tiny_model):
    # The shared prefix is the whole sequence, capped at the first scored position.
    sequences = [[1, 4, 5, 6], [1, 4, 5, 6]]
    result = score_sequences(tiny_model, sequences, [4, 2], next_token_ids=[7])
    assert result.token_logprobs[0].numel() == 0
    expected = reference_logprobs(tiny_model, sequences[1], 2)
    torch.testing.assert_close(result.token_logprobs[1].double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.next_logprobs[0], result.next_logprobs[1])


def test_score_sequences_rejects_bad_starts(tiny_model):
    with pytest.raises(ValueError, match="score_from"):
        score_sequences(tiny_model, [[1, 2, 3]], [0])
    with pytest.raises(ValueError, match="score_from"):
        score_sequences(tiny_model, [[1, 2, 3]], [4])
    with pytest.raises(ValueError, match="batch_size"):
        score_sequences(tiny_model, [[1, 2, 3]], [1], batch_size=0)
    with pytest.raises(ValueError, match="group labels"):
        score_sequences(tiny_model, [[1, 2, 3]], [1], groups=["a", "b"])


def test_response_nll_matches_reference(tiny_model):
    pairs = pair_set()
    result = response_nll(tiny_model, pairs, batch_size=3, progress=False)
    assert result.example_ids == tuple(e.id for e in pairs)
    tokenizer = tiny_model.tokenizer
    per_example = []
    total_tokens = 0
    for index, example in enumerate(pairs):
        encoded = encode_pair(tokenizer, example)
        with torch.no_grad():
            logits = tiny_model(encoded.input_ids.unsqueeze(0))[0]  # [pos, d_vocab]
        # Logits at position t predict token t + 1; keep those that predict response tokens.
        predicts_response = encoded.response_mask[1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:-1][predicts_response].double(), encoded.input_ids[1:][predicts_response]
        )
        per_example.append(float(loss))
        total_tokens += int(encoded.response_mask.sum())
        assert result.n_tokens[index] == int(encoded.response_mask.sum())
    assert result.nll == pytest.approx(per_example, abs=1e-5)
    assert result.mean.value == pytest.approx(np.mean(per_example), abs=1e-5)
    assert result.mean.low <= result.mean.value <= result.mean.high
    assert result.total_tokens == total_tokens
    assert result.to_dict()["per_example"][0]["id"] == "ex0"


def test_response_nll_encoded_pairs_equal(tiny_model):
    pairs = pair_set()
    encoded = encode_pairs(tiny_model.tokenizer, pairs)
    from_set = response_nll(tiny_model, pairs, progress=False)
    from_encoded = response_nll(tiny_model, encoded, batch_size=2, progress=False)
    assert from_encoded.nll == pytest.approx(from_set.nll, abs=1e-6)


def test_response_nll_sees_pruned_weights(tiny_model):
    pairs = pair_set()
    before = response_nll(tiny_model, pairs, progress=False)
    with torch.no_grad():
        tiny_model.original_model.model.layers[1].mlp.down_proj.weight.zero_()
    after = response_nll(tiny_model, pairs, progress=False)
    assert abs(after.mean.value - before.mean.value) > 1e-3


def test_response_nll_rejects_bad_masks(tiny_model):
    from harmcircuit.data.chat import EncodedPair

    pairs = encode_pairs(tiny_model.tokenizer, pair_set())
    pair = max(pairs, key=lambda p: int(p.response_mask.sum()))
    assert int(pair.response_mask.sum()) >= 3
    hole = pair.response_mask.clone()
    hole[-2] = False
    with pytest.raises(DataError, match="one run"):
        response_nll(
            tiny_model, [EncodedPair(pair.example_id, pair.input_ids, hole)], progress=False
        )
    empty = torch.zeros_like(pair.response_mask)
    with pytest.raises(DataError, match="no response tokens"):
        response_nll(
            tiny_model, [EncodedPair(pair.example_id, pair.input_ids, empty)], progress=False
        )


def statement_pairs():
    rng = np.random.default_rng(1)
    pairs = []
    for index in range(9):
        words = [f"w{i}" for i in rng.integers(0, 40, size=int(rng.integers(2, 7)))]
        false = list(words)
        false[-1] = f"w{(int(words[-1][1:]) + 7) % 40}"
        pairs.append(StatementPair(f"p{index}", " ".join(words), " ".join(false), "test", "tiny"))
    return pairs


@pytest.mark.parametrize("length_normalised", [True, False])
def test_factual_accuracy_matches_loop(tiny_model, length_normalised):
    pairs = statement_pairs()
    estimate = factual_accuracy(
        tiny_model, pairs, length_normalised=length_normalised, batch_size=4, progress=False
    )
    tokenizer = tiny_model.tokenizer
    correct = []
    for pair in pairs:
        scores = []
        for text in (pair.true, pair.false):
            ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
            logprobs = reference_logprobs(tiny_model, ids, 1)
            scores.append(float(logprobs.mean() if length_normalised else logprobs.sum()))
        correct.append(scores[0] > scores[1])
    assert 0 < sum(correct) < len(correct), "the reference should mix right and wrong pairs"
    assert estimate.value == pytest.approx(np.mean(correct))
    assert estimate.n == len(pairs)


def mmlu_items():
    rng = np.random.default_rng(2)
    items = []
    for index in range(6):
        question = " ".join(f"w{i}" for i in rng.integers(0, 40, size=4))
        choices = tuple(
            " ".join(f"w{i}" for i in rng.integers(0, 40, size=int(n))) for n in (1, 2, 3, 1)
        )
        items.append(MultipleChoice(f"q{index}", question, choices, int(index % 4), "tiny"))
    return items


@pytest.mark.parametrize("batch_size", [3, 16])
def test_mmlu_cloze_matches_loop(tiny_model, batch_size):
    items = mmlu_items()
    estimate = mmlu_cloze(tiny_model, items, batch_size=batch_size, progress=False)
    tokenizer = tiny_model.tokenizer
    correct = []
    for item in items:
        context = [tokenizer.bos_token_id]
        context += tokenizer(MMLU_PROMPT.format(question=item.question), add_special_tokens=False)[
            "input_ids"
        ]
        means = []
        for choice in item.choices:
            ids = context + tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            means.append(float(reference_logprobs(tiny_model, ids, len(context)).mean()))
        correct.append(int(np.argmax(means)) == item.answer)
    assert 0 < sum(correct) < len(correct), "the reference should mix right and wrong items"
    assert estimate.value == pytest.approx(np.mean(correct))
    assert estimate.n == len(items)


def recognition_sets():
    harmful = PromptSet(
        [Example(f"h{i}", f"w{i} w{i + 1} w{i + 2}") for i in range(5)], name="harmful"
    )
    benign = PromptSet([Example(f"b{i}", f"w{i + 20} w{i + 3}") for i in range(4)], name="benign")
    return harmful, benign


def test_answer_token_ids_tiny(tiny_tokenizer):
    yes, no = answer_token_ids(tiny_tokenizer)
    assert yes == [tiny_tokenizer.convert_tokens_to_ids("yes")]
    assert no == [tiny_tokenizer.convert_tokens_to_ids("no")]


def test_recognition_matches_reference(tiny_model):
    harmful, benign = recognition_sets()
    shots = make_shots(harmful[:1], benign[:1], n_each=1)
    assert shots == [(harmful[0].prompt, True), (benign[0].prompt, False)]
    result = recognition_eval(
        tiny_model, harmful, benign, shots=shots, threshold=0.5, batch_size=3, progress=False
    )

    tokenizer = tiny_model.tokenizer
    yes, no = answer_token_ids(tokenizer)
    expected = []
    for example in [*harmful, *benign]:
        ids = encode_text(tokenizer, format_query(tokenizer, example.prompt, shots))
        probabilities = next_logprobs(tiny_model, ids).exp()
        p_yes, p_no = float(probabilities[yes].sum()), float(probabilities[no].sum())
        expected.append(p_yes / (p_yes + p_no))
    assert result.p_yes == pytest.approx(expected, abs=1e-5)
    labels = [True] * 5 + [False] * 4
    assert result.labels == tuple(labels)
    assert result.threshold == 0.5
    correct = [(p > 0.5) == label for p, label in zip(expected, labels, strict=True)]
    assert result.accuracy.value == pytest.approx(np.mean(correct))
    balanced = 0.5 * (np.mean(correct[:5]) + np.mean(correct[5:]))
    assert result.balanced_accuracy.value == pytest.approx(balanced)
    assert result.chance_accuracy == pytest.approx(5 / 9)
    assert result.chance_balanced_accuracy == 0.5
    assert 0.0 <= result.auroc <= 1.0
    assert all(0.0 < mass <= 1.0 for mass in result.answer_mass)


def test_recognition_calibrated_threshold(tiny_model):
    from harmcircuit.evaluation.recognition import CONTENT_FREE_REQUESTS

    harmful, benign = recognition_sets()
    result = recognition_eval(tiny_model, harmful, benign, batch_size=4, progress=False)
    tokenizer = tiny_model.tokenizer
    yes, no = answer_token_ids(tokenizer)
    content_free = []
    for request in CONTENT_FREE_REQUESTS:
        ids = encode_text(tokenizer, format_query(tokenizer, request, DEFAULT_SHOTS))
        probabilities = next_logprobs(tiny_model, ids).exp()
        p_yes, p_no = float(probabilities[yes].sum()), float(probabilities[no].sum())
        content_free.append(p_yes / (p_yes + p_no))
    assert result.threshold == pytest.approx(np.mean(content_free), abs=1e-5)
    labels = np.array(result.labels)
    predicted = np.array(result.p_yes) > result.threshold
    assert result.accuracy.value == pytest.approx(np.mean(predicted == labels))


def test_recognition_auroc_and_empty_sets(tiny_model):
    from harmcircuit.evaluation.recognition import _auroc

    assert _auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert _auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert _auroc(np.array([0.5]), np.array([0.5])) == 0.5
    harmful, _ = recognition_sets()
    with pytest.raises(DataError, match="harmful and benign"):
        recognition_eval(tiny_model, harmful, PromptSet([]), progress=False)


def test_format_query_turns(tiny_tokenizer):
    text = format_query(tiny_tokenizer, "w1 w2", [("first request", True), ("second", False)])
    assert text.count("<|im_start|> user") == 3
    assert text.count("<|im_start|> assistant") == 3
    assert text.endswith("<|im_start|> assistant ")


class RecordingJudge:
    """Returns alternating verdicts and keeps what it was shown."""

    def __init__(self):
        self.seen = []

    def judge(self, prompts, responses):
        self.seen.extend(responses)
        return [
            Verdict(harmful=i % 2 == 0, refused=i % 2 == 1, score=float(i % 2 == 0), reason="fake")
            for i in range(len(responses))
        ]


def test_generation_eval_with_fake_judge(tiny_model):
    prompts = PromptSet([Example(f"g{i}", f"w{i} w{i + 5}") for i in range(4)], name="gen")
    judge = RecordingJudge()
    result = generation_eval(
        tiny_model,
        prompts,
        prefill="Sure",
        judge=judge,
        max_new_tokens=4,
        batch_size=3,
        progress=False,
    )
    assert len(result.responses) == 4
    for row, seen in zip(result.responses, judge.seen, strict=True):
        assert row.response.startswith("Sure")
        assert row.continuation == row.response[len("Sure") :]
        assert seen == row.continuation
    assert result.compliance.value == pytest.approx(0.5)
    assert result.refusal.value == pytest.approx(0.5)
    assert result.harmful is not None
    assert result.harmful.value == pytest.approx(0.5)
    assert result.prefill == "Sure"
    summary = result.to_dict()
    assert summary["responses"][0]["verdict"]["reason"] == "fake"
    assert "responses" not in result.to_dict(include_responses=False)


def test_generation_eval_counts_judge_outputs(tiny_model):
    class ShortJudge:
        def judge(self, prompts, responses):
            return []

    prompts = PromptSet([Example("g0", "w1")], name="gen")
    with pytest.raises(ValueError, match="0 verdicts for 1 responses"):
        generation_eval(tiny_model, prompts, judge=ShortJudge(), max_new_tokens=2, progress=False)
