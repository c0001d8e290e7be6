"""Scoring on the embedded SmolLM2-135M-Instruct with short benign pairs."""

import pytest
import torch
from scipy.stats import spearmanr
from scoring_reference import encode, example_loss

from harmcircuit.data.chat import batches
from harmcircuit.data.prompts import Example
from harmcircuit.masks import MaskedModel
from harmcircuit.scoring import ablate, attribute, response_nll

BENIGN_PAIRS = [
    Example("sum", "What is 2+2?", "2+2 equals 4."),
    Example("sky", "What colour is the sky on a clear day?", "The sky is blue."),
]

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def masked(real_model):
    return MaskedModel(real_model)


def test_response_nll_matches_bridge_real(masked):
    pairs = encode(masked.model, BENIGN_PAIRS)
    batch = batches(pairs, 2, masked.model.tokenizer.pad_token_id)[0]
    with torch.no_grad():
        fast = response_nll(masked.hf_model, batch, reduction="per_example")
        by_id = dict(zip(batch.example_ids, fast.tolist(), strict=True))
        for pair in pairs:
            reference = example_loss(masked.model, pair).item()
            assert by_id[pair.example_id] == pytest.approx(reference, rel=1e-4)


@pytest.mark.slow
def test_attribution_ranks_heads_like_ablation(masked):
    # 270 forward passes for ablation: about 1 to 2 minutes on 2 cores.
    estimate = attribute(masked, BENIGN_PAIRS, level="head", progress=False)
    measured = ablate(masked, BENIGN_PAIRS, level="head", progress=False)
    assert estimate.head.shape == (30, 9)
    rho = spearmanr(estimate.head.flatten(), measured.head.flatten()).statistic
    print(f"Spearman correlation of attribution and ablation over 270 heads: {rho:.3f}")
    assert rho > 0.5
