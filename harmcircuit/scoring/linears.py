"""Access to the real ``nn.Linear`` modules behind the scored matrices of a bridge."""

from torch import nn

from harmcircuit.masks import MaskedModel


def scored_linears(masked: MaskedModel) -> dict[str, nn.Linear]:
    """Return the ``nn.Linear`` that owns each scored weight, by matrix name.

    A bridge wraps each Hugging Face linear layer in a ``LinearBridge`` whose
    ``_original_component`` is the ``nn.Linear`` itself. Hooks on the ``nn.Linear`` see its
    real input ``[batch, pos, in_features]``, also for ``o_proj``, whose bridge hook shows the
    input split into heads.
    """
    linears: dict[str, nn.Linear] = {}
    for name, weight in masked.weight_matrices().items():
        module = masked.hf_model.get_submodule(name)
        owner = next(
            (m for m in module.modules() if isinstance(m, nn.Linear) and m.weight is weight),
            None,
        )
        if owner is None:
            raise ValueError(f"no nn.Linear under {name!r} owns its scored weight")
        linears[name] = owner
    return linears
