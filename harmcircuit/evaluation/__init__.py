"""Evaluation of a model as it is: response NLL, generation with judges, recognition, utility.

Each function runs the model passed in without changing it. To evaluate a pruned model,
call it inside ``with masked.pruned(selection):``.
"""

from harmcircuit.evaluation.forward import SequenceScores, score_sequences
from harmcircuit.evaluation.generation import (
    DEFAULT_PREFILL,
    GeneratedResponse,
    GenerationResult,
    generation_eval,
    strip_prefill,
    summarise_verdicts,
)
from harmcircuit.evaluation.judges import (
    CallableJudge,
    Judge,
    RefusalJudge,
    Verdict,
    degenerate_reason,
)
from harmcircuit.evaluation.likelihood import LikelihoodResult, response_nll
from harmcircuit.evaluation.recognition import (
    DEFAULT_SHOTS,
    RecognitionResult,
    make_shots,
    recognition_eval,
)
from harmcircuit.evaluation.stats import Estimate, bootstrap_ci
from harmcircuit.evaluation.utility import (
    factual_accuracy,
    factual_correct,
    mmlu_cloze,
    mmlu_correct,
)

__all__ = [
    "DEFAULT_PREFILL",
    "DEFAULT_SHOTS",
    "CallableJudge",
    "Estimate",
    "GeneratedResponse",
    "GenerationResult",
    "Judge",
    "LikelihoodResult",
    "RecognitionResult",
    "RefusalJudge",
    "SequenceScores",
    "Verdict",
    "bootstrap_ci",
    "degenerate_reason",
    "factual_accuracy",
    "factual_correct",
    "generation_eval",
    "make_shots",
    "mmlu_cloze",
    "mmlu_correct",
    "recognition_eval",
    "response_nll",
    "score_sequences",
    "strip_prefill",
    "summarise_verdicts",
]
