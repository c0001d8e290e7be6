"""The main job: score, select, prune and evaluate, caching each stage in the run folder."""

import importlib.metadata
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from harmcircuit.masks import MaskedModel, weight_fingerprint
from harmcircuit.models import load_model
from harmcircuit.pipeline.claims import check_claims, summary_lines
from harmcircuit.pipeline.conditions import EvaluationContext, evaluate_all, evaluate_transfer
from harmcircuit.pipeline.config import RunConfig
from harmcircuit.pipeline.datasets import check_sources, load_run_prompts, prepare_data
from harmcircuit.pipeline.metrics import attribution_metrics, condition_metrics, transfer_metrics
from harmcircuit.pipeline.store import RunStore, atomic_write_json, stable_hash
from harmcircuit.pipeline.weights import select_weight_sets, unit_attributions

logger = logging.getLogger(__name__)

PACKAGES = ("harmcircuit", "torch", "transformer-lens", "transformers", "numpy", "plotly")


@dataclass
class RunResult:
    folder: Path
    metrics: dict
    summary: list[str]
    seconds: float


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _log_to_file(folder: Path) -> tuple[logging.Handler, int]:
    """Copy harmcircuit's INFO messages into ``run.log``; return the handler and the old level."""
    handler = logging.FileHandler(folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("harmcircuit")
    previous_level = package_logger.level
    # Without a configured root logger (a notebook, pytest) INFO would be dropped before the file.
    if previous_level == logging.NOTSET or previous_level > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    return handler, previous_level


def run_pipeline(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    model: TransformerBridge | None = None,
) -> RunResult:
    """Run every stage for ``config`` into the folder ``out`` and return the metrics.

    Stages already cached in ``out`` with the same inputs are reused, so an interrupted run
    resumes where it stopped. The same config and seed give an identical ``metrics.json``.
    ``model`` replaces loading ``config.model``, for a model built in memory; it must be the
    model that ``config.model`` names, because cache keys use the weights' fingerprint.
    """
    config.validate()
    check_sources(config)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    # Bad input (model, datasets, categories too small to split) fails before the run
    # folder is touched.
    if model is None:
        model = load_model(config.model)
    splits = load_run_prompts(config)
    timings["load"] = time.perf_counter() - start

    folder = Path(out)
    store = RunStore(folder)
    store.open(config.to_dict(), resume=resume, force=force)
    handler, previous_level = _log_to_file(folder)
    try:
        torch.manual_seed(config.seed)
        masked = MaskedModel(model)
        fingerprint = weight_fingerprint(masked)

        stage_start = time.perf_counter()
        data = prepare_data(model, config, splits, folder / "cache" / "responses", progress)
        timings["responses"] = time.perf_counter() - stage_start

        stage_start = time.perf_counter()
        sets = select_weight_sets(
            masked, store, config, data.harmful_train, data.benign_train, fingerprint, progress
        )
        attribution = unit_attributions(
            masked, store, config, data.harmful_train, data.benign_train, fingerprint, progress
        )
        timings["scoring"] = time.perf_counter() - stage_start

        stage_start = time.perf_counter()
        context = EvaluationContext(masked, store, config, data, fingerprint, progress)
        evaluations = evaluate_all(context, sets)
        transfer = evaluate_transfer(context, sets)
        timings["evaluation"] = time.perf_counter() - stage_start

        conditions = condition_metrics(evaluations, sets, config)
        transfer_summary = transfer_metrics(transfer, sets)
        claims = check_claims(conditions, transfer_summary, config)
        metrics = {
            "model": {
                "name": config.model,
                "fingerprint": fingerprint,
                "architecture": type(masked.hf_model).__name__,
                "n_parameters": masked.n_parameters,
                "n_scored_weights": masked.n_scored_weights,
                "n_layers": masked.n_layers,
                "n_heads": masked.n_heads,
                "d_mlp": masked.d_mlp,
            },
            "data": {"hashes": data.hashes(), "counts": data.counts()},
            "config": config.to_dict(),
            "seed": config.seed,
            "versions": package_versions(),
            "sets": sets.statistics,
            "conditions": conditions,
            "transfer": transfer_summary,
            "attribution": attribution_metrics(attribution),
            "generations": _generation_examples(evaluations, config),
            "claims": claims,
        }
        metrics["metrics_hash"] = stable_hash(metrics)

        stage_start = time.perf_counter()
        _write_outputs(folder, metrics, sets, masked, data)
        timings["report"] = time.perf_counter() - stage_start
    finally:
        package_logger = logging.getLogger("harmcircuit")
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        handler.close()
    seconds = time.perf_counter() - start
    # Timings vary between runs, so they live apart from metrics.json.
    atomic_write_json(folder / "timings.json", {**timings, "total": seconds})
    summary = summary_lines(claims)
    return RunResult(folder, metrics, summary, seconds)


def _generation_examples(evaluations: dict, config: RunConfig) -> list[dict]:
    """Side-by-side generations on held-out harmful prompts for the headline conditions."""
    from harmcircuit.pipeline.weights import control_set_name, harm_set_name

    names = {
        "unpruned": "unpruned",
        "harm set": harm_set_name(config.headline_sparsity),
        "random control": control_set_name(config.headline_sparsity),
    }
    by_condition = {
        label: evaluations[name]["headline"]["generation"]["responses"]
        for label, name in names.items()
    }
    rows = []
    for index, record in enumerate(by_condition["unpruned"]):
        row = {"id": record["id"], "prompt": record["prompt"]}
        for label, records in by_condition.items():
            row[label] = records[index]["response"]
            row[f"{label} verdict"] = _verdict_word(records[index]["verdict"])
        rows.append(row)
    return rows


def _verdict_word(verdict: dict) -> str:
    if verdict["degenerate"]:
        return "degenerate"
    return "refused" if verdict["refused"] else "complied"


def _write_outputs(folder: Path, metrics: dict, sets, masked: MaskedModel, data) -> None:
    from harmcircuit.masks import save_selections
    from harmcircuit.pipeline.report_builder import build_report

    atomic_write_json(folder / "metrics.json", metrics)
    save_selections(folder / "masks.safetensors", sets.selections, masked)
    build_report(metrics, masked, data).write(folder / "report.html")
