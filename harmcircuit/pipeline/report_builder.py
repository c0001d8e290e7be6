"""Assemble a run's report.html from its metrics (every number shown comes from metrics.json)."""

import logging

import numpy as np
import torch

from harmcircuit.data.chat import encode_pair
from harmcircuit.masks import MATRIX_TYPES, MaskedModel, matrix_name
from harmcircuit.pipeline.conditions import UNPRUNED
from harmcircuit.pipeline.datasets import RunData
from harmcircuit.pipeline.weights import harm_set_name
from harmcircuit.plots import (
    attention_view,
    generation_table,
    head_attribution,
    matrix_heatmap,
    overlap_heatmap,
    pruning_curves,
    summary_table,
    top_neurons,
    weight_locations,
)
from harmcircuit.report import Report

logger = logging.getLogger(__name__)

CURVE_METRICS = {
    "harmful_nll": "harmful-response NLL (nats/token)",
    "benign_nll": "benign-response NLL (nats/token)",
    "factual_accuracy": "true/false factual accuracy",
    "compliance_rate": "compliance under prefill attack",
    "mmlu_accuracy": "MMLU accuracy (cloze)",
}
CONDITION_LABELS = {"unpruned": "unpruned", "harm": "harm set", "control": "random control"}
ATTENTION_HEADS = 4
ATTENTION_TOKENS = 64


def build_report(metrics: dict, masked: MaskedModel, data: RunData) -> Report:
    config = metrics["config"]
    report = Report(
        f"harmcircuit run: {metrics['model']['name']}",
        metadata={
            "model": metrics["model"],
            "data hashes": metrics["data"]["hashes"],
            "seed": metrics["seed"],
            "versions": metrics["versions"],
            "metrics hash": metrics["metrics_hash"],
        },
    )
    report.add_html(
        "Claims against their controls",
        summary_table(
            [
                {
                    "claim": c["claim"],
                    "metric": c["metric"],
                    "harm_set_value": c["harm_set"],
                    "control_value": c["control"],
                    "held": c["held"],
                    "note": c["note"],
                }
                for c in metrics["claims"]
            ]
        ),
        caption=f"Headline sparsity {config['headline_sparsity']:g} of the scored weights; "
        "intervals are 95% bootstrap intervals over held-out examples.",
    )
    report.add_figure(
        "Pruning curves",
        pruning_curves(_curve_rows(metrics), _present_metrics(metrics)),
        caption="Harm set (signed SNIP on harmful pairs minus the top benign weights) against a "
        "random control with the same count per matrix. Compliance and MMLU are measured at the "
        "headline sparsity only.",
    )
    headline = harm_set_name(config["headline_sparsity"])
    _add_locations(report, metrics, masked, headline)
    _add_transfer(report, metrics["transfer"])
    _add_attribution(report, metrics["attribution"])
    _add_attention(report, metrics, masked, data)
    _add_generations(report, metrics)
    _add_data(report, metrics)
    return report


def _present_metrics(metrics: dict) -> dict[str, str]:
    present = {key for entry in metrics["conditions"].values() for key in entry}
    return {key: label for key, label in CURVE_METRICS.items() if key in present}


def _curve_rows(metrics: dict) -> list[dict]:
    rows = []
    for entry in metrics["conditions"].values():
        row = {
            "condition": CONDITION_LABELS[entry["kind"]],
            "fraction": entry["fraction_of_scored"],
            "n_weights": entry["n_weights"],
        }
        for key in CURVE_METRICS:
            if key in entry:
                row[key] = entry[key].get("accuracy", entry[key])
        rows.append(row)
    return rows


def _add_locations(report: Report, metrics: dict, masked: MaskedModel, headline: str) -> None:
    locations = metrics["sets"]["sets"][headline].get("locations")
    if locations is None:
        return
    shapes = masked.weight_shapes()
    sizes = np.array(
        [
            [shapes[matrix_name(layer, kind)] for kind in MATRIX_TYPES]
            for layer in range(masked.n_layers)
        ]
    ).prod(axis=-1)
    report.add_figure(
        "Where the pruned weights sit",
        weight_locations(np.array(locations), list(MATRIX_TYPES), matrix_sizes=sizes),
        caption=f"Harm set at the headline sparsity: {metrics['conditions'][headline]['n_weights']}"
        " weights, counted by layer and matrix type.",
    )


