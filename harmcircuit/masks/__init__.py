"""Weight selections, head and neuron masks, in-place pruning, and mask files.

- ``naming``: names of the scored matrices (``model.layers.{i}.self_attn.q_proj`` ...).
- ``weight_selection``: ``WeightSelection``, an immutable sparse set of scalar weights.
- ``masked_model``: ``MaskedModel``, unit masks by hooks and prune/restore in place.
- ``storage``: safetensors files of selections and unit masks, tied to a model identity.
"""

from harmcircuit.masks.errors import MaskError, ModelMismatchError, PruneOrderError
from harmcircuit.masks.masked_model import MaskedModel, PruneHandle, check_unit_mask
from harmcircuit.masks.naming import (
    ATTENTION_TYPES,
    MATRIX_TYPES,
    MLP_TYPES,
    matrix_layer,
    matrix_name,
    matrix_sort_key,
    matrix_type,
)
from harmcircuit.masks.storage import (
    UnitMasks,
    describe_identity,
    load_selection,
    load_selections,
    load_unit_masks,
    model_identity,
    read_metadata,
    save_selection,
    save_selections,
    save_unit_masks,
    weight_fingerprint,
)
from harmcircuit.masks.weight_selection import WeightSelection

__all__ = [
    "ATTENTION_TYPES",
    "MATRIX_TYPES",
    "MLP_TYPES",
    "MaskError",
    "MaskedModel",
    "ModelMismatchError",
    "PruneHandle",
    "PruneOrderError",
    "UnitMasks",
    "WeightSelection",
    "check_unit_mask",
    "describe_identity",
    "load_selection",
    "load_selections",
    "load_unit_masks",
    "matrix_layer",
    "matrix_name",
    "matrix_sort_key",
    "matrix_type",
    "model_identity",
    "read_metadata",
    "save_selection",
    "save_selections",
    "save_unit_masks",
    "weight_fingerprint",
]
