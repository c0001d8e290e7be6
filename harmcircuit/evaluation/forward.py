"""Batched log-probabilities of chosen tokens, sharing the forward pass of common prefixes.

Every metric in this package reduces to "log-probability of some tokens given the tokens
before them". ``score_sequences`` computes exactly those and nothing else:

- It runs the wrapped Hugging Face model (``model.original_model``), whose weights are the
  bridge's, so weights pruned in place are pruned here too.
- Tokens that every sequence of a group starts with (a chat template's system prompt,
  few-shot examples, a question shared by its answer choices) go through the model once per
  batch. Their key/value cache is then copied for each sequence's remaining tokens.
- The unembedding (``lm_head``, a ``d_model x d_vocab`` matrix) is applied only at the
  positions whose next token is scored, not at every position.
"""

import copy
import logging
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)

# Rows of hidden states unembedded at once: 512 rows x 49,152 logits x 4 bytes is 100 MB.
_UNEMBED_CHUNK = 512


@dataclass(frozen=True)
class SequenceScores:
    """Log-probabilities (natural log) from ``score_sequences``, in input order.

    ``token_logprobs[i][j]`` is ``log P(seq[s + j] | seq[: s + j])`` with ``s = score_from[i]``,
    a float32 tensor of ``len(seq) - s`` values. ``next_logprobs[i, k]`` is
    ``log P(next_token_ids[k] | seq)``, the distribution after the last token of sequence
    ``i``; it is None when no candidate tokens were given.
    """

    token_logprobs: list[Tensor]
    next_logprobs: Float[Tensor, "n candidates"] | None


@dataclass(frozen=True)
class _Unit:
    """Sequences of one group that go through the model in the same batch."""

    group: Hashable
    members: list[int]
    shared: int  # length of the prefix that all members of the group start with


def score_sequences(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    score_from: Sequence[int],
    *,
    groups: Sequence[Hashable] | None = None,
    next_token_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
    description: str = "scoring",
) -> SequenceScores:
    """Compute log-probabilities of tokens ``seq[score_from:]`` and, optionally, of next tokens.

    ``score_from[i]`` must be in ``[1, len(sequences[i])]``: the first token has no
    prediction, and ``len(seq)`` scores no token of that sequence (useful with
    ``next_token_ids``). ``groups`` labels sequences that share a prefix, such as the four
    choices of one question; without it all sequences form one group. The shared prefix
    of a group is its longest common token prefix, cut at the group's first scored
    position. Each batch contains at most ``batch_size`` sequences, plus one prefix row per
    group in it. Runs under ``torch.inference_mode()``, so nothing here builds a graph.
    """
    _check_inputs(sequences, score_from, groups, batch_size)
    labels: list[Hashable] = list(groups) if groups is not None else [0] * len(sequences)
    units = _plan_units(sequences, score_from, labels, batch_size)
    batches = _pack_units(units, batch_size)

    hf_model = model.original_model
    device = next(hf_model.parameters()).device
    token_logprobs: list[Tensor] = [torch.empty(0)] * len(sequences)
    next_rows: list[Tensor] = [torch.empty(0)] * len(sequences)
    previous: tuple[list[Hashable], "_Prefixes"] | None = None
    with torch.inference_mode():
        for batch in tqdm(batches, desc=description, disable=not progress, leave=False):
            batch_groups = [unit.group for unit in batch]
            if previous is not None and previous[0] == batch_groups:
                prefixes = previous[1]  # a large group split over batches: reuse its prefix
            else:
                prefixes = _run_prefixes(hf_model, sequences, batch, device)
                previous = (batch_groups, prefixes)

            rows = [index for unit in batch for index in unit.members]
            shared = [unit.shared for unit in batch for _ in unit.members]
            slots = [slot for slot, unit in enumerate(batch) for _ in unit.members]
            tokens = [list(sequences[index]) for index in rows]
            hidden = _hidden_states(hf_model, prefixes, slots, shared, tokens, device)
            scored, upcoming = _unembed_positions(
                hf_model, hidden, tokens, [score_from[i] for i in rows], shared, next_token_ids
            )
            for position, index in enumerate(rows):
                token_logprobs[index] = scored[position]
                if upcoming is not None:
                    next_rows[index] = upcoming[position]

    next_logprobs = torch.stack(next_rows) if next_token_ids is not None else None
    return SequenceScores(token_logprobs, next_logprobs)