def _add_transfer(report: Report, transfer: dict) -> None:
    labels = transfer["categories"]
    if not labels:
        return
    harm = np.array(transfer["harm_delta_nll"])
    control = np.array(transfer["control_delta_nll"])
    limit = float(max(np.abs(harm).max(), np.abs(control).max(), 1e-9))
    for title, values in (("harm sets", harm), ("random controls", control)):
        report.add_figure(
            f"Cross-category transfer: {title}",
            matrix_heatmap(
                values,
                labels,
                labels,
                f"Harmful-response NLL change, {title}",
                zmid=0.0,
                zmin=-limit,
                zmax=limit,
                colorscale="RdBu_r",
                row_title="set found on",
                col_title="category evaluated",
                colorbar_title="ΔNLL",
            ),
            caption="Each cell: NLL with the row's set pruned minus the unpruned NLL, on the "
            "column's held-out prompts (nats per response token).",
        )
    report.add_figure(
        "Overlap of per-category harm sets",
        overlap_heatmap(
            np.array(transfer["jaccard"]), np.array(transfer["expected_jaccard"]), labels
        ),
        caption="Observed Jaccard index beside the index expected for random sets of the "
        "same sizes.",
    )


def _add_attribution(report: Report, attribution: dict) -> None:
    for label, scores in attribution.items():
        report.add_figure(
            f"Head attribution on {label} pairs",
            head_attribution(
                np.array(scores["head"]),
                f"Estimated change in {label}-response loss when each head is zero-ablated",
                colorbar_title="ΔNLL (nats)",
            ),
            caption="Attribution patching: minus the gradient of the summed response loss with "
            "respect to a head mask at 1. Positive: removing the head raises the loss.",
        )
        neurons = scores["top_neurons"]
        n_layers = 1 + max(n["layer"] for n in neurons)
        n_columns = 1 + max(n["neuron"] for n in neurons)
        dense = np.zeros((n_layers, n_columns))
        for neuron in neurons:
            dense[neuron["layer"], neuron["neuron"]] = neuron["score"]
        report.add_figure(
            f"Top neurons on {label} pairs",
            top_neurons(dense, k=20, score_label="ΔNLL (nats)"),
            caption="MLP neurons whose zero-ablation is estimated to change the loss the most.",
        )


def _add_attention(report: Report, metrics: dict, masked: MaskedModel, data: RunData) -> None:
    heads = np.array(metrics["attribution"]["harmful"]["head"])
    order = np.argsort(-heads, axis=None, kind="stable")[:ATTENTION_HEADS]
    top = [tuple(int(i) for i in np.unravel_index(index, heads.shape)) for index in order]
    example = data.harmful_test[0]
    tokenizer = masked.model.tokenizer
    pair = encode_pair(tokenizer, example)
    ids = pair.input_ids[-ATTENTION_TOKENS:][None]
    patterns = {}

    def keep(pattern: torch.Tensor, hook) -> None:
        patterns[hook.name] = pattern.detach()

    names = sorted({f"blocks.{layer}.attn.hook_pattern" for layer, _ in top})
    with torch.inference_mode():
        masked.model.run_with_hooks(ids, fwd_hooks=[(name, keep) for name in names])
    stacked = np.stack(
        [patterns[f"blocks.{layer}.attn.hook_pattern"][0, head].numpy() for layer, head in top]
    )
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    report.add_html(
        "Attention of the top harm heads",
        attention_view(tokens, stacked, [f"L{layer}H{head}" for layer, head in top]),
        caption=f"The {len(top)} heads with the largest harmful attribution, on the last "
        f"{ids.shape[1]} tokens of held-out example {example.id}.",
    )


def _add_generations(report: Report, metrics: dict) -> None:
    rows = [
        {
            "prompt": row["prompt"],
            "unpruned": row["unpruned"],
            "harm_set": row["harm set"],
            "random_control": row["random control"],
            "verdicts": {
                label: row[f"{label} verdict"]
                for label in ("unpruned", "harm set", "random control")
            },
        }
        for row in metrics["generations"]
    ]
    report.add_html(
        "Generations under a prefill attack",
        generation_table(rows),
        caption=f"Held-out harmful prompts; each response starts with the prefill "
        f"{metrics['config']['prefill']!r}. Verdicts by the refusal/compliance judge. These "
        "responses were written by the model under study.",
    )


def _add_data(report: Report, metrics: dict) -> None:
    rows = []
    for split, counts in metrics["data"]["counts"].items():
        for category, count in counts.items():
            rows.append([split, category, count])
    report.add_table("Data", ["split", "category", "examples"], rows)
    unpruned = metrics["conditions"][UNPRUNED]
    report.add_text(
        "Baselines",
        f"Unpruned model: harmful-response NLL {unpruned['harmful_nll']['value']:.3f}, "
        f"benign-response NLL {unpruned['benign_nll']['value']:.3f}, factual accuracy "
        f"{unpruned['factual_accuracy']['value']:.3f} (chance 0.5), compliance under prefill "
        f"{unpruned['compliance_rate']['value']:.3f}.",
    )
