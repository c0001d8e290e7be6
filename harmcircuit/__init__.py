"""harmcircuit: find, prune and inspect the weights a language model uses for harmful content."""

from harmcircuit.masks import MaskedModel, WeightSelection
from harmcircuit.models import DEFAULT_MODEL, ModelLoadError, bridge_from_hf, load_model

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "MaskedModel",
    "ModelLoadError",
    "WeightSelection",
    "bridge_from_hf",
    "load_model",
]