def _check_inputs(
    sequences: Sequence[Sequence[int]],
    score_from: Sequence[int],
    groups: Sequence[Hashable] | None,
    batch_size: int,
) -> None:
    if len(sequences) == 0:
        raise ValueError("no sequences to score; pass at least one token sequence")
    if len(score_from) != len(sequences):
        raise ValueError(f"got {len(score_from)} score_from values for {len(sequences)} sequences")
    if groups is not None and len(groups) != len(sequences):
        raise ValueError(f"got {len(groups)} group labels for {len(sequences)} sequences")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for index, (sequence, start) in enumerate(zip(sequences, score_from, strict=True)):
        if not 1 <= start <= len(sequence):
            raise ValueError(
                f"score_from[{index}] = {start} is outside [1, {len(sequence)}] for a sequence "
                f"of {len(sequence)} tokens; the first token has no prediction to score"
            )


def _plan_units(
    sequences: Sequence[Sequence[int]],
    score_from: Sequence[int],
    labels: list[Hashable],
    batch_size: int,
) -> list[_Unit]:
    """Split each group into runs of at most ``batch_size`` members, sorted by length."""
    members: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)

    units: list[_Unit] = []
    for label, indices in members.items():
        # Cut the prefix at the first scored position, so that every hidden state that
        # predicts a scored token comes from the batched pass or is the prefix's last one.
        shared = min(
            _common_prefix_length([sequences[i] for i in indices]),
            min(score_from[i] for i in indices),
        )
        ordered = sorted(indices, key=lambda i: (len(sequences[i]), i))
        for start in range(0, len(ordered), batch_size):
            units.append(_Unit(label, ordered[start : start + batch_size], shared))
    # Groups of similar length share batches, which wastes little padding.
    units.sort(key=lambda unit: (max(len(sequences[i]) for i in unit.members), unit.members[0]))
    return units


def _pack_units(units: list[_Unit], batch_size: int) -> list[list[_Unit]]:
    batches: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + len(unit.members) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(unit)
        size += len(unit.members)
    if current:
        batches.append(current)
    return batches


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    length = min(len(sequence) for sequence in sequences)
    for sequence in sequences[1:]:
        position = 0
        while position < length and sequence[position] == first[position]:
            position += 1
        length = position
    return length


def _decoder(hf_model: torch.nn.Module) -> torch.nn.Module:
    """Return the transformer body that ends with the final norm, before the unembedding."""
    return hf_model.get_decoder()  # type: ignore[operator]


@dataclass(frozen=True)
class _Prefixes:
    """Key/value cache of the batch's prefixes, one row per unit, and their last hidden states.

    ``last_hidden[u]`` is the hidden state at the last prefix position of unit ``u``, or zeros
    for a unit without a prefix (it is never read then).
    """

    cache: object | None
    last_hidden: Tensor  # [units, d_model]
    width: int  # prefix columns in the cache; shorter prefixes are right-padded


def _run_prefixes(
    hf_model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    batch: list[_Unit],
    device: torch.device,
) -> _Prefixes:
    width = max(unit.shared for unit in batch)
    d_model = int(hf_model.config.hidden_size)  # type: ignore[union-attr, arg-type]
    if width == 0:
        return _Prefixes(None, torch.zeros(len(batch), d_model, device=device), 0)

    input_ids = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    attention = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    for slot, unit in enumerate(batch):
        prefix = list(sequences[unit.members[0]][: unit.shared])
        input_ids[slot, : unit.shared] = torch.tensor(prefix, dtype=torch.long)
        # A unit without a prefix attends to one padding token, so its row is not fully masked.
        attention[slot, : max(unit.shared, 1)] = 1
    output = _decoder(hf_model)(input_ids=input_ids, attention_mask=attention, use_cache=True)
    last = torch.tensor([max(unit.shared, 1) - 1 for unit in batch], device=device)
    last_hidden = output.last_hidden_state[torch.arange(len(batch), device=device), last]
    return _Prefixes(output.past_key_values, last_hidden, width)


