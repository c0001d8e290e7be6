"""Benchmark harmcircuit.scoring on the embedded SmolLM2-135M-Instruct, each beside a baseline.

Measured, as medians over repeats unless stated:

1. signed SNIP over N pairs against a plain Hugging Face forward and backward pass over the
   same batches (full logits, loss over all tokens, gradients for every parameter);
   unsigned SNIP (per-example gradients from hooks) against one backward pass per example;
2. layerwise SNIP against one-pass SNIP: cost ratio and max score difference;
3. attribution patching of every head and neuron against activation patching (``ablate``) of
   all heads, with the Spearman correlation of the two head rankings;
4. zeroing and restoring 100,000 random weights with ``MaskedModel.pruned`` against reloading
   the model;
5. peak resident memory (RSS) while scoring, in a fresh subprocess per batch size, against the
   float32 model size. The child runs one forward pass first, so that the weights (read lazily
   from the safetensors cache) are resident before the peak is reset. Two ratios are printed:
   the whole process (which includes about 0.5 GiB of Python, torch and tokenizer state that
   does not depend on the model) and the model plus the memory that scoring adds on top.

The pairs are benign prompts from harmcircuit's builtin set with greedy 32-token responses
generated at the start. Run from the repository root:

    .venv/bin/python benchmarks/bench_scoring.py --pairs 16 --repeats 3

Timings on a shared CPU vary with the load of other processes; the load average is printed.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from harmcircuit.data import PromptSet, generate_responses, load_prompts
from harmcircuit.masks import MaskedModel, WeightSelection
from harmcircuit.models import load_model
from harmcircuit.scoring import (
    ablate,
    attribute,
    requires_grad_only,
    response_nll,
    scoring_batches,
    snip,
)

Row = tuple[str, str, str, str, str]


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benign_pairs(model, n_pairs: int) -> PromptSet:
    prompts = load_prompts("builtin", limit=n_pairs)
    return generate_responses(model, prompts, max_new_tokens=32, batch_size=8, progress=False)


# 1. SNIP against plain forward and backward passes


def plain_forward_backward(masked: MaskedModel, batch_list) -> None:
    """Full logits, next-token loss over every non-padding token, gradients for all parameters."""
    hf_model = masked.hf_model
    for batch in batch_list:
        logits = hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        targets = batch.input_ids[:, 1:].masked_fill(~batch.attention_mask[:, 1:], -100)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum")
        loss.backward()
    hf_model.zero_grad(set_to_none=True)


def unsigned_by_example_loop(masked: MaskedModel, pairs) -> None:
    """Unsigned SNIP totals the simple way: one forward and backward pass per example."""
    weights = list(masked.weight_matrices().values())
    totals = [torch.zeros_like(weight) for weight in weights]
    with requires_grad_only(masked.hf_model, weights):
        for batch in scoring_batches(masked.model.tokenizer, pairs, 1):
            gradients = torch.autograd.grad(response_nll(masked.hf_model, batch), weights)
            for total, gradient in zip(totals, gradients, strict=True):
                total.add_(gradient.abs())


def bench_snip(masked, pairs, batch_size: int, repeats: int) -> list[Row]:
    batch_list = scoring_batches(masked.model.tokenizer, pairs, batch_size)
    n_tokens = sum(int(batch.attention_mask.sum()) for batch in batch_list)
    baseline = median_seconds(lambda: plain_forward_backward(masked, batch_list), repeats)
    signed = median_seconds(
        lambda: snip(masked, pairs, batch_size=batch_size, progress=False), repeats
    )
    unsigned = median_seconds(
        lambda: snip(masked, pairs, signed=False, batch_size=batch_size, progress=False), repeats
    )
    # The per-example loop is the slowest part of the benchmark, so it runs once.
    loop = median_seconds(lambda: unsigned_by_example_loop(masked, pairs), 1)
    label = f"{len(pairs)} pairs, {n_tokens} tokens"
    return [
        (f"signed SNIP ({label})", f"{signed:.2f} s", f"HF fwd+bwd {baseline:.2f} s",
         f"{signed / baseline:.2f}x", "<= 1.0x"),
        (f"unsigned SNIP ({label})", f"{unsigned:.2f} s", f"HF fwd+bwd {baseline:.2f} s",
         f"{unsigned / baseline:.2f}x", "-"),
        ("unsigned SNIP: hooks vs per-example backward", f"{unsigned:.2f} s",
         f"loop {loop:.2f} s (1 run)", f"{unsigned / loop:.2f}x", "< 1x"),
    ]  # fmt: skip


# 2. Layerwise SNIP against one pass


def bench_layerwise(masked, pairs, batch_size: int) -> list[Row]:
    start = time.perf_counter()
    one_pass = snip(masked, pairs, batch_size=batch_size, progress=False)
    one_pass_seconds = time.perf_counter() - start
    start = time.perf_counter()
    layerwise = snip(masked, pairs, batch_size=batch_size, progress=False, layerwise=True)
    layerwise_seconds = time.perf_counter() - start
    max_difference = max((layerwise[n] - one_pass[n]).abs().max().item() for n in one_pass)
    max_score = max(one_pass[n].abs().max().item() for n in one_pass)
    return [
        (f"layerwise SNIP ({len(pairs)} pairs)", f"{layerwise_seconds:.1f} s",
         f"one pass {one_pass_seconds:.1f} s", f"{layerwise_seconds / one_pass_seconds:.1f}x",
         "-"),
        ("layerwise vs one pass: max abs score difference", f"{max_difference:.2e}",
         f"max abs score {max_score:.2e}", f"{max_difference / max_score:.1e} rel", "~0"),
    ]  # fmt: skip


# 3. Attribution patching against activation patching


def bench_units(masked, pairs, repeats: int) -> list[Row]:
    from scipy.stats import spearmanr

    fast: list = []

    def run_attribution() -> None:
        fast[:] = [attribute(masked, pairs, level="both", progress=False)]

    attribution_seconds = median_seconds(run_attribution, repeats)
    start = time.perf_counter()
    slow = ablate(masked, pairs, level="head", progress=False)
    ablation_seconds = time.perf_counter() - start
    n_heads = slow.head.numel()
    rho = spearmanr(fast[0].head.flatten(), slow.head.flatten()).statistic
    return [
        (f"attribution, heads + neurons ({len(pairs)} pairs)", f"{attribution_seconds:.2f} s",
         f"ablate {n_heads} heads {ablation_seconds:.1f} s",
         f"{ablation_seconds / attribution_seconds:.0f}x faster", ">= 150x"),
        (f"Spearman(attribution, ablation), {n_heads} heads", f"{rho:.3f}", "-", "-", "-"),
    ]  # fmt: skip


# 4. Pruning and restoring weights against reloading the model


def random_selection(masked: MaskedModel, count: int, seed: int = 0) -> WeightSelection:
    shapes = masked.weight_shapes()
    names = list(shapes)
    sizes = torch.tensor([rows * columns for rows, columns in shapes.values()])
    offsets = torch.cumsum(sizes, 0) - sizes
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(int(sizes.sum()), generator=generator)[:count]
    owner = torch.searchsorted(offsets, flat, right=True) - 1
    indices = {
        name: flat[owner == i] - offsets[i] for i, name in enumerate(names) if (owner == i).any()
    }
    return WeightSelection.from_indices(indices, shapes)


def bench_pruning(masked, repeats: int) -> list[Row]:
    selection = random_selection(masked, 100_000)

    def apply_and_restore() -> None:
        with masked.pruned(selection):
            pass

    pruning = median_seconds(apply_and_restore, max(repeats, 10))
    reload = median_seconds(load_model, repeats)
    return [
        (f"apply + restore {len(selection):,} weights", f"{pruning * 1000:.1f} ms",
         f"reload model {reload:.2f} s", f"{pruning / reload:.3f}x", "<= 50 ms"),
    ]  # fmt: skip


# 5. Peak memory while scoring, in a fresh process


def _status_bytes(field: str) -> int:
    """Read a memory figure such as ``VmRSS`` or ``VmHWM`` (peak RSS) from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def memory_child(method: str, pairs_file: str, batch_size: int) -> None:
    """Load the model, score the pairs and print RSS figures as JSON (child process).

    A forward pass over the first batch comes first. It pages in the weights and runs the
    libraries' one-time set-up, which are not costs of scoring. Writing 5 to
    /proc/self/clear_refs then resets the peak RSS (Linux 4.0 and later), so the peak covers
    scoring only.
    """
    model = load_model()
    masked = MaskedModel(model)
    pairs = PromptSet.from_records(json.loads(Path(pairs_file).read_text()))
    with torch.no_grad():
        response_nll(masked.hf_model, scoring_batches(model.tokenizer, pairs, batch_size)[0])
    gc.collect()
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if method == "attribution":
        attribute(masked, pairs, level="both", batch_size=batch_size, progress=False)
    else:
        signed = method == "snip_signed"
        snip(masked, pairs, signed=signed, batch_size=batch_size, progress=False)
    peak = _status_bytes("VmHWM")
    model_bytes = sum(p.numel() for p in masked.hf_model.parameters()) * 4
    print(json.dumps({"before": before, "peak": peak, "model": model_bytes}))


