"""WeightSelection: an immutable sparse set of scalar weights in the scored matrices."""

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from harmcircuit.masks.errors import MaskError
from harmcircuit.masks.naming import MATRIX_TYPES, matrix_layer, matrix_sort_key, matrix_type


def _check_shape(name: str, shape: object) -> tuple[int, int]:
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(size, int) and size > 0 for size in shape)
    ):
        raise MaskError(f"invalid shape {shape!r} for matrix {name!r}: expected (rows, columns)")
    return (int(shape[0]), int(shape[1]))


class WeightSelection:
    """An immutable set of scalar weights, stored as flat indices per matrix.

    ``indices[name]`` is a sorted, duplicate-free int64 tensor of positions in
    ``weight.flatten()`` (row-major), so index ``i`` is row ``i // columns`` and column
    ``i % columns`` of the ``nn.Linear`` weight of shape ``shapes[name] = (rows, columns)``.
    Matrices with no selected weight have no entry in ``indices``, but ``shapes`` may list them.
    Index tensors live on the CPU. Set operations (``|``, ``&``, ``-``) work matrix by matrix.
    """

    __slots__ = ("_indices", "_shapes")
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        indices: Mapping[str, Tensor],
        shapes: Mapping[str, Sequence[int]],
    ) -> None:
        """Validate and store sorted, duplicate-free int64 flat indices per matrix.

        Raises ``MaskError`` for a matrix without a shape, a non-int64 or unsorted index tensor,
        or an index outside the matrix. Use ``from_indices`` for unsorted input.
        """
        checked_shapes = {name: _check_shape(name, shape) for name, shape in shapes.items()}
        checked: dict[str, Tensor] = {}
        for name, index in indices.items():
            if name not in checked_shapes:
                raise MaskError(f"matrix {name!r} has indices but no shape; add it to shapes")
            if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.dim() != 1:
                raise MaskError(
                    f"indices of {name!r} must be a 1-D int64 tensor, got "
                    f"{getattr(index, 'dtype', type(index))} "
                    f"with shape {getattr(index, 'shape', '?')}"
                )
            if index.numel() == 0:
                continue
            index = index.detach().to("cpu", copy=True)
            if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
                raise MaskError(
                    f"indices of {name!r} must be sorted without duplicates; "
                    "build the selection with WeightSelection.from_indices"
                )
            rows, columns = checked_shapes[name]
            if int(index[0]) < 0 or int(index[-1]) >= rows * columns:
                raise MaskError(
                    f"indices of {name!r} must lie in [0, {rows * columns}) for shape "
                    f"{(rows, columns)}, got range [{int(index[0])}, {int(index[-1])}]"
                )
            checked[name] = index
        ordered = sorted(checked, key=matrix_sort_key)
        self._indices = MappingProxyType({name: checked[name] for name in ordered})
        self._shapes = MappingProxyType(
            {name: checked_shapes[name] for name in sorted(checked_shapes, key=matrix_sort_key)}
        )

    # Construction

    @classmethod
    def from_indices(
        cls,
        indices: Mapping[str, Tensor],
        shapes: Mapping[str, Sequence[int]],
    ) -> "WeightSelection":
        """Build a selection from flat indices in any order, dropping duplicates."""
        normalised = {}
        for name, index in indices.items():
            if not isinstance(index, Tensor) or index.dim() != 1:
                raise MaskError(f"indices of {name!r} must be a 1-D integer tensor")
            if index.dtype.is_floating_point and index.numel() > 0:
                raise MaskError(f"indices of {name!r} must be integers, got {index.dtype}")
            normalised[name] = torch.unique(index.detach().to("cpu", torch.int64))
        return cls(normalised, shapes)

    @classmethod
    def empty(cls, shapes: Mapping[str, Sequence[int]] | None = None) -> "WeightSelection":
        """Return a selection with no weights (optionally knowing the matrix shapes)."""
        return cls({}, shapes or {})

    @classmethod
    def from_dense(cls, masks: Mapping[str, Bool[Tensor, "rows columns"]]) -> "WeightSelection":
        """Build a selection from boolean masks; True marks a selected weight."""
        indices, shapes = {}, {}
        for name, mask in masks.items():
            if mask.dtype != torch.bool or mask.dim() != 2:
                raise MaskError(
                    f"mask of {name!r} must be a 2-D bool tensor, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            shapes[name] = (int(mask.shape[0]), int(mask.shape[1]))
            # nonzero returns row-major positions in increasing order.
            indices[name] = mask.detach().cpu().reshape(-1).nonzero().squeeze(1)
        return cls(indices, shapes)

    # Access

    @property
    def indices(self) -> Mapping[str, Tensor]:
        """Flat int64 indices per matrix, only for matrices with at least one selected weight."""
        return self._indices

    @property
    def shapes(self) -> Mapping[str, tuple[int, int]]:
        """Weight shape ``(rows, columns)`` of every matrix this selection has a shape for."""
        return self._shapes

    @property
    def names(self) -> tuple[str, ...]:
        """Matrices with at least one selected weight, ordered by layer then matrix type."""
        return tuple(self._indices)

    def __len__(self) -> int:
        return sum(int(index.numel()) for index in self._indices.values())

    def is_empty(self) -> bool:
        """Return True when no weight is selected."""
        return not self._indices

    def count_per_matrix(self) -> dict[str, int]:
        """Number of selected weights per known matrix, zeros included."""
        return {
            name: int(self._indices[name].numel()) if name in self._indices else 0
            for name in self._shapes
        }

    def counts_by_layer_and_type(self) -> dict[tuple[int, str], int]:
        """Number of selected weights per ``(layer, matrix type)`` with at least one weight."""
        counts: dict[tuple[int, str], int] = {}
        for name, index in self._indices.items():
            key = (matrix_layer(name), matrix_type(name))
            counts[key] = counts.get(key, 0) + int(index.numel())
        return counts

    def count_table(self, n_layers: int) -> Int[Tensor, "n_layers n_types"]:
        """Counts as an int64 tensor ``[n_layers, 7]``, columns in ``MATRIX_TYPES`` order."""
        table = torch.zeros(n_layers, len(MATRIX_TYPES), dtype=torch.int64)
        for (layer, kind), count in self.counts_by_layer_and_type().items():
            if layer >= n_layers:
                raise MaskError(f"selection has weights in layer {layer}, but n_layers={n_layers}")
            table[layer, MATRIX_TYPES.index(kind)] = count
        return table

    def to_dense(self, name: str) -> Bool[Tensor, "rows columns"]:
        """Return the boolean mask of one matrix, True on the selected weights."""
        if name not in self._shapes:
            raise MaskError(
                f"unknown matrix {name!r}: this selection knows {len(self._shapes)} shapes"
            )
        rows, columns = self._shapes[name]
        mask = torch.zeros(rows * columns, dtype=torch.bool)
        if name in self._indices:
            mask[self._indices[name]] = True
        return mask.view(rows, columns)

    def rows_and_columns(self, name: str) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"]]:
        """Return the (row, column) coordinates of the selected weights of one matrix."""
        if name not in self._shapes:
            raise MaskError(f"unknown matrix {name!r}")
        index = self._indices.get(name, torch.zeros(0, dtype=torch.int64))
        columns = self._shapes[name][1]
        return index // columns, index % columns

    # Set operations

    def _merged_shapes(self, other: "WeightSelection") -> dict[str, tuple[int, int]]:
        if not isinstance(other, WeightSelection):
            raise TypeError(f"expected a WeightSelection, got {type(other).__name__}")
        shapes = dict(self._shapes)
        for name, shape in other._shapes.items():
            if shapes.setdefault(name, shape) != shape:
                raise MaskError(
                    f"matrix {name!r} has shape {shapes[name]} in one selection and {shape} in the "
                    "other; the selections come from different models"
                )
        return shapes

    def union(self, other: "WeightSelection") -> "WeightSelection":
        """Return the weights selected in either selection."""
        shapes = self._merged_shapes(other)
        indices = {}
        for name in set(self._indices) | set(other._indices):
            parts = [s._indices[name] for s in (self, other) if name in s._indices]
            indices[name] = parts[0] if len(parts) == 1 else torch.unique(torch.cat(parts))
        return WeightSelection(indices, shapes)

    def intersection(self, other: "WeightSelection") -> "WeightSelection":
        """Return the weights selected in both selections."""
        shapes = self._merged_shapes(other)
        indices = {}
        for name in set(self._indices) & set(other._indices):
            mine = self._indices[name]
            indices[name] = mine[torch.isin(mine, other._indices[name])]
        return WeightSelection(indices, shapes)

    def difference(self, other: "WeightSelection") -> "WeightSelection":
        """Return the weights of this selection that ``other`` does not hold (self minus other)."""
        shapes = self._merged_shapes(other)
        indices = {}
        for name, mine in self._indices.items():
            if name in other._indices:
                mine = mine[~torch.isin(mine, other._indices[name])]
            indices[name] = mine
        return WeightSelection(indices, shapes)

    def __or__(self, other: "WeightSelection") -> "WeightSelection":
        return self.union(other)

    def __and__(self, other: "WeightSelection") -> "WeightSelection":
        return self.intersection(other)

    def __sub__(self, other: "WeightSelection") -> "WeightSelection":
        return self.difference(other)

    def restrict(self, names: Iterable[str]) -> "WeightSelection":
        """Return the part of this selection that lies in the given matrices."""
        keep = set(names)
        return WeightSelection(
            {name: index for name, index in self._indices.items() if name in keep}, self._shapes
        )

    # Comparison and display

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightSelection):
            return NotImplemented
        return (
            dict(self._shapes) == dict(other._shapes)
            and self._indices.keys() == other._indices.keys()
            and all(
                torch.equal(index, other._indices[name]) for name, index in self._indices.items()
            )
        )

    def __repr__(self) -> str:
        return (
            f"WeightSelection({len(self)} weights in {len(self._indices)} of "
            f"{len(self._shapes)} matrices)"
        )
