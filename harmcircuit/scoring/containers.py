"""Typed score containers: per-weight scores and per-unit (head and neuron) scores."""

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from harmcircuit.masks import MATRIX_TYPES, matrix_layer, matrix_name, matrix_sort_key, matrix_type

if TYPE_CHECKING:
    from harmcircuit.masks import MaskedModel

logger = logging.getLogger(__name__)

_FORMAT = "harmcircuit-scores"
_FORMAT_VERSION = 1


class ScoreFileError(ValueError):
    """A score file is missing, unreadable or of another kind than requested."""


class WeightScores(Mapping[str, Tensor]):
    """One score per scalar weight of the scored matrices, keyed by matrix name.

    ``scores[name]`` is a tensor shaped like the ``nn.Linear`` weight ``[out, in]`` of that
    matrix (``model.layers.{i}.self_attn.q_proj`` and so on), on the CPU, in float32 (float64
    when the scored model was float64). The meaning and sign of a score depend on ``method``:
    signed SNIP scores ``W * dL/dW`` estimate the loss change from zeroing a weight as ``-s``, so
    the weights whose removal raises the loss most have the most negative scores. Unsigned SNIP
    and Wanda scores are non-negative, and higher means more important.

    ``n_examples`` and ``n_tokens`` count the pairs and the response tokens in the loss.
    ``info`` holds further string-valued metadata (for example the model name).
    """

    def __init__(
        self,
        scores: Mapping[str, Tensor],
        *,
        method: str,
        n_examples: int,
        n_tokens: int,
        info: Mapping[str, str] | None = None,
    ) -> None:
        for name, tensor in scores.items():
            if not isinstance(tensor, Tensor) or tensor.dim() != 2:
                shape = getattr(tensor, "shape", type(tensor).__name__)
                raise ValueError(f"score of {name!r} must be a 2-D tensor, got {shape}")
            if not tensor.dtype.is_floating_point:
                raise ValueError(f"score of {name!r} must be floating point, got {tensor.dtype}")
        ordered = sorted(scores, key=matrix_sort_key)
        self._scores: dict[str, Tensor] = {name: scores[name] for name in ordered}
        self.method = method
        self.n_examples = int(n_examples)
        self.n_tokens = int(n_tokens)
        self.info: dict[str, str] = dict(info or {})

    # Mapping

    def __getitem__(self, name: str) -> Tensor:
        return self._scores[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def __repr__(self) -> str:
        return (
            f"WeightScores(method={self.method!r}, matrices={len(self)}, "
            f"weights={self.n_weights}, n_examples={self.n_examples}, n_tokens={self.n_tokens})"
        )

    @property
    def n_weights(self) -> int:
        return sum(tensor.numel() for tensor in self._scores.values())

    @property
    def n_layers(self) -> int:
        """Number of decoder layers, taken from the highest layer index among the matrices."""
        return 1 + max(matrix_layer(name) for name in self._scores) if self._scores else 0

    # Arithmetic

    def _with(self, scores: dict[str, Tensor], method: str) -> "WeightScores":
        return WeightScores(
            scores,
            method=method,
            n_examples=self.n_examples,
            n_tokens=self.n_tokens,
            info=self.info,
        )

    def __neg__(self) -> "WeightScores":
        """Negate every score. The method name gains a leading ``-`` (or loses one)."""
        method = self.method[1:] if self.method.startswith("-") else f"-{self.method}"
        return self._with({name: -tensor for name, tensor in self._scores.items()}, method)

    def abs(self) -> "WeightScores":
        """Return absolute scores, with the method name wrapped as ``abs(...)``."""
        scores = {name: tensor.abs() for name, tensor in self._scores.items()}
        return self._with(scores, f"abs({self.method})")

    # Aggregations. Each sums scores, signed by default or absolute with `absolute=True`.

    def _values(self, name: str, absolute: bool) -> Tensor:
        tensor = self._scores[name]
        return tensor.abs() if absolute else tensor

    def by_layer_and_type(self, *, absolute: bool = False) -> Float[Tensor, "n_layers n_types"]:
        """Sum scores per decoder layer and matrix type, columns ordered as ``MATRIX_TYPES``."""
        table = torch.zeros(self.n_layers, len(MATRIX_TYPES), dtype=torch.float64)
        for name in self._scores:
            column = MATRIX_TYPES.index(matrix_type(name))
            total = self._values(name, absolute).sum(dtype=torch.float64)
            table[matrix_layer(name), column] += total
        return table

    def by_layer(self, *, absolute: bool = False) -> Float[Tensor, " n_layers"]:
        """Sum scores per decoder layer over all seven matrix types."""
        return self.by_layer_and_type(absolute=absolute).sum(dim=1)

    def by_matrix_type(self, *, absolute: bool = False) -> dict[str, float]:
        """Sum scores per matrix type over all layers, keyed by ``MATRIX_TYPES`` entries."""
        totals = self.by_layer_and_type(absolute=absolute).sum(dim=0)
        return {kind: float(total) for kind, total in zip(MATRIX_TYPES, totals, strict=True)}

    def to_heads(
        self, masked: "MaskedModel", *, absolute: bool = False, include_kv: bool = False
    ) -> Float[Tensor, "n_layers n_heads"]:
        """Sum the scores of each attention head's weights: its q_proj rows and o_proj columns.

        k_proj and v_proj are left out by default because, with grouped-query attention, one
        key/value head serves ``n_heads // n_kv_heads`` query heads. With ``include_kv=True``
        each query head also gets its key/value head's k and v row sums divided by the group
        size, so that the head totals still add up to the sum over all four matrices.
        """
        group = masked.n_heads // masked.n_kv_heads
        heads = torch.zeros(masked.n_layers, masked.n_heads, dtype=torch.float64)
        for layer in range(masked.n_layers):
            for head in range(masked.n_heads):
                slices = masked.head_weight_slices(layer, head)
                parts = ("q", "o", "k", "v") if include_kv else ("q", "o")
                for part in parts:
                    name, index = slices[part]
                    total = self._values(name, absolute)[index].sum(dtype=torch.float64)
                    heads[layer, head] += total / group if part in ("k", "v") else total
        return heads

    def to_neurons(
        self, masked: "MaskedModel", *, absolute: bool = False
    ) -> Float[Tensor, "n_layers d_mlp"]:
        """Sum the scores of each MLP neuron's weights: gate and up rows plus the down column."""
        neurons = torch.zeros(masked.n_layers, masked.d_mlp, dtype=torch.float64)
        for layer in range(masked.n_layers):
            gate = self._values(matrix_name(layer, "gate_proj"), absolute)  # [d_mlp, d_model]
            up = self._values(matrix_name(layer, "up_proj"), absolute)  # [d_mlp, d_model]
            down = self._values(matrix_name(layer, "down_proj"), absolute)  # [d_model, d_mlp]
            neurons[layer] = (
                gate.sum(dim=1, dtype=torch.float64)
                + up.sum(dim=1, dtype=torch.float64)
                + down.sum(dim=0, dtype=torch.float64)
            )
        return neurons

    # Files

    def save(self, path: str | Path) -> None:
        """Write the scores and metadata to a safetensors file."""
        metadata = _metadata("weight", self.method, self.n_examples, self.n_tokens, self.info)
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.items()}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "WeightScores":
        """Read scores written by ``save``. Raises ``ScoreFileError`` for another kind of file."""
        tensors, metadata = _read(path, "weight")
        return cls(
            tensors,
            method=metadata["method"],
            n_examples=int(metadata["n_examples"]),
            n_tokens=int(metadata["n_tokens"]),
            info=json.loads(metadata["info"]),
        )


