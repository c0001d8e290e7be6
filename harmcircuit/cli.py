"""The ``harmcircuit`` command."""

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

from harmcircuit.pipeline.config import DEFAULT_SPARSITIES, default_config, quick_config

logger = logging.getLogger("harmcircuit.cli")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(value) for value in text.split(",") if value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions such as 1e-6,5e-6, got {text!r}"
        ) from None
    for value in values:
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"sparsity {value} is outside (0, 1]: give fractions of the scored weights"
            )
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmcircuit",
        description="Find, prune and inspect the weights that a language model uses to "
        "generate harmful content.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the whole pipeline and write report.html, metrics.json and masks.safetensors",
    )
    run.add_argument(
        "--model", default="smollm2-135m-instruct", help="embedded model name or local folder"
    )
    run.add_argument(
        "--harmful",
        type=_names,
        default=("harmbench", "strongreject"),
        help="comma-separated harmful prompt sets (default: harmbench,strongreject)",
    )
    run.add_argument(
        "--benign",
        type=_names,
        default=("builtin", "aplomb"),
        help="comma-separated benign prompt sets (default: builtin,aplomb)",
    )
    run.add_argument(
        "--sparsities",
        type=_fractions,
        default=None,
        help="comma-separated fractions of the scored weights to select before the set "
        f"difference (default: {','.join(f'{s:g}' for s in DEFAULT_SPARSITIES)})",
    )
    run.add_argument(
        "--headline",
        type=float,
        default=5e-6,
        help="sparsity that gets generation, recognition and MMLU evaluations (default: 5e-6)",
    )
    run.add_argument(
        "--benign-fraction",
        type=float,
        default=0.01,
        help="set difference: harm sets exclude this top fraction of the benign scores "
        "(default: 0.01)",
    )
    run.add_argument(
        "--scope",
        choices=("global", "matrix"),
        default="global",
        help="rank weights globally or per matrix",
    )
    run.add_argument("--seed", type=int, default=0, help="seed for splits, controls and bootstrap")
    run.add_argument(
        "--quick", action="store_true", help="small preset: about 3 minutes on 2 CPU cores"
    )
    run.add_argument("--out", default=None, help="run folder (default: runs/YYYYmmdd-HHMMSS)")
    run.add_argument(
        "--resume", action="store_true", help="continue a run in --out, reusing its cached stages"
    )
    run.add_argument("--force", action="store_true", help="delete the contents of --out first")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def _config_from(arguments: argparse.Namespace):
    overrides = dict(
        model=arguments.model,
        harmful=arguments.harmful,
        benign=arguments.benign,
        headline_sparsity=arguments.headline,
        benign_fraction=arguments.benign_fraction,
        scope=arguments.scope,
        seed=arguments.seed,
    )
    if arguments.sparsities is not None:
        overrides["sparsities"] = arguments.sparsities
    config = quick_config(**overrides) if arguments.quick else default_config(**overrides)
    config.validate()
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # Keep third-party libraries quiet unless asked.
    for name in ("transformers", "transformer_lens", "huggingface_hub", "httpx"):
        logging.getLogger(name).setLevel(logging.DEBUG if arguments.verbose else logging.ERROR)
    if arguments.command == "run":
        return _run(arguments, parser)
    parser.error(f"unknown command {arguments.command!r}")
    return 2


def _run(arguments: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from harmcircuit.pipeline.run import run_pipeline

    try:
        config = _config_from(arguments)
    except ValueError as error:
        parser.error(str(error))
    out = arguments.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}"
    try:
        result = run_pipeline(
            config,
            out,
            resume=arguments.resume,
            force=arguments.force,
            progress=not arguments.no_progress,
        )
    except KeyboardInterrupt:
        if (Path(out) / "run.json").is_file():
            message = f"finished stages are cached in {out}, so rerun with --resume to continue"
        else:
            message = f"nothing was written to {out} yet"
        print(f"harmcircuit: interrupted; {message}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as error:
        if arguments.verbose:
            raise
        print(f"harmcircuit: error: {error}", file=sys.stderr)
        return 1
    print(f"\nRun finished in {result.seconds:.0f} s: {result.folder}")
    print(f"  report:  {result.folder / 'report.html'}")
    print(f"  metrics: {result.folder / 'metrics.json'}")
    print(f"  masks:   {result.folder / 'masks.safetensors'}")
    print("\nClaims against their controls (headline sparsity):")
    for line in result.summary:
        print(f"  - {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