def bench_memory(pairs: PromptSet, batch_sizes: list[int], threads: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        pairs_file = Path(folder) / "pairs.json"
        pairs_file.write_text(json.dumps(pairs.to_records()))
        for method in ("snip_signed", "snip_unsigned", "attribution"):
            for batch_size in batch_sizes:
                command = [
                    sys.executable, __file__, "--memory-child", method, "--pairs-file",
                    str(pairs_file), "--batch-size", str(batch_size), "--threads", str(threads),
                ]  # fmt: skip
                output = subprocess.run(command, capture_output=True, text=True, check=True)
                figures = json.loads(output.stdout.strip().splitlines()[-1])
                mib = 2**20
                peak, before, model = figures["peak"], figures["before"], figures["model"]
                scoring = peak - before
                rows.append(
                    (f"peak RSS, {method}, batch {batch_size}",
                     f"model + scoring {(model + scoring) / mib:.0f} MiB "
                     f"(process {peak / mib:.0f} MiB)",
                     f"fp32 model {model / mib:.0f} MiB",
                     f"{(model + scoring) / model:.2f}x (process {peak / model:.2f}x)", "<= 3x"),
                )  # fmt: skip
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "harmcircuit", "baseline", "ratio", "target")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16, help="pairs for SNIP and memory")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per timing (median)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch")
    parser.add_argument("--layerwise-pairs", type=int, default=4, help="pairs for layerwise")
    parser.add_argument("--unit-pairs", type=int, default=2, help="pairs for attribution/ablate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--memory-batch-sizes", default="2,8", help="comma-separated pairs per batch for memory"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.pairs_file, args.batch_size)
        return

    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}")
    start = time.perf_counter()
    model = load_model()
    masked = MaskedModel(model)
    pairs = benign_pairs(model, max(args.pairs, args.layerwise_pairs, args.unit_pairs))
    print(f"model and {len(pairs)} greedy responses ready in {time.perf_counter() - start:.0f} s")

    sections = [
        lambda: bench_snip(masked, pairs.take(args.pairs), args.batch_size, args.repeats),
        lambda: bench_layerwise(masked, pairs.take(args.layerwise_pairs), args.batch_size),
        lambda: bench_units(masked, pairs.take(args.unit_pairs), args.repeats),
        lambda: bench_pruning(masked, args.repeats),
    ]
    if not args.skip_memory:
        sizes = [int(size) for size in args.memory_batch_sizes.split(",")]
        sections.append(lambda: bench_memory(pairs.take(args.pairs), sizes, args.threads))
    rows: list[Row] = []
    for section in sections:
        new_rows = section()
        for row in new_rows:
            print(" | ".join(row), f"(at {time.perf_counter() - start:.0f} s)", flush=True)
        rows += new_rows
    print(f"finished in {time.perf_counter() - start:.0f} s, load average {os.getloadavg()}")
    print_table(rows)


if __name__ == "__main__":
    main()