@dataclass
class UnitScores:
    """One score per attention head and/or MLP neuron.

    ``head`` is ``[n_layers, n_heads]`` (scored at ``blocks.{i}.attn.hook_z``) and ``neuron`` is
    ``[n_layers, d_mlp]`` (at ``blocks.{i}.mlp.hook_post``); either is None when that level was
    not scored. Sign convention for ``attribute`` and ``ablate``: a score estimates or measures
    ``loss(unit ablated) - loss(clean)`` in nats summed over response tokens, so a positive
    score means that removing the unit raises the response loss. ``method`` is
    ``"attribution"`` or ``"ablation"``; ``ablation`` is ``"zero"`` or ``"mean"``.
    """

    head: Float[Tensor, "n_layers n_heads"] | None
    neuron: Float[Tensor, "n_layers d_mlp"] | None
    method: str
    ablation: str
    n_examples: int
    n_tokens: int
    info: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        """``"head"``, ``"neuron"`` or ``"both"``, from which tensors are present."""
        if self.head is not None and self.neuron is not None:
            return "both"
        return "head" if self.head is not None else "neuron"

    def save(self, path: str | Path) -> None:
        """Write the scores and metadata to a safetensors file."""
        info = {**self.info, "ablation": self.ablation}
        metadata = _metadata("unit", self.method, self.n_examples, self.n_tokens, info)
        tensors = {
            key: tensor.detach().cpu().contiguous()
            for key, tensor in (("head", self.head), ("neuron", self.neuron))
            if tensor is not None
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "UnitScores":
        """Read scores written by ``save``. Raises ``ScoreFileError`` for another kind of file."""
        tensors, metadata = _read(path, "unit")
        info = json.loads(metadata["info"])
        ablation = info.pop("ablation")
        return cls(
            head=tensors.get("head"),
            neuron=tensors.get("neuron"),
            method=metadata["method"],
            ablation=ablation,
            n_examples=int(metadata["n_examples"]),
            n_tokens=int(metadata["n_tokens"]),
            info=info,
        )


def _metadata(
    kind: str, method: str, n_examples: int, n_tokens: int, info: Mapping[str, str]
) -> dict[str, str]:
    return {
        "format": _FORMAT,
        "version": str(_FORMAT_VERSION),
        "kind": kind,
        "method": method,
        "n_examples": str(n_examples),
        "n_tokens": str(n_tokens),
        "info": json.dumps(dict(info), sort_keys=True),
    }


def _read(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError) as error:
        raise ScoreFileError(f"failed to read score file {path}: {error}") from error
    if metadata.get("format") != _FORMAT or metadata.get("kind") != kind:
        found = f"{metadata.get('format')}/{metadata.get('kind')}"
        raise ScoreFileError(
            f"{path} is not a harmcircuit {kind} score file (found {found}); "
            f"load it with the class that saved it"
        )
    return load_file(str(path)), metadata
