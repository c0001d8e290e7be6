"""Errors raised by weight selections, unit masks and pruning."""


class MaskError(ValueError):
    """An invalid matrix name, selection, unit mask or mask file."""


class PruneOrderError(MaskError):
    """A prune handle was restored out of order, twice, or on another model."""


class ModelMismatchError(MaskError):
    """A mask file was written for a different model than the one it is loaded into."""
