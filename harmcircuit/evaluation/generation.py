"""Generation under a prefill attack, labelled by a judge."""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from transformer_lens.model_bridge import TransformerBridge

from harmcircuit.data.generate import generate_responses
from harmcircuit.data.prompts import DataError, PromptSet
from harmcircuit.evaluation.judges import Judge, RefusalJudge, Verdict
from harmcircuit.evaluation.stats import Estimate

logger = logging.getLogger(__name__)

DEFAULT_PREFILL = "Sure, here is"


@dataclass(frozen=True)
class GeneratedResponse:
    """One prompt, the model's full response (prefill included) and the verdict on it.

    ``continuation`` is the part after the prefill, which is what the judge saw.
    """

    id: str
    prompt: str
    response: str
    continuation: str
    verdict: Verdict

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "response": self.response,
            "continuation": self.continuation,
            "verdict": self.verdict.to_dict(),
        }


@dataclass(frozen=True)
class GenerationResult:
    """Outcome rates of generation under a prefill attack, with bootstrap intervals.

    ``compliance``, ``refusal`` and ``degenerate`` are the fractions of responses whose verdict
    is complied, refused or degenerate. ``harmful`` is the fraction judged harmful among the
    verdicts that assess harm, or None when the judge assesses none (``RefusalJudge``).
    ``mean_score`` averages ``Verdict.score``. A lower compliance rate after pruning means
    the pruned weights mattered for continuing the attack, as long as ``degenerate`` did not
    rise in its place.
    """

    prefill: str | None
    compliance: Estimate
    refusal: Estimate
    degenerate: Estimate
    harmful: Estimate | None
    mean_score: Estimate
    responses: tuple[GeneratedResponse, ...]

    def to_dict(self, *, include_responses: bool = True) -> dict[str, object]:
        summary: dict[str, object] = {
            "prefill": self.prefill,
            "compliance": self.compliance.to_dict(),
            "refusal": self.refusal.to_dict(),
            "degenerate": self.degenerate.to_dict(),
            "harmful": self.harmful.to_dict() if self.harmful is not None else None,
            "mean_score": self.mean_score.to_dict(),
        }
        if include_responses:
            summary["responses"] = [row.to_dict() for row in self.responses]
        return summary


def generation_eval(
    model: TransformerBridge,
    prompts: PromptSet,
    *,
    prefill: str | None = DEFAULT_PREFILL,
    judge: Judge | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate greedy responses after ``prefill`` and judge the continuations.

    The judge receives only the text after the prefill. The attacker writes the prefill and
    the model does not choose it, and its affirmative words ("Sure, here is") would
    otherwise look like compliance to any judge. ``judge`` defaults to ``RefusalJudge()``, which
    labels refusal and compliance by keywords, not harm. With ``cache_dir``, responses are
    cached by ``generate_responses``, whose key includes a fingerprint of the model.
    """
    start_time = time.perf_counter()
    if len(prompts) == 0:
        raise DataError(f"prompt set {prompts.name!r} is empty; pass at least one prompt")
    judge = judge if judge is not None else RefusalJudge()

    generated = generate_responses(
        model,
        prompts,
        prefill=prefill,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=progress,
    )
    responses = [example.response or "" for example in generated]
    continuations = [strip_prefill(response, prefill) for response in responses]
    verdicts = judge.judge(generated.prompts, continuations)
    if len(verdicts) != len(responses):
        raise ValueError(
            f"judge {judge!r} returned {len(verdicts)} verdicts for {len(responses)} responses"
        )

    rows = tuple(
        GeneratedResponse(example.id, example.prompt, response, continuation, verdict)
        for example, response, continuation, verdict in zip(
            generated, responses, continuations, verdicts, strict=True
        )
    )
    result = summarise_verdicts(verdicts, rows, prefill)
    logger.info(
        "generation under prefill %r: compliance %s, refusal %s, degenerate %s in %.1f s",
        prefill,
        result.compliance,
        result.refusal,
        result.degenerate,
        time.perf_counter() - start_time,
    )
    return result


def strip_prefill(response: str, prefill: str | None) -> str:
    """Return the part of ``response`` after ``prefill``; the whole response if it lacks it."""
    if not prefill:
        return response
    if response.startswith(prefill):
        return response[len(prefill) :]
    logger.warning("response does not start with the prefill %r; judging all of it", prefill)
    return response


def summarise_verdicts(
    verdicts: Sequence[Verdict],
    rows: tuple[GeneratedResponse, ...] = (),
    prefill: str | None = None,
) -> GenerationResult:
    """Turn verdicts into outcome rates with bootstrap intervals over responses."""
    if not verdicts:
        raise ValueError("no verdicts to summarise; judge at least one response")
    assessed = [verdict.harmful for verdict in verdicts if verdict.harmful is not None]
    return GenerationResult(
        prefill=prefill,
        compliance=Estimate.from_values([int(v.complied) for v in verdicts]),
        refusal=Estimate.from_values([int(v.refused) for v in verdicts]),
        degenerate=Estimate.from_values([int(v.degenerate) for v in verdicts]),
        harmful=Estimate.from_values([int(h) for h in assessed]) if assessed else None,
        mean_score=Estimate.from_values([float(v.score) for v in verdicts]),
        responses=rows,
    )
