"""Pipeline stage 3 and 4: importance scores, harm-specific weight sets and random controls."""

import gc
import json
import logging
from dataclasses import dataclass

from harmcircuit.data import PromptSet
from harmcircuit.masks import MaskedModel, WeightSelection, load_selections, save_selections
from harmcircuit.pipeline.config import RunConfig
from harmcircuit.pipeline.store import RunStore, stable_hash
from harmcircuit.scoring import attribute, snip
from harmcircuit.selection import expected_jaccard, jaccard, random_like, top_k, top_k_outside

logger = logging.getLogger(__name__)


def sparsity_label(sparsity: float) -> str:
    return f"{sparsity:.0e}"


def harm_set_name(sparsity: float) -> str:
    return f"harm@{sparsity_label(sparsity)}"


def control_set_name(sparsity: float) -> str:
    return f"control@{sparsity_label(sparsity)}"


@dataclass
class WeightSets:
    """Every selection of a run, by name, plus overlap statistics measured while scoring."""

    selections: dict[str, WeightSelection]
    # Per harm category: the set found on that category alone at the headline sparsity.
    category_sets: dict[str, str]
    statistics: dict


def _stage_key(fingerprint: str, config: RunConfig, hashes: dict[str, str]) -> str:
    settings = {
        "sparsities": list(config.sparsities),
        "headline": config.headline_sparsity,
        "benign_fraction": config.benign_fraction,
        "scope": config.scope,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "transfer_categories": config.transfer_categories,
    }
    return stable_hash({"model": fingerprint, "data": hashes, "settings": settings})


def transfer_categories(harmful_train: PromptSet, count: int) -> list[str]:
    """Return the ``count`` largest categories of the train split (ties broken by name)."""
    counts = harmful_train.category_counts()
    ranked = sorted(counts, key=lambda category: (-counts[category], category))
    return sorted(ranked[:count])


