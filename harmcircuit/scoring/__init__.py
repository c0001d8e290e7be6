"""Scores for single weights (SNIP, Wanda) and for heads and neurons (attribution, ablation).

Every method scores the response loss: the NLL of the response tokens of (prompt, response)
pairs, summed over tokens (``loss.response_nll``).

- ``containers``: ``WeightScores`` (one score per weight) and ``UnitScores`` (per head/neuron).
- ``loss``: the fast response loss and the gradient switches shared by all methods.
- ``pairs``: prompt sets or encoded pairs to right-padded batches.
- ``snip``: signed and unsigned SNIP, in one pass or one decoder layer at a time.
- ``wanda``: ``|W| * ||X||_2`` from one calibration pass.
- ``attribution``: attribution patching (``attribute``) and activation patching (``ablate``).
"""

from harmcircuit.scoring.attribution import UnitMeans, ablate, attribute, patched_units, unit_means
from harmcircuit.scoring.containers import ScoreFileError, UnitScores, WeightScores
from harmcircuit.scoring.loss import ScoringError, requires_grad_only, response_nll
from harmcircuit.scoring.pairs import Pairs, encode_scoring_pairs, scoring_batches
from harmcircuit.scoring.snip import snip
from harmcircuit.scoring.wanda import wanda

__all__ = [
    "Pairs",
    "ScoreFileError",
    "ScoringError",
    "UnitMeans",
    "UnitScores",
    "WeightScores",
    "ablate",
    "attribute",
    "encode_scoring_pairs",
    "patched_units",
    "requires_grad_only",
    "response_nll",
    "scoring_batches",
    "snip",
    "unit_means",
    "wanda",
]
