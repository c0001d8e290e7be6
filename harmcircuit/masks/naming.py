"""Names of the scored weight matrices: the decoder's linear layers, by module path.

A matrix is named by its module path inside the Hugging Face model that a TransformerLens
bridge wraps (``bridge.original_model``), for example ``model.layers.3.self_attn.q_proj`` or
``model.layers.3.mlp.down_proj``. Embeddings, norms and ``lm_head`` are never scored.
"""

import re

from harmcircuit.masks.errors import MaskError

ATTENTION_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TYPES = ("gate_proj", "up_proj", "down_proj")
MATRIX_TYPES = ATTENTION_TYPES + MLP_TYPES

_NAME_PATTERN = re.compile(
    r"^model\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\.(?P<type>[a-z_]+)$"
)


def matrix_name(layer: int, matrix_type: str) -> str:
    """Return the module path of one scored matrix, e.g. ``model.layers.3.mlp.up_proj``."""
    if matrix_type not in MATRIX_TYPES:
        raise MaskError(f"unknown matrix type {matrix_type!r}: use one of {MATRIX_TYPES}")
    block = "self_attn" if matrix_type in ATTENTION_TYPES else "mlp"
    return f"model.layers.{layer}.{block}.{matrix_type}"


def _parse(name: str) -> tuple[int, str]:
    match = _NAME_PATTERN.match(name)
    if match is None or match["type"] not in MATRIX_TYPES:
        raise MaskError(
            f"invalid matrix name {name!r}: expected 'model.layers.<i>.self_attn.<q|k|v|o>_proj' "
            "or 'model.layers.<i>.mlp.<gate|up|down>_proj'"
        )
    layer, matrix_type = int(match["layer"]), match["type"]
    expected_block = "self_attn" if matrix_type in ATTENTION_TYPES else "mlp"
    if match["block"] != expected_block:
        raise MaskError(f"invalid matrix name {name!r}: {matrix_type} lives under {expected_block}")
    return layer, matrix_type


def matrix_type(name: str) -> str:
    """Return the matrix type of a scored matrix name, one of ``MATRIX_TYPES``."""
    return _parse(name)[1]


def matrix_layer(name: str) -> int:
    """Return the decoder layer index of a scored matrix name."""
    return _parse(name)[0]


def matrix_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key that orders scored matrices by layer, then by ``MATRIX_TYPES``.

    Names that are not scored matrix names sort after all scored ones, alphabetically, so that
    any set of names has one deterministic order.
    """
    try:
        layer, kind = _parse(name)
    except MaskError:
        return (2**62, 0, name)
    return (layer, MATRIX_TYPES.index(kind), "")
