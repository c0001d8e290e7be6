"""MaskedModel: head and neuron masks by hooks, and in-place pruning of single weights.

Two kinds of masks act on a TransformerLens bridge without copying it:

- Unit masks scale activations. A head mask ``[n_layers, n_heads]`` multiplies the head outputs
  at ``blocks.{i}.attn.hook_z`` (the input of ``o_proj``), and a neuron mask
  ``[n_layers, d_mlp]`` multiplies ``blocks.{i}.mlp.hook_post`` (the input of ``down_proj``).
  A value of 1 keeps a unit and 0 removes it. Masks that require grad give attribution
  patching scores through their ``.grad``.
- Weight pruning zeroes chosen scalar weights of the real ``nn.Linear`` parameters in place and
  writes the saved values back on restore, bitwise.
"""

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.model_bridge import TransformerBridge

from harmcircuit.masks.errors import MaskError, PruneOrderError
from harmcircuit.masks.naming import MATRIX_TYPES, matrix_name
from harmcircuit.masks.weight_selection import WeightSelection

logger = logging.getLogger(__name__)

# Prune handles still applied, per wrapped Hugging Face model, oldest first. Keyed by the model
# rather than by MaskedModel so that two MaskedModel views of one model share one order.
_APPLIED: "weakref.WeakKeyDictionary[nn.Module, list[PruneHandle]]" = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class PruneHandle:
    """Record of one ``MaskedModel.apply`` call: the selection and the values it overwrote.

    ``saved[name]`` contains the weights at ``selection.indices[name]`` as they were just before
    the call, and ``device_indices[name]`` those indices on the weight's device. ``restore``
    writes the values back and marks the handle inactive.
    """

    selection: WeightSelection
    model: weakref.ReferenceType = field(repr=False)
    saved: dict[str, Tensor] = field(default_factory=dict, repr=False)
    device_indices: dict[str, Tensor] = field(default_factory=dict, repr=False)
    active: bool = True


