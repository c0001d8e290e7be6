"""Compare attribution patching with activation patching over every attention head.

``harmcircuit.scoring.attribute`` estimates, for every head at once, the change in the summed
response NLL when the head's output is zeroed: one forward and one backward pass per batch.
``harmcircuit.scoring.ablate`` measures the same change by zeroing one head at a time: one
forward pass per head per batch. Both return ``loss(head ablated) - loss(clean)`` in nats, so
a positive score means that removing the head raises the response loss.

This script scores all heads of a model with both methods on a few (prompt, response) pairs.
The model generates the responses itself, greedily. The script prints the Spearman rank
correlation between the two score vectors and the wall-clock time of each method, and no
response text. Run it from the repository root::

    python experiments/attribution_vs_ablation.py --n-pairs 8

It needs scipy, which the ``test`` extra installs.
"""

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from harmcircuit import DEFAULT_MODEL, MaskedModel, load_model
from harmcircuit.data import generate_responses, list_sources, load_prompts
from harmcircuit.scoring import ablate, attribute

logger = logging.getLogger("experiments.attribution_vs_ablation")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Spearman correlation between attribution patching and activation "
        "patching (zero ablation) over all attention heads, with the time each takes."
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="embedded model name or local Hugging Face folder"
    )

    # Data: which pairs are scored.
    parser.add_argument(
        "--source",
        default="builtin",
        choices=list_sources(),
        help="prompt set whose train split supplies the prompts (default: builtin, benign)",
    )
    parser.add_argument(
        "--n-pairs", type=int, default=8, help="number of (prompt, response) pairs (default: 8)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=24,
        help="length of each generated response in tokens (default: 24)",
    )
    parser.add_argument(
        "--prefill",
        default=None,
        help="text that starts every response (a prefill attack), for harmful sources",
    )

    # Scoring and output.
    parser.add_argument(
        "--ablation",
        choices=("zero", "mean"),
        default="zero",
        help="replace a head's output by zero or by its mean over response tokens",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--progress", action="store_true", help="show progress bars")

    arguments = parser.parse_args(argv)
    if arguments.n_pairs < 2:
        parser.error(f"--n-pairs must be at least 2, got {arguments.n_pairs}")
    if arguments.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {arguments.max_new_tokens}")
    return arguments


def compare(attribution: np.ndarray, ablation: np.ndarray, top: int = 10) -> dict:
    """Return rank and value agreement between two ``[n_layers, n_heads]`` score grids."""
    a, b = attribution.reshape(-1), ablation.reshape(-1)
    spearman = stats.spearmanr(a, b)
    pearson = stats.pearsonr(a, b)
    n_heads = attribution.shape[1]

    # Heads with the largest measured effect, either sign, and how many of them the
    # estimate also puts among its largest.
    top_measured = set(np.argsort(-np.abs(b), kind="stable")[:top].tolist())
    top_estimated = set(np.argsort(-np.abs(a), kind="stable")[:top].tolist())
    largest = [
        {
            "head": f"L{index // n_heads}H{index % n_heads}",
            "ablation": float(b[index]),
            "attribution": float(a[index]),
        }
        for index in np.argsort(-np.abs(b), kind="stable")[:5].tolist()
    ]
    return {
        "n_heads": int(a.size),
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "pearson": float(pearson.statistic),
        "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
        f"top{top}_overlap": len(top_measured & top_estimated) / top,
        "largest_measured": largest,
    }


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("transformers", "transformer_lens", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)

    model = load_model(arguments.model)
    masked = MaskedModel(model)
    prompts = load_prompts(arguments.source, split="train", limit=arguments.n_pairs)

    start = time.perf_counter()
    pairs = generate_responses(
        model,
        prompts,
        prefill=arguments.prefill,
        max_new_tokens=arguments.max_new_tokens,
        batch_size=arguments.batch_size,
        progress=arguments.progress,
    )
    generation_seconds = time.perf_counter() - start
    options = dict(ablation=arguments.ablation, batch_size=arguments.batch_size)

    start = time.perf_counter()
    estimated = attribute(masked, pairs, level="head", progress=arguments.progress, **options)
    attribution_seconds = time.perf_counter() - start
    logger.info("attribution patching took %.1f s", attribution_seconds)

    start = time.perf_counter()
    measured = ablate(masked, pairs, level="head", progress=arguments.progress, **options)
    ablation_seconds = time.perf_counter() - start
    logger.info("activation patching took %.1f s", ablation_seconds)

    assert estimated.head is not None and measured.head is not None
    result = {
        "model": arguments.model,
        "source": arguments.source,
        "n_pairs": len(pairs),
        "n_response_tokens": measured.n_tokens,
        "max_new_tokens": arguments.max_new_tokens,
        "prefill": arguments.prefill,
        "ablation": arguments.ablation,
        "seconds": {
            "generation": generation_seconds,
            "attribution": attribution_seconds,
            "ablation": ablation_seconds,
        },
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        **compare(estimated.head.numpy(), measured.head.numpy()),
    }
    print_summary(result)
    if arguments.out is not None:
        arguments.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {arguments.out}")
    return 0


def print_summary(result: dict) -> None:
    seconds = result["seconds"]
    print()
    print(
        f"{result['n_heads']} heads, {result['n_pairs']} pairs from {result['source']} "
        f"({result['n_response_tokens']} response tokens), {result['ablation']} ablation"
    )
    print(f"Spearman rho (attribution vs ablation): {result['spearman']:.3f}")
    print(f"Pearson r:                              {result['pearson']:.3f}")
    print(f"sign agreement:                         {result['sign_agreement']:.3f}")
    print(f"top-10 overlap by |effect|:             {result['top10_overlap']:.1f}")
    print(
        f"wall-clock: attribution {seconds['attribution']:.1f} s, "
        f"ablation {seconds['ablation']:.1f} s "
        f"({seconds['ablation'] / seconds['attribution']:.0f}x), "
        f"generation {seconds['generation']:.1f} s, "
        f"{result['machine']['torch_threads']} torch threads on "
        f"{result['machine']['cpu_count']} CPUs"
    )
    print("heads with the largest measured effect (nats, summed over response tokens):")
    for row in result["largest_measured"]:
        print(
            f"  {row['head']:>7}: ablation {row['ablation']:+9.3f}, "
            f"attribution {row['attribution']:+9.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
