"""Pipeline stage 1 and 2: prompt sets, train/test splits and model responses."""

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from harmcircuit.data import DataError, PromptSet, generate_responses, list_sources, load_prompts
from harmcircuit.pipeline.config import RunConfig

logger = logging.getLogger(__name__)

# Splitting needs at least this many examples in a category: one for train, one for test.
MIN_PER_CATEGORY = 2
# Few-shot examples per class in the recognition prompt, drawn from each train split.
RECOGNITION_SHOTS = 2


@dataclass(frozen=True)
class RunData:
    """Train and test splits with model responses, stratified by category."""

    harmful_train: PromptSet
    harmful_test: PromptSet
    benign_train: PromptSet
    benign_test: PromptSet
    overrefusal: PromptSet

    def hashes(self) -> dict[str, str]:
        return {
            "harmful_train": self.harmful_train.content_hash(),
            "harmful_test": self.harmful_test.content_hash(),
            "benign_train": self.benign_train.content_hash(),
            "benign_test": self.benign_test.content_hash(),
            "overrefusal": self.overrefusal.content_hash(),
        }

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            "harmful_train": self.harmful_train.category_counts(),
            "harmful_test": self.harmful_test.category_counts(),
            "benign_train": self.benign_train.category_counts(),
            "benign_test": self.benign_test.category_counts(),
        }


def _load_sources(sources: tuple[str, ...], per_category: int, seed: int, label: str) -> PromptSet:
    sets = []
    for source in sources:
        prompts = load_prompts(source)
        # Category names are prefixed by the dataset, so that equal names from two
        # datasets stay apart and every category stays traceable to its source.
        sets.append(_prefix_categories(prompts, source))
    combined = PromptSet.concat(sets, name=label)
    return combined.cap_per_category(per_category, seed=seed)


def _prefix_categories(prompts: PromptSet, source: str) -> PromptSet:
    examples = (
        replace(e, category=f"{source}:{e.category}" if e.category else source) for e in prompts
    )
    return PromptSet(examples, name=prompts.name)


def load_run_prompts(config: RunConfig) -> tuple[PromptSet, PromptSet, PromptSet, PromptSet]:
    """Load, cap and split the harmful and benign sets.

    Returns (harmful train, harmful test, benign train, benign test).
    """
    harmful = _load_sources(config.harmful, config.harmful_per_category, config.seed, "harmful")
    benign = _load_sources(config.benign, config.benign_per_category, config.seed, "benign")
    harmful_train, harmful_test = harmful.stratified_split(
        config.test_fraction, seed=config.seed, min_per_category=MIN_PER_CATEGORY
    )
    benign_train, benign_test = benign.stratified_split(
        config.test_fraction, seed=config.seed, min_per_category=MIN_PER_CATEGORY
    )
    for label, train in (("harmful", harmful_train), ("benign", benign_train)):
        if len(train) < RECOGNITION_SHOTS:
            raise DataError(
                f"the {label} train split has {len(train)} example(s), but the recognition "
                f"prompt needs {RECOGNITION_SHOTS} from it; add {label} prompts"
            )
    return harmful_train, harmful_test, benign_train, benign_test


def check_sources(config: RunConfig) -> None:
    """Raise DataError naming any dataset that is neither a known source nor an existing file."""
    known = set(list_sources())
    for source in (*config.harmful, *config.benign):
        if source not in known and not Path(source).is_file():
            raise DataError(
                f"unknown dataset {source!r}: use one of {sorted(known)} or a path to a "
                ".jsonl or .csv file"
            )


def prepare_data(
    model,
    config: RunConfig,
    splits: tuple[PromptSet, PromptSet, PromptSet, PromptSet],
    cache_dir: Path,
    progress: bool,
) -> RunData:
    """Generate (or reuse cached) responses for the splits of ``load_run_prompts``.

    Harmful prompts are answered under a prefill attack (the response starts with
    ``config.prefill``); benign prompts are answered plainly. Greedy decoding throughout.
    """
    harmful_train, harmful_test, benign_train, benign_test = splits
    logger.info(
        "generating responses: %d harmful (prefill %r), %d benign",
        len(harmful_train) + len(harmful_test),
        config.prefill,
        len(benign_train) + len(benign_test),
    )
    harmful_all = PromptSet.concat([harmful_train, harmful_test], name="harmful")
    benign_all = PromptSet.concat([benign_train, benign_test], name="benign")
    answered_sets = [
        generate_responses(
            model,
            prompts,
            prefill=prefill,
            max_new_tokens=config.response_tokens,
            batch_size=config.generation_batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )
        for prompts, prefill in ((harmful_all, config.prefill), (benign_all, None))
    ]
    harmful_answered, benign_answered = answered_sets
    harmful_by_id = {e.id: e for e in harmful_answered}
    benign_by_id = {e.id: e for e in benign_answered}

    def answered(split: PromptSet, by_id: dict) -> PromptSet:
        return PromptSet((by_id[e.id] for e in split), name=split.name)

    overrefusal = (
        load_prompts("overrefusal")
        .cap_per_category(config.recognition_per_class, seed=config.seed)
        .take(config.recognition_per_class)
    )
    return RunData(
        harmful_train=answered(harmful_train, harmful_by_id),
        harmful_test=answered(harmful_test, harmful_by_id),
        benign_train=answered(benign_train, benign_by_id),
        benign_test=answered(benign_test, benign_by_id),
        overrefusal=overrefusal,
    )