def _unwrap_linear(module: nn.Module, path: str) -> nn.Linear:
    # A bridge wraps each Hugging Face module in a component whose `_original_component` is
    # the module itself, so the real nn.Linear sits under one or more such wrappers.
    while not isinstance(module, nn.Linear):
        inner = getattr(module, "_original_component", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    if not isinstance(module, nn.Linear):
        raise MaskError(f"module {path!r} is a {type(module).__name__}, expected an nn.Linear")
    return module


def check_unit_mask(mask: Tensor, expected_shape: tuple[int, int], unit: str) -> None:
    """Raise ``MaskError`` unless ``mask`` is a floating-point tensor of ``expected_shape``."""
    rows, columns = expected_shape
    if not isinstance(mask, Tensor) or not mask.dtype.is_floating_point:
        raise MaskError(
            f"{unit} mask must be a floating-point tensor of shape [{rows}, {columns}], "
            f"got dtype {getattr(mask, 'dtype', type(mask).__name__)}"
        )
    if tuple(mask.shape) != expected_shape:
        raise MaskError(f"{unit} mask must have shape [{rows}, {columns}], got {list(mask.shape)}")


class MaskedModel:
    """Unit masks, weight views of units, and in-place pruning for a ``TransformerBridge``.

    The scored matrices are ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``
    of every decoder layer, named by module path inside ``model.original_model`` (see
    ``harmcircuit.masks.naming``). Nothing here copies the model.
    """

    def __init__(self, model: TransformerBridge) -> None:
        hf_model = getattr(model, "original_model", None)
        if not isinstance(hf_model, nn.Module):
            raise MaskError(
                f"expected a TransformerBridge with an original_model, got {type(model).__name__}"
            )
        self.model = model
        self.hf_model: nn.Module = hf_model
        cfg = model.cfg
        self.n_layers: int = int(cfg.n_layers)
        self.n_heads: int = int(cfg.n_heads)
        self.d_head: int = int(cfg.d_head)
        if cfg.d_mlp is None:
            raise MaskError(f"model config has no d_mlp; {type(hf_model).__name__} needs an MLP")
        self.d_mlp: int = int(cfg.d_mlp)
        self.d_model: int = int(cfg.d_model)
        config = getattr(hf_model, "config", None)
        n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.n_kv_heads: int = int(n_kv_heads)
        if self.n_heads % self.n_kv_heads != 0:
            raise MaskError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )

        self._linears: dict[str, nn.Linear] = {}
        for layer in range(self.n_layers):
            for kind in MATRIX_TYPES:
                name = matrix_name(layer, kind)
                try:
                    module = hf_model.get_submodule(name)
                except AttributeError as error:
                    raise MaskError(
                        f"model {type(hf_model).__name__} has no module {name!r}; only "
                        "Llama-style decoders (q/k/v/o_proj, gate/up/down_proj) are supported"
                    ) from error
                self._linears[name] = _unwrap_linear(module, name)
        self.matrix_names: tuple[str, ...] = tuple(self._linears)
        self._check_weight_shapes()
        self._shapes = {
            name: (int(w.shape[0]), int(w.shape[1])) for name, w in self.weight_matrices().items()
        }
        self.n_scored_weights: int = sum(w.numel() for w in self.weight_matrices().values())
        self.n_parameters: int = sum(p.numel() for p in hf_model.parameters())

    def _check_weight_shapes(self) -> None:
        q_size, kv_size = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        expected = {
            "q_proj": (q_size, self.d_model),
            "k_proj": (kv_size, self.d_model),
            "v_proj": (kv_size, self.d_model),
            "o_proj": (self.d_model, q_size),
            "gate_proj": (self.d_mlp, self.d_model),
            "up_proj": (self.d_mlp, self.d_model),
            "down_proj": (self.d_model, self.d_mlp),
        }
        for name in self.matrix_names:
            weight = self.weight(name)
            if not weight.is_contiguous():
                raise MaskError(f"weight {name!r} is not contiguous; in-place pruning needs it")
            shape = tuple(weight.shape)
            expected_shape = expected[name.rsplit(".", 1)[1]]
            if shape != expected_shape:
                raise MaskError(
                    f"weight {name!r} has shape {shape}, expected {expected_shape} from the config"
                )

    # Weights

    def weight(self, name: str) -> nn.Parameter:
        """Return the real weight parameter of one scored ``nn.Linear``, shape ``[out, in]``."""
        try:
            return cast(nn.Parameter, self._linears[name].weight)
        except KeyError:
            raise MaskError(
                f"unknown matrix {name!r}: expected a name such as {self.matrix_names[0]!r}"
            ) from None

    def weight_matrices(self) -> dict[str, nn.Parameter]:
        """Return every scored weight parameter by name, ordered by layer then matrix type."""
        return {name: cast(nn.Parameter, linear.weight) for name, linear in self._linears.items()}

    def weight_shapes(self) -> dict[str, tuple[int, int]]:
        """Return ``(rows, columns)`` of every scored matrix."""
        return dict(self._shapes)

    # Unit masks

    def ones_head_mask(self, requires_grad: bool = False) -> Float[Tensor, "n_layers n_heads"]:
        """Return a head mask of ones (keeps every head), float32 on the model's device."""
        device = self.weight(self.matrix_names[0]).device
        return torch.ones(self.n_layers, self.n_heads, device=device, requires_grad=requires_grad)

    def ones_neuron_mask(self, requires_grad: bool = False) -> Float[Tensor, "n_layers d_mlp"]:
        """Return a neuron mask of ones (keeps every neuron), float32 on the model's device."""
        device = self.weight(self.matrix_names[0]).device
        return torch.ones(self.n_layers, self.d_mlp, device=device, requires_grad=requires_grad)

    @contextmanager
    def unit_masks(
        self,
        head: Float[Tensor, "n_layers n_heads"] | None = None,
        neuron: Float[Tensor, "n_layers d_mlp"] | None = None,
    ) -> Iterator[None]:
        """Multiply head outputs and MLP neuron activations by masks inside the block.

        ``head[i, h]`` scales head ``h`` of layer ``i`` at ``blocks.{i}.attn.hook_z``, and
        ``neuron[i, j]`` scales neuron ``j`` at ``blocks.{i}.mlp.hook_post``; 1 keeps a unit
        and 0 removes it. The masks may require grad: after a backward pass, ``mask.grad`` is
        the attribution patching estimate of the metric's change per unit of mask. The hooks
        are removed on exit, also when the block raises. Raises ``MaskError`` (a ValueError)
        for a wrong shape or a non-float dtype.
        """
        hooks = []
        if head is not None:
            check_unit_mask(head, (self.n_layers, self.n_heads), "head")
            for layer in range(self.n_layers):
                hooks.append((f"blocks.{layer}.attn.hook_z", partial(_scale_heads, head, layer)))
        if neuron is not None:
            check_unit_mask(neuron, (self.n_layers, self.d_mlp), "neuron")
            for layer in range(self.n_layers):
                hooks.append(
                    (f"blocks.{layer}.mlp.hook_post", partial(_scale_neurons, neuron, layer))
                )
        with self.model.hooks(fwd_hooks=hooks):
            yield

    # Weight views of units

    def head_weight_slices(
        self, layer: int, head: int
    ) -> dict[str, tuple[str, tuple[slice, slice]]]:
        """Return where one attention head lives in the weights, as ``weight[index]`` slices.

        Keys are ``q``, ``k``, ``v`` and ``o``; each value is ``(matrix name, index tuple)``.
        In ``nn.Linear`` layout (``[out_features, in_features]``) head ``h`` is rows
        ``h*d_head:(h+1)*d_head`` of ``q_proj`` and the same columns of ``o_proj``. With
        grouped-query attention, ``k`` and ``v`` give the rows of the key/value head
        ``h // (n_heads // n_kv_heads)`` that ``h`` shares with its group, so masking them
        affects every query head of that group, not only ``h``.
        """
        self._check_unit(layer, head, self.n_heads, "head")
        kv_head = head // (self.n_heads // self.n_kv_heads)
        q_rows = slice(head * self.d_head, (head + 1) * self.d_head)
        kv_rows = slice(kv_head * self.d_head, (kv_head + 1) * self.d_head)
        everything = slice(None)
        return {
            "q": (matrix_name(layer, "q_proj"), (q_rows, everything)),
            "k": (matrix_name(layer, "k_proj"), (kv_rows, everything)),
            "v": (matrix_name(layer, "v_proj"), (kv_rows, everything)),
            "o": (matrix_name(layer, "o_proj"), (everything, q_rows)),
        }

    def neuron_weight_slices(
        self, layer: int, neuron: int
    ) -> dict[str, tuple[str, tuple[int | slice, int | slice]]]:
        """Return where neuron ``j`` lives: row ``j`` of gate/up_proj, column ``j`` of down_proj."""
        self._check_unit(layer, neuron, self.d_mlp, "neuron")
        everything = slice(None)
        return {
            "gate": (matrix_name(layer, "gate_proj"), (neuron, everything)),
            "up": (matrix_name(layer, "up_proj"), (neuron, everything)),
            "down": (matrix_name(layer, "down_proj"), (everything, neuron)),
        }

    def head_selection(self, layer: int, head: int, include_kv: bool = False) -> WeightSelection:
        """Select the weights of one head: its q_proj rows and o_proj columns.

        With ``include_kv=True`` the selection also contains the rows of its shared key/value head
        in k_proj and v_proj, which removes that key/value head for the whole query group.
        """
        slices = self.head_weight_slices(layer, head)
        parts = ("q", "k", "v", "o") if include_kv else ("q", "o")
        return self._slices_to_selection([slices[part] for part in parts])

    def neuron_selection(self, layer: int, neuron: int) -> WeightSelection:
        """Select the weights of one neuron: its gate/up_proj rows and down_proj column."""
        return self._slices_to_selection(list(self.neuron_weight_slices(layer, neuron).values()))

    def _slices_to_selection(self, slices: list[tuple[str, tuple]]) -> WeightSelection:
        shapes = self.weight_shapes()
        indices = {}
        for name, index in slices:
            rows, columns = shapes[name]
            positions = torch.arange(rows * columns).view(rows, columns)[index]
            indices[name] = positions.reshape(-1)
        return WeightSelection.from_indices(indices, shapes)

    def _check_unit(self, layer: int, index: int, count: int, unit: str) -> None:
        if not 0 <= layer < self.n_layers:
            raise MaskError(f"layer {layer} is out of range [0, {self.n_layers})")
        if not 0 <= index < count:
            raise MaskError(f"{unit} {index} is out of range [0, {count})")

    # In-place pruning

    def check_selection(self, selection: WeightSelection) -> None:
        """Raise ``MaskError`` unless ``selection`` only contains scored matrices of this model."""
        shapes = self._shapes
        for name in selection.indices:
            if name not in shapes:
                raise MaskError(
                    f"selection has weights in {name!r}, which this model does not score"
                )
            if tuple(selection.shapes[name]) != shapes[name]:
                raise MaskError(
                    f"selection has shape {selection.shapes[name]} for {name!r}, but the model's "
                    f"weight has shape {shapes[name]}; the selection was made for another model"
                )

    @property
    def applied(self) -> tuple[PruneHandle, ...]:
        """Prune handles applied to this model and not yet restored, oldest first."""
        return tuple(_APPLIED.get(self.hf_model, ()))

    def apply(self, selection: WeightSelection) -> PruneHandle:
        """Zero the selected weights in place and return a handle that can restore them.

        Only the selected entries are saved (no copy of the model). Handles must be restored
        in reverse order of application, which makes overlapping nested selections restore to
        the exact original values.
        """
        self.check_selection(selection)
        handle = PruneHandle(selection=selection, model=weakref.ref(self.hf_model))
        self._zero(handle)
        _APPLIED.setdefault(self.hf_model, []).append(handle)
        logger.debug("pruned %d weights in %d matrices", len(selection), len(selection.indices))
        return handle

    def restore(self, handle: PruneHandle) -> None:
        """Write back the values that ``handle``'s ``apply`` overwrote, bitwise.

        Raises ``PruneOrderError`` when the handle was already restored, belongs to another
        model, or is not the most recently applied handle still active.
        """
        if not handle.active:
            raise PruneOrderError("this prune handle was already restored")
        if handle.model() is not self.hf_model:
            raise PruneOrderError("this prune handle belongs to another model")
        stack = _APPLIED.get(self.hf_model, [])
        if not any(applied is handle for applied in stack):
            raise PruneOrderError("this prune handle is not applied to this model")
        if stack[-1] is not handle:
            position = next(i for i, applied in enumerate(stack) if applied is handle)
            raise PruneOrderError(
                f"restore out of order: this handle is number {position + 1} of {len(stack)} "
                "applied; restore the later ones first"
            )
        self._write_back(handle)
        stack.pop()
        handle.active = False

    @contextmanager
    def pruned(self, selection: WeightSelection) -> Iterator[PruneHandle]:
        """Zero the selected weights inside the block and restore them on exit, also on errors."""
        handle = self.apply(selection)
        try:
            yield handle
        finally:
            self.restore(handle)

    @contextmanager
    def original_weights(self) -> Iterator[None]:
        """Restore every applied selection inside the block, then prune them again in order.

        Used to fingerprint the unpruned weights while selections are applied. The handles
        stay valid; their saved values are taken again on re-application.
        """
        stack = list(_APPLIED.get(self.hf_model, []))
        for handle in reversed(stack):
            self._write_back(handle)
        try:
            yield
        finally:
            for handle in stack:
                self._zero(handle)

    def _zero(self, handle: PruneHandle) -> None:
        weights = self.weight_matrices()
        handle.saved, handle.device_indices = {}, {}
        try:
            with torch.no_grad():
                for name, index in handle.selection.indices.items():
                    flat = weights[name].view(-1)
                    index = index.to(flat.device)
                    handle.device_indices[name] = index
                    handle.saved[name] = flat.index_select(0, index)
                    flat.index_fill_(0, index, 0.0)
        except BaseException:
            # Put back whatever was already zeroed, so a failed apply changes nothing.
            self._write_back(handle)
            raise

    def _write_back(self, handle: PruneHandle) -> None:
        weights = self.weight_matrices()
        with torch.no_grad():
            for name, values in handle.saved.items():
                # The indices are unique, so scatter_ equals index_copy_ here and is faster on CPU.
                weights[name].view(-1).scatter_(0, handle.device_indices[name], values)


def _scale_heads(mask: Tensor, layer: int, z: Tensor, hook: object) -> Tensor:
    # z: [batch, pos, n_heads, d_head]; one factor per head, broadcast over d_head.
    return z * mask[layer].to(device=z.device, dtype=z.dtype)[:, None]


def _scale_neurons(mask: Tensor, layer: int, post: Tensor, hook: object) -> Tensor:
    # post: [batch, pos, d_mlp]
    return post * mask[layer].to(device=post.device, dtype=post.dtype)
