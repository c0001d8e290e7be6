"""Pipeline stage 5 and 6: evaluate the model unpruned, with each harm set and each control."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from harmcircuit.data import load_factual_pairs, load_mmlu, stratified_subset
from harmcircuit.evaluation import (
    RefusalJudge,
    factual_correct,
    generation_eval,
    make_shots,
    mmlu_correct,
    recognition_eval,
    response_nll,
)
from harmcircuit.masks import MaskedModel, WeightSelection
from harmcircuit.pipeline.config import RunConfig
from harmcircuit.pipeline.datasets import RECOGNITION_SHOTS, RunData
from harmcircuit.pipeline.store import RunStore, stable_hash
from harmcircuit.pipeline.weights import WeightSets, control_set_name, harm_set_name

logger = logging.getLogger(__name__)

UNPRUNED = "unpruned"


@dataclass
class EvaluationContext:
    """Model, data and run folder shared by every condition's evaluation."""

    masked: MaskedModel
    store: RunStore
    config: RunConfig
    data: RunData
    fingerprint: str
    progress: bool

    @contextmanager
    def applied(self, selection: WeightSelection | None) -> Iterator[None]:
        context = nullcontext() if selection is None else self.masked.pruned(selection)
        with context:
            yield


def _selection_hash(selection: WeightSelection | None) -> str:
    if selection is None:
        return "none"
    return stable_hash({name: index.tolist() for name, index in selection.indices.items()})


def evaluate_core(context: EvaluationContext, name: str, selection: WeightSelection | None) -> dict:
    """Harmful- and benign-response NLL on the test split and factual accuracy.

    Per-example values are kept so that differences to the unpruned model get paired
    bootstrap intervals.
    """
    config, data = context.config, context.data
    key = stable_hash(
        {
            "model": context.fingerprint,
            "selection": _selection_hash(selection),
            "data": data.hashes(),
            "factual_pairs": config.factual_pairs,
            "batch": config.batch_size,
        }
    )

    def compute() -> dict:
        model = context.masked.model
        batch_size, progress = config.batch_size, context.progress
        with context.applied(selection):
            harmful = response_nll(
                model, data.harmful_test, batch_size=batch_size, progress=progress
            )
            benign = response_nll(model, data.benign_test, batch_size=batch_size, progress=progress)
            pairs = load_factual_pairs()[: config.factual_pairs]
            factual = factual_correct(
                model, pairs, batch_size=config.batch_size * 2, progress=context.progress
            )
        return {
            "harmful_nll_per_example": list(harmful.nll),
            "benign_nll_per_example": list(benign.nll),
            "factual_correct": factual,
        }

    return context.store.cached_json(f"eval-core-{name}", key, compute)


def evaluate_headline(
    context: EvaluationContext, name: str, selection: WeightSelection | None
) -> dict:
    """Generation under a prefill attack, recognition and MMLU: the costly evaluations."""
    config, data = context.config, context.data
    key = stable_hash(
        {
            "model": context.fingerprint,
            "selection": _selection_hash(selection),
            "data": data.hashes(),
            "settings": [
                config.prefill,
                config.generation_prompts,
                config.generation_tokens,
                config.generation_batch_size,
                config.mmlu_items,
                config.recognition_per_class,
                config.seed,
            ],
        }
    )

    def compute() -> dict:
        model = context.masked.model
        prompts = data.harmful_test.cap_per_category(
            max(1, config.generation_prompts // max(1, len(data.harmful_test.categories))),
            seed=config.seed,
        ).take(config.generation_prompts)
        with context.applied(selection):
            generation = generation_eval(
                model,
                prompts,
                prefill=config.prefill,
                judge=RefusalJudge(),
                max_new_tokens=config.generation_tokens,
                batch_size=config.generation_batch_size,
                progress=context.progress,
            )
            harmful = data.harmful_test.take(config.recognition_per_class)
            benign = data.benign_test.take(config.recognition_per_class)
            # Shots come from the train splits, so no shot is also an evaluated request.
            shots = make_shots(data.harmful_train, data.benign_train, n_each=RECOGNITION_SHOTS)
            versus_benign = recognition_eval(
                model, harmful, benign, shots=shots, progress=context.progress
            )
            versus_overrefusal = recognition_eval(
                model, harmful, data.overrefusal, shots=shots, progress=context.progress
            )
            mmlu = None
            if config.mmlu_items > 0:
                items = stratified_subset(load_mmlu(), config.mmlu_items, seed=config.seed)
                mmlu = mmlu_correct(
                    model, items, batch_size=config.batch_size * 2, progress=context.progress
                )
        return {
            "generation": generation.to_dict(),
            "recognition_vs_benign": _recognition_record(versus_benign),
            "recognition_vs_overrefusal": _recognition_record(versus_overrefusal),
            "mmlu_correct": mmlu,
        }

    return context.store.cached_json(f"eval-headline-{name}", key, compute)


def _recognition_record(result) -> dict:
    """Per-example correctness and the chance levels of a recognition result."""
    predictions = [p > result.threshold for p in result.p_yes]
    return {
        "correct": [bool(p == label) for p, label in zip(predictions, result.labels, strict=True)],
        "chance": result.chance_accuracy,
        "balanced_accuracy": result.balanced_accuracy.to_dict(),
        "auroc": result.auroc,
        "threshold": result.threshold,
    }


def evaluate_all(context: EvaluationContext, sets: WeightSets) -> dict:
    """Evaluate the unpruned model and every sparsity's harm set and control."""
    config = context.config
    results: dict[str, dict] = {UNPRUNED: {"core": evaluate_core(context, UNPRUNED, None)}}
    for sparsity in config.sparsities:
        for name in (harm_set_name(sparsity), control_set_name(sparsity)):
            results[name] = {"core": evaluate_core(context, name, sets.selections[name])}
    headline = [
        (UNPRUNED, None),
        (harm_set_name(config.headline_sparsity), "harm"),
        (control_set_name(config.headline_sparsity), "control"),
    ]
    for name, _ in headline:
        selection = None if name == UNPRUNED else sets.selections[name]
        results[name]["headline"] = evaluate_headline(context, name, selection)
    return results


def evaluate_transfer(context: EvaluationContext, sets: WeightSets) -> dict:
    """Harmful-response NLL on every category's test split, for each category's harm set.

    Returns per-category NLLs for the unpruned model, each category set and its control.
    """
    categories = sorted(sets.category_sets)
    test_by_category = {c: context.data.harmful_test.filter(c) for c in categories}
    batch_size = context.config.batch_size
    key = stable_hash(
        {
            "model": context.fingerprint,
            "data": context.data.hashes(),
            "sets": {
                c: [
                    _selection_hash(sets.selections[f"category:{c}"]),
                    _selection_hash(sets.selections[f"control:{c}"]),
                ]
                for c in categories
            },
        }
    )

    def nll_by_category(selection: WeightSelection | None) -> dict[str, float]:
        model = context.masked.model
        with context.applied(selection):
            return {
                c: float(
                    np.mean(response_nll(model, test, batch_size=batch_size, progress=False).nll)
                )
                for c, test in test_by_category.items()
            }

    def compute() -> dict:
        per_set: dict[str, dict] = {}
        result = {"categories": categories, "unpruned": nll_by_category(None), "sets": per_set}
        for category in categories:
            logger.info("cross-category transfer: pruning the set found on %s", category)
            per_set[category] = {
                "harm": nll_by_category(sets.selections[f"category:{category}"]),
                "control": nll_by_category(sets.selections[f"control:{category}"]),
            }
        return result

    return context.store.cached_json("transfer", key, compute)
