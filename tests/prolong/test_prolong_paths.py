"""The fast path gives the reference path's perplexities (tiny models of each architecture)."""
import numpy as np
import pytest
import torch

from longforge.models import TINY_MODELS, tiny_model
from longforge.prolong.fast import FastScorer
from longforge.prolong.lds import doc_rng, sample_pairs
from longforge.prolong.reference import ReferenceScorer

RTOL = 1e-5  # fp32 on CPU; measured max relative difference ~1e-6


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("c", [16, 40])  # tiny-gemma3's sliding window is 32: 2c = 32 and 80
def test_fast_matches_reference(name, c):
    model = tiny_model(name)
    rng = np.random.default_rng(1)
    chunks = rng.integers(0, 512, size=(7, c))
    pi, pj = sample_pairs(7, 15, doc_rng(0, name))  # 15 of the 21 pairs
    s_ref, p_ref = ReferenceScorer(model, batch_size=3).perplexities(chunks, pi, pj)
    # batch_tokens=100 -> 2 pairs per batch when c=40: several batches, one partial
    s_fast, p_fast = FastScorer(model, batch_tokens=100, head_rows=50).perplexities(chunks, pi, pj)
    np.testing.assert_allclose(s_fast, s_ref, rtol=RTOL)
    np.testing.assert_allclose(p_fast, p_ref, rtol=RTOL)
    # the context matters (otherwise the comparison proves little)
    assert np.abs(p_ref / s_ref[pi] - 1).max() > 1e-3


def test_sliding_window_is_in_effect_for_tiny_gemma3():
    """With 2c > window, a model without the window gives other pair perplexities: both paths
    must follow the model's own sliding-window attention."""
    chunks = np.random.default_rng(2).integers(0, 512, size=(3, 40))
    pi, pj = np.array([1, 2, 2]), np.array([0, 0, 1])
    windowed = FastScorer(tiny_model("tiny-gemma3")).perplexities(chunks, pi, pj)[1]
    unwindowed = FastScorer(tiny_model("tiny-gemma3", sliding_window=4096)).perplexities(chunks, pi, pj)[1]
    assert np.abs(windowed / unwindowed - 1).max() > 1e-3


def test_fast_path_refuses_models_whose_logits_it_cannot_reproduce():
    model = tiny_model("tiny-llama")

    def scale_logits(module, args, output):  # like a model with a logit scale (e.g. Cohere)
        output.logits = output.logits * 3.0
        return output

    model.register_forward_hook(scale_logits)
    with pytest.raises(TypeError, match="--path reference"):
        FastScorer(model)


def test_empty_pair_list():
    model = tiny_model("tiny-llama")
    chunks = np.random.default_rng(3).integers(0, 512, size=(2, 8))
    single, pair = FastScorer(model).perplexities(chunks, np.zeros(0, int), np.zeros(0, int))
    assert single.shape == (2,) and pair.shape == (0,)
