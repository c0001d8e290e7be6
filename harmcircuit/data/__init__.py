"""Prompt sets, packaged dataset readers, chat formatting and response generation."""

from harmcircuit.data.chat import (
    Batch,
    EncodedPair,
    batches,
    collate,
    encode_pair,
    encode_pairs,
    encode_prompt,
    format_prompt,
)
from harmcircuit.data.evalsets import (
    MultipleChoice,
    RefusalPhrases,
    StatementPair,
    load_factual_pairs,
    load_mmlu,
    load_refusal_phrases,
    stratified_subset,
)
from harmcircuit.data.generate import generate_responses
from harmcircuit.data.prompts import DataError, Example, PromptSet
from harmcircuit.data.readers import list_sources, load_prompts

__all__ = [
    "Batch",
    "DataError",
    "EncodedPair",
    "Example",
    "MultipleChoice",
    "PromptSet",
    "RefusalPhrases",
    "StatementPair",
    "batches",
    "collate",
    "encode_pair",
    "encode_pairs",
    "encode_prompt",
    "format_prompt",
    "generate_responses",
    "list_sources",
    "load_factual_pairs",
    "load_mmlu",
    "load_prompts",
    "load_refusal_phrases",
    "stratified_subset",
]