def select_weight_sets(
    masked: MaskedModel,
    store: RunStore,
    config: RunConfig,
    harmful_train: PromptSet,
    benign_train: PromptSet,
    fingerprint: str,
    progress: bool,
) -> WeightSets:
    """Score the train split and select a harm set and a random control per sparsity.

    Harm score: signed SNIP on harmful (prompt, response) pairs; the most negative scores are
    the weights whose removal raises the harmful-response loss the most. Benign score:
    unsigned SNIP on benign pairs. Each harm set is the k most harmful weights among those
    outside the top ``config.benign_fraction`` of the benign scores, with k the sparsity times
    the number of scored weights. Each control has the same number of weights in every matrix,
    drawn uniformly.
    """
    hashes = {"harmful": harmful_train.content_hash(), "benign": benign_train.content_hash()}
    key = _stage_key(fingerprint, config, hashes)
    cached = store.load_json("weight_sets", key)
    if cached is not None:
        logger.info("stage weight_sets: reusing cached selections")
        cached_selections = load_selections(store.path(cached["file"]), masked)
        return WeightSets(cached_selections, cached["category_sets"], cached["statistics"])

    logger.info("scoring: unsigned SNIP on %d benign pairs", len(benign_train))
    benign_scores = snip(
        masked, benign_train, signed=False, batch_size=config.batch_size, progress=progress
    )
    logger.info("scoring: signed SNIP on %d harmful pairs", len(harmful_train))
    harm_scores = snip(
        masked, harmful_train, signed=True, batch_size=config.batch_size, progress=progress
    )

    selections: dict[str, WeightSelection] = {}
    statistics: dict = {"n_scored_weights": masked.n_scored_weights, "sets": {}}
    benign_top = top_k(
        benign_scores, fraction=config.benign_fraction, scope=config.scope, direction="positive"
    )
    # NOTE: the harm set is the top-k outside the benign top fraction, not the literal
    # "top-k minus benign", which was empty on SmolLM2-135M-Instruct at small sparsities.
    for index, sparsity in enumerate(config.sparsities):
        raw = top_k(harm_scores, fraction=sparsity, scope=config.scope, direction="negative")
        harm_set = top_k_outside(
            harm_scores, benign_top, fraction=sparsity, scope=config.scope, direction="negative"
        )
        control = random_like(harm_set, seed=config.seed + index)
        selections[harm_set_name(sparsity)] = harm_set
        selections[control_set_name(sparsity)] = control
        same_size_benign = top_k(
            benign_scores, k=len(raw), scope=config.scope, direction="positive"
        )
        statistics["sets"][harm_set_name(sparsity)] = {
            "sparsity": sparsity,
            "n_weights": len(harm_set),
            "fraction_of_scored": len(harm_set) / masked.n_scored_weights,
            "fraction_of_parameters": len(harm_set) / masked.n_parameters,
            # How the raw top-k harm weights relate to the benign scores, against chance.
            "raw_in_benign_top": len(raw & benign_top) / len(raw),
            "raw_in_benign_top_chance": len(benign_top) / masked.n_scored_weights,
            "raw_jaccard_with_benign": jaccard(raw, same_size_benign),
            "raw_jaccard_with_benign_chance": expected_jaccard(
                len(raw), len(same_size_benign), masked.n_scored_weights
            ),
            "locations": harm_set.count_table(masked.n_layers).tolist(),
        }
        logger.info(
            "harm set at %.0e: %d weights; %.0f%% of the raw top-k lie in the benign top %g",
            sparsity,
            len(harm_set),
            100 * statistics["sets"][harm_set_name(sparsity)]["raw_in_benign_top"],
            config.benign_fraction,
        )
    del harm_scores
    gc.collect()

    category_sets: dict[str, str] = {}
    for category in transfer_categories(harmful_train, config.transfer_categories):
        subset = harmful_train.filter(category)
        logger.info("scoring: signed SNIP on category %s (%d pairs)", category, len(subset))
        scores = snip(masked, subset, signed=True, batch_size=config.batch_size, progress=progress)
        name = f"category:{category}"
        selections[name] = top_k_outside(
            scores,
            benign_top,
            fraction=config.headline_sparsity,
            scope=config.scope,
            direction="negative",
        )
        selections[f"control:{category}"] = random_like(selections[name], seed=config.seed + 1000)
        category_sets[category] = name
        del scores
        gc.collect()
    del benign_scores
    gc.collect()

    file_name = f"selections-{key[:16]}.safetensors"
    save_selections(store.path(file_name), selections, masked)
    value = {"file": file_name, "category_sets": category_sets, "statistics": statistics}
    store.save_json("weight_sets", key, value)
    # Statistics go through JSON, so that a fresh and a resumed run report identical values.
    return WeightSets(selections, category_sets, json.loads(json.dumps(statistics)))


def unit_attributions(
    masked: MaskedModel,
    store: RunStore,
    config: RunConfig,
    harmful_train: PromptSet,
    benign_train: PromptSet,
    fingerprint: str,
    progress: bool,
) -> dict:
    """Head and neuron attribution (zero ablation) on harmful and on benign pairs.

    Each score estimates the change in the summed response loss when the unit is removed;
    a positive score means removing the unit raises the loss.
    """
    hashes = {"harmful": harmful_train.content_hash(), "benign": benign_train.content_hash()}
    key = stable_hash({"model": fingerprint, "data": hashes, "batch": config.batch_size})

    def compute() -> dict:
        result = {}
        for label, pairs in (("harmful", harmful_train), ("benign", benign_train)):
            logger.info("attribution patching on %d %s pairs", len(pairs), label)
            scores = attribute(
                masked, pairs, level="both", batch_size=config.batch_size, progress=progress
            )
            assert scores.head is not None and scores.neuron is not None
            result[label] = {"head": scores.head.tolist(), "neuron": scores.neuron.tolist()}
        return result

    return store.cached_json("attribution", key, compute)
