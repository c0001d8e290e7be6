"""Save and load weight selections and unit masks as safetensors files tied to one model.

A selection file contains one or more named selections, as one int64 tensor of flat indices
per selection and matrix. A unit-mask file contains ``head_mask`` ``[n_layers, n_heads]``
and/or ``neuron_mask`` ``[n_layers, d_mlp]``. Both carry JSON metadata: the format, the model
identity (architecture, dimensions and a weight fingerprint), and, for selections, their names
and every matrix shape. Loading into a model with another identity raises
``ModelMismatchError``. Writes are atomic.
"""

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from harmcircuit.masks.errors import MaskError, ModelMismatchError
from harmcircuit.masks.masked_model import MaskedModel, check_unit_mask
from harmcircuit.masks.weight_selection import WeightSelection
from harmcircuit.models import model_fingerprint

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
SELECTION_FORMAT = "harmcircuit.weight_selection"
UNIT_MASKS_FORMAT = "harmcircuit.unit_masks"


class UnitMasks(NamedTuple):
    """Head mask ``[n_layers, n_heads]`` and neuron mask ``[n_layers, d_mlp]``, each optional."""

    head: Tensor | None
    neuron: Tensor | None


def _as_masked(masked_or_model: "MaskedModel | TransformerBridge") -> MaskedModel:
    if isinstance(masked_or_model, MaskedModel):
        return masked_or_model
    return MaskedModel(masked_or_model)


def weight_fingerprint(masked_or_model: "MaskedModel | TransformerBridge") -> str:
    """Return ``harmcircuit.models.model_fingerprint`` of the model's unpruned weights.

    Selections applied with ``MaskedModel.apply`` are restored for the hash and applied again
    after it, so a model has one fingerprint whether or not it is pruned at the moment.
    """
    masked = _as_masked(masked_or_model)
    # NOTE: model_fingerprint also hashes the name the bridge was built with, so one checkpoint
    # loaded by embedded name and by folder path gets two fingerprints. Loading a mask file
    # across the two needs strict_weights=False.
    with masked.original_weights():
        return model_fingerprint(masked.model)


def model_identity(masked_or_model: "MaskedModel | TransformerBridge") -> dict[str, str | int]:
    """Return what identifies a model for mask files: architecture, dimensions, weight hash."""
    masked = _as_masked(masked_or_model)
    config = getattr(masked.hf_model, "config", None)
    return {
        "architecture": type(masked.hf_model).__name__,
        "n_layers": masked.n_layers,
        "d_model": masked.d_model,
        "n_heads": masked.n_heads,
        "n_kv_heads": masked.n_kv_heads,
        "d_head": masked.d_head,
        "d_mlp": masked.d_mlp,
        "vocab_size": int(getattr(config, "vocab_size", 0) or 0),
        "fingerprint": weight_fingerprint(masked),
    }


def describe_identity(identity: Mapping[str, object]) -> str:
    """Return a one-line summary of a model identity, e.g. for error messages."""
    fingerprint = str(identity.get("fingerprint", "?"))[:12]
    return (
        f"{identity.get('architecture')}(layers={identity.get('n_layers')}, "
        f"d_model={identity.get('d_model')}, heads={identity.get('n_heads')}/"
        f"{identity.get('n_kv_heads')}, d_mlp={identity.get('d_mlp')}, "
        f"vocab={identity.get('vocab_size')}, fingerprint={fingerprint})"
    )


def _check_identity(
    path: Path,
    saved: Mapping[str, object],
    current: Mapping[str, object],
    strict_weights: bool,
) -> None:
    keys = set(saved) | set(current)
    if not strict_weights:
        keys.discard("fingerprint")
    if any(saved.get(key) != current.get(key) for key in keys):
        raise ModelMismatchError(
            f"{path} was saved for {describe_identity(saved)}, not for this model "
            f"{describe_identity(current)}; load it into the model it was made for"
        )


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        # mkstemp creates files with mode 0600, but mask files are meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read(path: Path, expected_format: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} not found")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    found = metadata.get("format")
    if found != expected_format:
        raise MaskError(f"{path} is not a {expected_format} file (its format is {found!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise MaskError(
            f"{path} has format version {metadata.get('format_version')!r}; this harmcircuit "
            f"reads version {FORMAT_VERSION}"
        )
    return tensors, metadata


def _metadata(
    file_format: str,
    identity: Mapping[str, object],
    metadata: Mapping[str, str] | None,
) -> dict[str, str]:
    user = dict(metadata or {})
    bad = [
        key for key, value in user.items() if not isinstance(key, str) or not isinstance(value, str)
    ]
    if bad:
        raise MaskError(f"metadata keys and values must be strings; fix the entries {bad}")
    return {
        "format": file_format,
        "format_version": FORMAT_VERSION,
        "model_identity": json.dumps(dict(identity), sort_keys=True),
        "user_metadata": json.dumps(user, sort_keys=True),
    }


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the user metadata stored by ``save_selection(s)`` or ``save_unit_masks``."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return dict(json.loads(metadata.get("user_metadata", "{}")))


