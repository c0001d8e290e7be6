"""Shared fixtures: tiny random models built in-process and the real embedded model."""

import os

import pytest
import torch

from harmcircuit.models import bridge_from_hf

# Tests never reach a hub: a hidden download attempt fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class TinyTokenizer:
    """A word-level tokenizer with a chat template, enough for unit tests without files."""

    def __new__(cls):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>", "user", "assistant", "system"]
        words += [f"w{i}" for i in range(40)] + ["\n", ":", ".", "?", "Sure", "no", "yes"]
        vocab = {word: i for i, word in enumerate(words)}
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<pad>",
            unk_token="<unk>",
            add_bos_token=True,
        )
        # TransformerLens reloads a tokenizer by name unless it already adds BOS; this one does.
        tokenizer.init_kwargs["name_or_path"] = "tiny-tokenizer"
        tokenizer.chat_template = (
            "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
            "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
        )
        return tokenizer


def build_tiny_llama(n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, seed: int = 0):
    """A random Llama-architecture bridge with grouped-query attention when n_kv_heads < n_heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = TinyTokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=128,
        architectures=["LlamaForCausalLM"],
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    hf_model = LlamaForCausalLM(config)
    # Larger than the default init so that gradients and ablations are far from zero.
    with torch.no_grad():
        for parameter in hf_model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    return bridge_from_hf(hf_model, tokenizer, name=f"tiny-llama-{seed}")


@pytest.fixture
def tiny_model():
    """A 2-layer, 4-head random Llama with 2 key/value heads (grouped-query attention)."""
    return build_tiny_llama()


@pytest.fixture
def tiny_tokenizer():
    return TinyTokenizer()


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct, loaded once per session."""
    from harmcircuit.models import load_model

    return load_model()
