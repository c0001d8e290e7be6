"""Generate model responses for a prompt set: batched, reproducible and cached on disk.

Generation calls ``generate`` on the wrapped Hugging Face model (``model.original_model``),
which uses a KV cache. It shares its weights with the TransformerLens bridge, so weight
pruning, which edits the weights in place, applies to generation. In TransformerLens 4.3 the
bridge also replaces the Hugging Face submodules with its own components, so forward hooks
active on the bridge (inside ``model.hooks(...)``) run during generation too.
"""

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers.generation import GenerationConfig, LogitsProcessor, LogitsProcessorList

from harmcircuit.data.chat import encode_prompt, end_of_turn_id
from harmcircuit.data.prompts import DataError, PromptSet

logger = logging.getLogger(__name__)

# Bump when the cache file layout or the meaning of a cached response changes.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class GenerationSettings:
    """Every option that changes generated text, all of which enter the cache key.

    ``temperature`` is None for greedy decoding, where it has no effect.
    """

    prefill: str | None
    max_new_tokens: int
    batch_size: int
    seed: int | None
    temperature: float | None
    system: str | None


def generate_responses(
    model: torch.nn.Module,
    prompts: PromptSet,
    *,
    prefill: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int | None = None,
    temperature: float = 1.0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    system: str | None = None,
) -> PromptSet:
    """Return ``prompts`` with each example's ``response`` set to the model's continuation.

    ``model`` is a TransformerLens ``TransformerBridge`` with a ``tokenizer``.

    Each prompt is formatted with the chat template and left-padded into batches. With
    ``seed=None`` decoding is greedy. With a seed, tokens are sampled at ``temperature``
    from per-example ``torch.Generator`` streams seeded by ``(seed, example id)``, so a
    sample does not depend on the batch it lands in. Generation stops at the end-of-turn
    token (the tokenizer's EOS), which is not part of the stored text.

    ``prefill`` (for example ``"Sure, here is"``) is appended after the templated prompt as
    the start of the assistant turn, which is the prefill attack. The stored response starts
    with the prefill followed by the generated continuation.

    Forward hooks active on the bridge apply. With the KV cache, each decoding step runs the
    hooks on the new position only, which suits position-wise edits such as zeroing a head.

    With ``cache_dir``, responses are stored in a JSON file keyed by the model fingerprint,
    the prompt set's content hash, every setting above and the torch and transformers
    versions. A later call with the same key reads the file instead of generating. The key
    cannot describe hook functions, so while any forward hook is active nothing is cached.
    """
    if len(prompts) == 0:
        raise DataError(
            f"prompt set {prompts.name!r} is empty; load or filter a set with at least one example"
        )
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if seed is not None and not temperature > 0:
        raise DataError(f"temperature must be positive for sampling, got {temperature}")
    settings = GenerationSettings(
        prefill=prefill or None,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        temperature=float(temperature) if seed is not None else None,
        system=system,
    )

    cache_path: Path | None = None
    key = ""
    # NOTE: with the KV cache, active hooks see only the newest position at each decoding
    # step, so hooks that edit earlier positions by index do not apply to them.
    hooks = count_forward_hooks(model)
    if cache_dir is not None and hooks:
        logger.warning(
            "%d forward hooks are active on the model, so responses are neither read from "
            "nor written to the cache in %s",
            hooks,
            cache_dir,
        )
    elif cache_dir is not None:
        key = response_cache_key(model, prompts, settings)
        cache_path = Path(cache_dir).expanduser() / f"responses-{key[:32]}.json"
        cached = _read_cache(cache_path, key, prompts)
        if cached is not None:
            logger.info("read %d cached responses from %s", len(cached), cache_path)
            return prompts.with_responses(cached)

    start = time.perf_counter()
    responses = _generate(model, prompts, settings, progress)
    logger.info(
        "generated %d responses for %r in %.1f s",
        len(responses),
        prompts.name,
        time.perf_counter() - start,
    )
    if cache_path is not None:
        _write_cache(cache_path, key, prompts, settings, responses)
    return prompts.with_responses(responses)


def response_cache_key(
    model: torch.nn.Module, prompts: PromptSet, settings: GenerationSettings
) -> str:
    """Return the SHA-256 that names a cached set of responses."""
    # Imported here because harmcircuit.models loads TransformerLens (about 5 s), which
    # reading prompt sets does not need.
    from harmcircuit.models import model_fingerprint

    hf_model, _ = _bridge_parts(model)
    device = next(hf_model.parameters()).device
    payload = {
        "format": CACHE_FORMAT,
        "model": model_fingerprint(model),
        "prompts": prompts.content_hash(),
        "settings": asdict(settings),
        # Kernels and generation code can change outputs between versions and devices.
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def count_forward_hooks(model: torch.nn.Module) -> int:
    """Count the forward hooks registered on the bridge's ``HookPoint`` modules.

    Plain PyTorch hooks elsewhere are not counted, because the bridge registers some of its
    own on layer norms during generation.
    """
    from transformer_lens.hook_points import HookPoint

    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks)
        for module in model.modules()
        if isinstance(module, HookPoint)
    )