def save_selections(
    path: str | os.PathLike[str],
    selections: Mapping[str, WeightSelection],
    masked_or_model: "MaskedModel | TransformerBridge",
    metadata: dict[str, str] | None = None,
    *,
    identity: Mapping[str, object] | None = None,
) -> None:
    """Write named selections to one safetensors file for the given model, atomically.

    Tensor ``"{i}/{matrix}"`` contains the flat indices of selection number ``i`` in that
    matrix, and the metadata lists the selection names in order. ``identity`` may pass a
    ``model_identity(masked)`` computed on the current weights, to skip hashing them again.
    """
    masked = _as_masked(masked_or_model)
    for selection in selections.values():
        masked.check_selection(selection)
    header = _metadata(SELECTION_FORMAT, identity or model_identity(masked), metadata)
    header["selections"] = json.dumps(list(selections))
    header["shapes"] = json.dumps(
        {name: list(shape) for name, shape in masked.weight_shapes().items()}
    )
    tensors = {
        f"{number}/{name}": index.contiguous()
        for number, selection in enumerate(selections.values())
        for name, index in selection.indices.items()
    }
    _atomic_save(tensors, header, Path(path))
    logger.info("saved %d selections to %s", len(selections), path)


def load_selections(
    path: str | os.PathLike[str],
    masked_or_model: "MaskedModel | TransformerBridge",
    strict_weights: bool = True,
    *,
    identity: Mapping[str, object] | None = None,
) -> dict[str, WeightSelection]:
    """Read the named selections of a file and check that they fit this model.

    With ``strict_weights=False`` only the architecture and dimensions must match, so
    selections found on one checkpoint can be loaded into a fine-tuned copy of it.
    """
    path = Path(path)
    masked = _as_masked(masked_or_model)
    tensors, metadata = _read(path, SELECTION_FORMAT)
    saved_identity = json.loads(metadata["model_identity"])
    _check_identity(path, saved_identity, identity or model_identity(masked), strict_weights)
    shapes = {
        name: (int(rows), int(cols))
        for name, (rows, cols) in json.loads(metadata["shapes"]).items()
    }
    names = json.loads(metadata["selections"])
    indices: list[dict[str, Tensor]] = [{} for _ in names]
    for key, index in tensors.items():
        number, _, matrix = key.partition("/")
        indices[int(number)][matrix] = index
    selections = {}
    for name, selection_indices in zip(names, indices, strict=True):
        selections[name] = WeightSelection(selection_indices, shapes)
        masked.check_selection(selections[name])
    return selections


def save_selection(
    path: str | os.PathLike[str],
    selection: WeightSelection,
    masked_or_model: "MaskedModel | TransformerBridge",
    metadata: dict[str, str] | None = None,
    *,
    identity: Mapping[str, object] | None = None,
) -> None:
    """Write one selection to a safetensors file for the given model, atomically."""
    save_selections(path, {"selection": selection}, masked_or_model, metadata, identity=identity)


def load_selection(
    path: str | os.PathLike[str],
    masked_or_model: "MaskedModel | TransformerBridge",
    strict_weights: bool = True,
    *,
    identity: Mapping[str, object] | None = None,
) -> WeightSelection:
    """Read a file of one selection (see ``save_selection``) and check that it fits this model."""
    selections = load_selections(path, masked_or_model, strict_weights, identity=identity)
    if len(selections) != 1:
        raise MaskError(
            f"{path} contains {len(selections)} selections {list(selections)}; "
            "read it with load_selections"
        )
    return next(iter(selections.values()))


def save_unit_masks(
    path: str | os.PathLike[str],
    masked_or_model: "MaskedModel | TransformerBridge",
    head: Float[Tensor, "n_layers n_heads"] | None = None,
    neuron: Float[Tensor, "n_layers d_mlp"] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a head mask and/or a neuron mask to a safetensors file, atomically."""
    masked = _as_masked(masked_or_model)
    if head is None and neuron is None:
        raise MaskError("save_unit_masks needs a head mask, a neuron mask or both")
    tensors = {}
    if head is not None:
        check_unit_mask(head, (masked.n_layers, masked.n_heads), "head")
        tensors["head_mask"] = head.detach().to("cpu").contiguous()
    if neuron is not None:
        check_unit_mask(neuron, (masked.n_layers, masked.d_mlp), "neuron")
        tensors["neuron_mask"] = neuron.detach().to("cpu").contiguous()
    _atomic_save(
        tensors, _metadata(UNIT_MASKS_FORMAT, model_identity(masked), metadata), Path(path)
    )


def load_unit_masks(
    path: str | os.PathLike[str],
    masked_or_model: "MaskedModel | TransformerBridge",
    strict_weights: bool = True,
) -> UnitMasks:
    """Read unit masks saved by ``save_unit_masks`` (on the CPU) and check they fit this model."""
    path = Path(path)
    masked = _as_masked(masked_or_model)
    tensors, metadata = _read(path, UNIT_MASKS_FORMAT)
    saved_identity = json.loads(metadata["model_identity"])
    _check_identity(path, saved_identity, model_identity(masked), strict_weights)
    head, neuron = tensors.get("head_mask"), tensors.get("neuron_mask")
    if head is not None:
        check_unit_mask(head, (masked.n_layers, masked.n_heads), "head")
    if neuron is not None:
        check_unit_mask(neuron, (masked.n_layers, masked.d_mlp), "neuron")
    return UnitMasks(head=head, neuron=neuron)