def _hidden_states(
    hf_model: torch.nn.Module,
    prefixes: _Prefixes,
    slots: list[int],
    shared: list[int],
    rows: list[list[int]],
    device: torch.device,
) -> Tensor:
    """Return final hidden states ``[b, 1 + L, d_model]`` after each row's prefix.

    Column ``j`` of row ``r`` is absolute position ``shared[r] - 1 + j``: column 0 is the last
    prefix position (unused zeros for a row without a prefix) and the rest are the row's
    tokens after its prefix, right-padded to the longest row.
    """
    suffixes = [row[start:] for row, start in zip(rows, shared, strict=True)]
    length = max(len(suffix) for suffix in suffixes)
    batch = len(rows)
    slot_index = torch.tensor(slots, dtype=torch.long, device=device)
    pieces = [prefixes.last_hidden[slot_index].unsqueeze(1)]  # [b, 1, d]
    if length == 0:
        return pieces[0]

    # Padding sits in masked key positions, so its token id is irrelevant.
    input_ids = torch.zeros((batch, length), dtype=torch.long, device=device)
    attention = torch.zeros((batch, prefixes.width + length), dtype=torch.long, device=device)
    positions = torch.zeros((batch, length), dtype=torch.long, device=device)
    for row, (suffix, start) in enumerate(zip(suffixes, shared, strict=True)):
        input_ids[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        attention[row, :start] = 1
        attention[row, prefixes.width : prefixes.width + len(suffix)] = 1
        positions[row] = torch.arange(start, start + length)
    options: dict[str, object] = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": positions,
    }
    if prefixes.cache is not None:
        # NOTE: rows whose prefixes are shorter than the widest one attend across masked
        # padding in the middle of the cache. Sliding-window attention (Gemma 2 and 3) counts
        # those padding columns inside its window, so long sequences of mixed-length groups
        # may differ slightly from an unpadded pass on such models.
        cache = copy.deepcopy(prefixes.cache)
        cache.batch_select_indices(slot_index)  # type: ignore[attr-defined]
        options |= {"past_key_values": cache, "use_cache": True}
    pieces.append(_decoder(hf_model)(**options).last_hidden_state)  # [b, L, d]
    return torch.cat(pieces, dim=1)


def _unembed_positions(
    hf_model: torch.nn.Module,
    hidden: Tensor,
    rows: list[list[int]],
    starts: list[int],
    shared: list[int],
    next_token_ids: Sequence[int] | None,
) -> tuple[list[Tensor], Tensor | None]:
    """Return per-row log-probabilities of the scored tokens, and of the candidates if given."""
    row_index: list[int] = []
    column_index: list[int] = []
    targets: list[int] = []
    counts: list[int] = []
    for slot, (row, start, offset) in enumerate(zip(rows, starts, shared, strict=True)):
        # The hidden state at position t - 1 predicts token t; column = position + 1 - shared.
        for position in range(start, len(row)):
            row_index.append(slot)
            column_index.append(position - offset)
            targets.append(row[position])
        counts.append(len(row) - start)

    if targets:
        selected = hidden[row_index, column_index]  # [scored, d]
        scored = _target_logprobs(hf_model, selected, targets, counts)
    else:
        scored = [torch.empty(0) for _ in rows]

    upcoming = None
    if next_token_ids is not None:
        last_columns = [len(row) - offset for row, offset in zip(rows, shared, strict=True)]
        final = hidden[list(range(len(rows))), last_columns]  # [b, d]
        candidates = torch.tensor(list(next_token_ids), dtype=torch.long, device=hidden.device)
        pieces = [logprobs[:, candidates] for logprobs in _log_softmax_chunks(hf_model, final)]
        upcoming = torch.cat(pieces).float().cpu()  # [b, candidates]
    return scored, upcoming


def _target_logprobs(
    hf_model: torch.nn.Module, selected: Tensor, targets: list[int], counts: list[int]
) -> list[Tensor]:
    """Return log-probabilities of ``targets`` under ``selected`` hidden states, split per row."""
    target_ids = torch.tensor(targets, dtype=torch.long, device=selected.device)
    chunks = zip(
        _log_softmax_chunks(hf_model, selected), target_ids.split(_UNEMBED_CHUNK), strict=True
    )
    flat = torch.cat([logprobs.gather(1, ids.unsqueeze(1)).squeeze(1) for logprobs, ids in chunks])
    return [piece.float().cpu() for piece in flat.split(counts)]


def _log_softmax_chunks(hf_model: torch.nn.Module, hidden: Tensor) -> Iterator[Tensor]:
    """Yield log-softmax over the vocabulary for ``hidden`` rows, a chunk of rows at a time."""
    unembed = hf_model.get_output_embeddings()  # type: ignore[operator]
    softcap = getattr(hf_model.config, "final_logit_softcapping", None)
    for chunk in hidden.split(_UNEMBED_CHUNK):
        logits = unembed(chunk).float()  # [chunk, d_vocab]
        if softcap:
            # Gemma 2 style models squash logits with tanh before the softmax.
            logits = torch.tanh(logits / softcap) * softcap
        yield torch.log_softmax(logits, dim=-1)
