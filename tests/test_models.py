import time

import pytest
import torch

from longforge import models


@pytest.mark.parametrize("name", models.TINY_MODELS)
def test_tiny_models_are_real_architectures_and_seeded(name):
    a, b = models.tiny_model(name, seed=1), models.tiny_model(name, seed=1)
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert la.shape == (2, 12, 512) and torch.equal(la, lb)
    assert a.config.num_key_value_heads < a.config.num_attention_heads  # GQA


def test_unknown_offline_model_fails_fast_with_a_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t = time.time()
    with pytest.raises(models.ModelNotFoundError, match="local directory"):
        models.load_model("someone/not-a-model-here")
    assert time.time() - t < 10


def test_bad_dtype_and_device():
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("fp8x", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            models.resolve_device("cuda")


@pytest.mark.real_model
def test_real_gemma_continues_a_prompt_and_second_load_uses_cache(gemma):
    assert (models.gemma_cache_path() / "DONE").exists()
    tok, m = gemma.tokenizer, gemma.model
    assert m.config.num_hidden_layers == 18 and m.config.num_key_value_heads == 1
    for prompt, expected in [("Monday, Tuesday, Wednesday,", "Thursday"),
                             ("The Eiffel Tower is located in the city of", "Paris")]:
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = m.generate(**ids, max_new_tokens=6, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:])
        assert expected in text, (prompt, text)
    t = time.time()
    again = models.load_model("gemma-3-270m", device="cpu")
    assert time.time() - t < 20  # cached safetensors, not a 40 s dequantization
    assert torch.equal(again.model.lm_head.weight, m.lm_head.weight)
