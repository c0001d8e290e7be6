"""Turn stage results into the run's metrics: estimates with intervals and paired differences."""

import numpy as np

from harmcircuit.evaluation import bootstrap_ci
from harmcircuit.pipeline.conditions import UNPRUNED
from harmcircuit.pipeline.config import RunConfig
from harmcircuit.pipeline.weights import WeightSets, control_set_name, harm_set_name

TOP_NEURONS = 50


def estimate(values, config: RunConfig, salt: int = 0) -> dict:
    """Mean of ``values`` with a percentile bootstrap 95% interval over examples."""
    array = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(array, n_resamples=config.bootstrap_resamples, seed=config.seed + salt)
    return {
        "value": float(array.mean()),
        "low": float(low),
        "high": float(high),
        "n": int(len(array)),
    }


def paired_difference(values, reference, config: RunConfig) -> dict:
    """Mean of ``values - reference`` per example, with a bootstrap interval over examples."""
    return estimate(np.asarray(values, float) - np.asarray(reference, float), config, salt=7)


def condition_metrics(evaluations: dict, sets: WeightSets, config: RunConfig) -> dict:
    """Metrics per condition. Differences are pruned minus unpruned, paired by example."""
    base = evaluations[UNPRUNED]["core"]
    statistics = sets.statistics["sets"]
    result: dict[str, dict] = {}
    for name, evaluation in evaluations.items():
        core = evaluation["core"]
        kind, sparsity = _kind_and_sparsity(name, config)
        entry: dict = {"kind": kind, "sparsity": sparsity}
        if name != UNPRUNED:
            entry["n_weights"] = len(sets.selections[name])
            entry["fraction_of_scored"] = entry["n_weights"] / sets.statistics["n_scored_weights"]
        else:
            entry["n_weights"] = 0
            entry["fraction_of_scored"] = 0.0
        if kind == "harm":
            entry["set"] = statistics[name]
        entry["harmful_nll"] = estimate(core["harmful_nll_per_example"], config)
        entry["benign_nll"] = estimate(core["benign_nll_per_example"], config)
        entry["factual_accuracy"] = estimate(core["factual_correct"], config)
        entry["delta_harmful_nll"] = paired_difference(
            core["harmful_nll_per_example"], base["harmful_nll_per_example"], config
        )
        entry["delta_benign_nll"] = paired_difference(
            core["benign_nll_per_example"], base["benign_nll_per_example"], config
        )
        entry["delta_factual_accuracy"] = paired_difference(
            core["factual_correct"], base["factual_correct"], config
        )
        if "headline" in evaluation:
            entry.update(_headline_metrics(evaluation["headline"], config))
        result[name] = entry
    return result


def _kind_and_sparsity(name: str, config: RunConfig) -> tuple[str, float | None]:
    if name == UNPRUNED:
        return "unpruned", None
    for sparsity in config.sparsities:
        if name == harm_set_name(sparsity):
            return "harm", sparsity
        if name == control_set_name(sparsity):
            return "control", sparsity
    raise ValueError(f"unknown condition {name!r}")


def _headline_metrics(headline: dict, config: RunConfig) -> dict:
    records = headline["generation"]["responses"]
    complied = [r["verdict"]["complied"] for r in records]
    refused = [r["verdict"]["refused"] for r in records]
    degenerate = [r["verdict"]["degenerate"] for r in records]
    entry = {
        "compliance_rate": estimate(complied, config, salt=1),
        "refusal_rate": estimate(refused, config, salt=2),
        "degenerate_rate": estimate(degenerate, config, salt=3),
        "recognition_vs_benign": _recognition(headline["recognition_vs_benign"], config),
        "recognition_vs_overrefusal": _recognition(headline["recognition_vs_overrefusal"], config),
    }
    if headline.get("mmlu_correct") is not None:
        entry["mmlu_accuracy"] = estimate(headline["mmlu_correct"], config, salt=4)
    return entry


def _recognition(result: dict, config: RunConfig) -> dict:
    return {
        "accuracy": estimate(result["correct"], config, salt=5),
        "balanced_accuracy": result["balanced_accuracy"],
        "chance": result["chance"],
        "auroc": result["auroc"],
    }


def transfer_metrics(transfer: dict, sets: WeightSets) -> dict:
    """Transfer matrices (rows: category the set was found on; columns: category evaluated).

    Each cell is the harmful-response NLL with the row's set pruned minus the unpruned NLL on
    the column's test split; the control matrix does the same for the row's random control.
    """
    from harmcircuit.selection import expected_jaccard, jaccard

    categories = transfer["categories"]
    unpruned = transfer["unpruned"]
    harm = [[transfer["sets"][r]["harm"][c] - unpruned[c] for c in categories] for r in categories]
    control = [
        [transfer["sets"][r]["control"][c] - unpruned[c] for c in categories] for r in categories
    ]
    selections = [sets.selections[sets.category_sets[c]] for c in categories]
    n_total = sets.statistics["n_scored_weights"]
    overlap = [[jaccard(a, b) for b in selections] for a in selections]
    expected = [[expected_jaccard(len(a), len(b), n_total) for b in selections] for a in selections]
    return {
        "categories": categories,
        "unpruned_nll": unpruned,
        "harm_delta_nll": harm,
        "control_delta_nll": control,
        "jaccard": overlap,
        "expected_jaccard": expected,
        "set_sizes": [len(s) for s in selections],
    }


def attribution_metrics(attribution: dict) -> dict:
    """Head scores in full and the neurons with the largest scores, for harmful and benign pairs."""
    result = {}
    for label, scores in attribution.items():
        neurons = np.asarray(scores["neuron"], dtype=np.float64)
        order = np.argsort(-np.abs(neurons), axis=None, kind="stable")[:TOP_NEURONS]
        layers, indices = np.unravel_index(order, neurons.shape)
        result[label] = {
            "head": scores["head"],
            "top_neurons": [
                {"layer": int(layer), "neuron": int(index), "score": float(neurons[layer, index])}
                for layer, index in zip(layers, indices, strict=True)
            ],
        }
    return result