class GumbelSampler(LogitsProcessor):
    """Turn greedy decoding into sampling from ``softmax(logits / temperature)``.

    Adding independent Gumbel noise to the log-probabilities and taking the argmax draws an
    exact sample from the categorical distribution (the Gumbel-max trick). Each batch row
    draws its noise from its own generator, so a row's sample does not depend on the others.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float) -> None:
        self.generators = generators
        self.temperature = temperature

    def __call__(
        self, input_ids: Int[Tensor, "batch pos"], scores: Float[Tensor, "batch vocab"]
    ) -> Float[Tensor, "batch vocab"]:
        log_probs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        # -log(Exp(1)) is Gumbel(0, 1). An exponential draw of exactly 0 would force its
        # token, and drawing in float64 makes that practically impossible.
        vocab = scores.shape[-1]
        noise = torch.stack(
            [
                -torch.empty(vocab, dtype=torch.float64).exponential_(generator=generator).log()
                for generator in self.generators
            ]
        )  # [batch, vocab]
        return log_probs + noise.to(device=scores.device, dtype=log_probs.dtype)


def example_generator(seed: int, example_id: str) -> torch.Generator:
    """Return a CPU generator seeded from ``seed`` and the example's id."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    return generator


def _generate(
    model: torch.nn.Module, prompts: PromptSet, settings: GenerationSettings, progress: bool
) -> list[str]:
    hf_model, tokenizer = _bridge_parts(model)
    device = next(hf_model.parameters()).device
    end_id = end_of_turn_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    if pad_id is None:
        raise DataError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")

    # The prefill is tokenised apart from the template, as encode_pair tokenises responses,
    # so that scoring later encodes the same prefill tokens that generation conditioned on.
    prefill_ids: list[int] = []
    if settings.prefill:
        prefill_ids = tokenizer(settings.prefill, add_special_tokens=False)["input_ids"]
    encoded = [encode_prompt(tokenizer, e.prompt, settings.system) + prefill_ids for e in prompts]

    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        eos_token_id=end_id,
        pad_token_id=pad_id,
    )
    # Sorting by length keeps padding small. Each response is stored at its input position.
    # NOTE: left padding changes floating-point sums, so a near-tie between two tokens can
    # resolve differently than in one-at-a-time generation.
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    groups = [order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)]
    responses: list[str] = [""] * len(encoded)
    for group in tqdm(groups, desc="generating responses", unit="batch", disable=not progress):
        input_ids, attention_mask = _left_pad([encoded[i] for i in group], pad_id, device)
        processors = LogitsProcessorList()
        if settings.seed is not None and settings.temperature is not None:
            generators = [example_generator(settings.seed, prompts[i].id) for i in group]
            processors.append(GumbelSampler(generators, settings.temperature))
        with torch.no_grad():
            output = hf_model.generate(
                input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
            )
        new_tokens = output[:, input_ids.shape[1] :]  # [batch, generated]
        for row, index in enumerate(group):
            token_ids = _until_end(new_tokens[row].tolist(), end_id)
            responses[index] = _decode_response(tokenizer, settings.prefill, prefill_ids, token_ids)
    return responses


def _bridge_parts(model: Any) -> tuple[Any, Any]:
    """Return the wrapped Hugging Face model and the tokenizer of a TransformerLens bridge."""
    return model.original_model, model.tokenizer


def _left_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _until_end(token_ids: list[int], end_id: int | None) -> list[int]:
    if end_id is not None and end_id in token_ids:
        return token_ids[: token_ids.index(end_id)]
    return token_ids


def _decode_response(
    tokenizer, prefill: str | None, prefill_ids: list[int], token_ids: list[int]
) -> str:
    continuation = tokenizer.decode(token_ids, skip_special_tokens=True)
    if not prefill:
        return continuation
    # Decoding prefill and continuation together joins them the way the tokenizer does
    # (spaces between word-level tokens, bytes split across the boundary).
    joined = tokenizer.decode(prefill_ids + token_ids, skip_special_tokens=True)
    if joined.startswith(prefill):
        return joined
    return prefill + continuation


def _read_cache(path: Path, key: str, prompts: PromptSet) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["format"] != CACHE_FORMAT or data["key"] != key:
            raise ValueError("its key does not match")
        ids = [entry["id"] for entry in data["responses"]]
        texts = [entry["response"] for entry in data["responses"]]
        if ids != [example.id for example in prompts]:
            raise ValueError("its example ids differ from the prompt set")
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("a response is not a string")
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unusable response cache %s (%s); generating again", path, error)
        return None
    return texts


def _write_cache(
    path: Path, key: str, prompts: PromptSet, settings: GenerationSettings, responses: list[str]
) -> None:
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "prompt_set": prompts.name,
        "settings": asdict(settings),
        "responses": [
            {"id": example.id, "response": response}
            for example, response in zip(prompts, responses, strict=True)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file in the same folder, then rename: readers never see half a file.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(payload, file, ensure_ascii=False, indent=1)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("wrote %d responses to %s", len(responses), path)
