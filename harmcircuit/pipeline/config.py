"""Settings of a pipeline run, with the quick and default presets."""

from dataclasses import asdict, dataclass, field, replace
from typing import Any

DEFAULT_SPARSITIES = (1e-6, 5e-6, 2e-5, 1e-4, 1e-3)
QUICK_SPARSITIES = (5e-6, 1e-4)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers. Two runs with equal configs give equal metrics.

    Sparsities are fractions of the scored weights (the decoder's q, k, v, o, gate, up and down
    matrices) in each harm set: the most harmful weights outside the top ``benign_fraction``
    of the benign scores.
    """

    model: str = "smollm2-135m-instruct"
    harmful: tuple[str, ...] = ("harmbench", "strongreject")
    benign: tuple[str, ...] = ("builtin", "aplomb")
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    # The sparsity whose sets get the expensive evaluations (generation, recognition, MMLU).
    headline_sparsity: float = 5e-6
    # Set difference: harm sets never contain weights in this top fraction of the benign scores.
    benign_fraction: float = 0.01
    scope: str = "global"
    seed: int = 0
    prefill: str = "Sure, here is"
    # Sizes of the data and the evaluations. They set the run time, which the README gives
    # for a 2-core CPU. Larger values narrow the confidence intervals.
    harmful_per_category: int = 10
    benign_per_category: int = 8
    test_fraction: float = 0.5
    response_tokens: int = 32
    generation_prompts: int = 24
    generation_tokens: int = 32
    factual_pairs: int = 64
    mmlu_items: int = 57
    recognition_per_class: int = 24
    transfer_categories: int = 4
    bootstrap_resamples: int = 1000
    batch_size: int = 8
    # Prompts per batch when generating. Decoding gains more from wide batches than scoring.
    generation_batch_size: int = 32
    quick: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        value = asdict(self)
        for key, item in value.items():
            if isinstance(item, tuple):
                value[key] = list(item)
        return value

    def validate(self) -> None:
        """Raise ValueError naming the first impossible setting."""
        for sparsity in self.sparsities:
            if not 0.0 < sparsity <= 1.0:
                raise ValueError(f"sparsity {sparsity} is outside (0, 1]; use e.g. 5e-6")
        if not self.sparsities:
            raise ValueError("no sparsities given; pass at least one, e.g. --sparsities 5e-6")
        if self.headline_sparsity not in self.sparsities:
            raise ValueError(
                f"headline sparsity {self.headline_sparsity} is not among the sparsities "
                f"{list(self.sparsities)}; add it"
            )
        if not 0.0 <= self.benign_fraction < 1.0:
            raise ValueError(f"benign fraction {self.benign_fraction} is outside [0, 1)")
        if self.scope not in ("global", "matrix"):
            raise ValueError(f"scope must be 'global' or 'matrix', got {self.scope!r}")
        for name in ("batch_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.harmful:
            raise ValueError("no harmful datasets given; pass e.g. --harmful harmbench")
        if not self.benign:
            raise ValueError("no benign datasets given; pass e.g. --benign builtin")


def quick_config(**overrides) -> RunConfig:
    """Return the small preset: fewer examples, sparsities and evaluations than the default."""
    settings: dict[str, Any] = dict(
        sparsities=QUICK_SPARSITIES,
        headline_sparsity=5e-6,
        harmful_per_category=4,
        benign_per_category=3,
        response_tokens=16,
        generation_prompts=8,
        generation_tokens=16,
        factual_pairs=16,
        mmlu_items=0,
        recognition_per_class=8,
        transfer_categories=2,
        bootstrap_resamples=500,
        quick=True,
    )
    settings.update(overrides)
    return RunConfig(**settings)


def default_config(**overrides) -> RunConfig:
    return replace(RunConfig(), **overrides)
