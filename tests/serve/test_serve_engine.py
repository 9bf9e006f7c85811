"""The document KV cache and the engine, without HTTP: restored prefixes continue exactly like a
full prefill (also through Gemma 3's sliding-window layers), keys never cross model identities,
the LRU stays within its bytes, the disk copy survives a restart, cached entries are never
changed by a request, and every policy answers the same with the cache as without."""
import dataclasses

import pytest
import torch

from longforge.models import cache_kw, tiny_model
from longforge.serve.engine import Engine, EngineSettings, RequestError, TextStream, sample
from longforge.serve.kvcache import (Block, DocumentCache, ModelIdentity, block_keys, capture,
                                     new_cache, restore)
from longforge.sparse.hf import PagedLayer, sparse_attention
from longforge.sparse.policies import Dense, Quest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDENTITY = ModelIdentity("tiny", "w" * 64, "float32", 16, 32)


def _forward(model, cache, ids):
    return model(input_ids=ids, **cache_kw(model, cache), use_cache=True).logits[0, -1]


@pytest.mark.parametrize("arch", ["tiny-gemma3", "tiny-qwen2"])
def test_a_restored_prefix_continues_exactly_like_a_full_prefill(arch):
    model = tiny_model(arch)  # tiny-gemma3: sliding window 32 on four of its six layers
    ids = torch.randint(0, 512, (1, 150), generator=torch.Generator().manual_seed(0))
    with sparse_attention(model, Dense()), torch.no_grad():
        full = new_cache(model, None, 200, 16)
        ref = _forward(model, full, ids)
        blocks = capture(full, 0, [0, 1, 2], 32)
        part = new_cache(model, None, 200, 16)
        n = restore(part, blocks, "cpu")
        assert n == 96
        out = _forward(model, part, ids[:, n:])
        assert torch.allclose(out, ref, atol=1e-5)
        for a, b in zip(full.layers, part.layers):  # same window state, same page metadata
            assert a.get_seq_length() == b.get_seq_length() == 150
            assert torch.allclose(a.keys, b.keys, atol=1e-5)
            if isinstance(a, PagedLayer):
                assert torch.allclose(a.store.meta[:, :, :10], b.store.meta[:, :, :10], atol=1e-5)
        full.policy = part.policy = Quest(token_budget=32)  # decode reads the restored pages
        for t in (5, 7, 11):
            x = torch.tensor([[t]])
            assert torch.allclose(_forward(model, part, x), _forward(model, full, x), atol=1e-5)


def test_restoring_copies_so_a_request_never_changes_the_cached_blocks():
    model = tiny_model("tiny-gemma3")
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))
    with sparse_attention(model, Dense()), torch.no_grad():
        full = new_cache(model, None, 80, 16)
        _forward(model, full, ids)
        blocks = capture(full, 0, [0, 1], 32)
        before = [{k: t.clone() for k, t in b.tensors.items()} for b in blocks]
        part = new_cache(model, None, 80, 16)
        restore(part, blocks, "cpu")
        for layer in part.layers:
            layer.keys.add_(1.0)
            if isinstance(layer, PagedLayer):
                layer.store.k.zero_()
                layer.store.meta.zero_()
    for b, old in zip(blocks, before):
        assert all(torch.equal(b.tensors[k], old[k]) for k in old)


def test_keys_chain_whole_prefixes_and_never_cross_models_dtypes_or_page_sizes():
    ids = list(range(100))
    keys = block_keys(IDENTITY, ids)
    assert len(keys) == 3  # complete blocks only
    assert block_keys(IDENTITY, ids[:64] + [7] * 36)[:2] == keys[:2]
    changed = block_keys(IDENTITY, [1] + ids[1:])
    assert not set(changed) & set(keys)  # a changed first token changes every later key
    for field, value in (("spec", "other"), ("weights", "x" * 64), ("dtype", "bfloat16"),
                         ("page_size", 8), ("version", 0)):
        other = dataclasses.replace(IDENTITY, **{field: value})
        assert not set(block_keys(other, ids)) & set(keys), field


def _block(value: float, n: int = 4) -> Block:
    return Block({"0.k": torch.full((1, 1, 32, n), value), "0.v": torch.full((1, 1, 32, n), value)})


def test_the_lru_keeps_within_its_bytes_and_evicts_chain_tails_first():
    size = _block(0).nbytes
    cache = DocumentCache(IDENTITY, 3 * size)
    chain = block_keys(IDENTITY, list(range(96)))
    for i, key in enumerate(chain):
        cache.insert(key, _block(i))
    assert len(cache.lookup(chain)) == 3
    cache.insert("other", _block(9))  # over budget: the chain's last block goes, not its first
    assert cache.stats()["bytes"] <= 3 * size
    assert [b.tensors["0.k"][0, 0, 0, 0].item() for b in cache.lookup(chain)] == [0.0, 1.0]
    assert cache.stats()["evictions"] == 1
    DocumentCache(IDENTITY, 0).insert("x", _block(1))  # a zero budget keeps nothing, no error


def test_the_disk_copy_survives_a_restart_and_foreign_or_broken_files_are_misses(tmp_path):
    chain = block_keys(IDENTITY, list(range(64)))
    first = DocumentCache(IDENTITY, 0, tmp_path)  # disk only
    for i, key in enumerate(chain):
        first.insert(key, _block(i + 1))
    first.close()
    again = DocumentCache(IDENTITY, 1 << 20, tmp_path)
    got = again.lookup(chain)
    assert [b.tensors["0.v"][0, 0, 0, 0].item() for b in got] == [1.0, 2.0]
    assert again.stats()["disk_reads"] == 2
    other = dataclasses.replace(IDENTITY, page_size=8, block_tokens=32)
    moved = DocumentCache(other, 1 << 20, tmp_path)
    assert moved.dir != again.dir and moved.lookup(chain) == []
    for key in chain:  # another identity's file under this identity's name: ignored
        (moved.dir / f"{key}.safetensors").write_bytes(first._path(key).read_bytes())
    assert moved.lookup(chain) == []
    first._path(chain[0]).write_bytes(b"truncated")
    assert DocumentCache(IDENTITY, 1 << 20, tmp_path).lookup(chain) == []


# ------------------------------------------------------------------ the engine
@pytest.fixture(scope="module")
def engine(load_tiny_chat):
    return Engine(load_tiny_chat(), EngineSettings(token_budget=64, block_tokens=32,
                                                   prefill_chunk=128, max_prompt_tokens=1000,
                                                   max_new_tokens=50))


def _run(engine, ids, **kw):
    events = []
    job = engine.prepare(ids, **kw)
    job.emit = events.append
    engine.run(job)
    assert events[-1][0] == "done", events[-1]
    return "".join(e[1] for e in events if e[0] == "text"), events[-1][2]


POLICY_CACHED = {"dense": 256, "quest": 256, "streaming": 256, "tova": 256, "snapkv": 224,
                 "h2o": 0}


@pytest.mark.parametrize("policy", POLICY_CACHED)
def test_every_policy_answers_the_same_from_the_cache(engine, policy):
    # 289 tokens, blocks of 32: the whole blocks that leave the last prefill forward two tokens
    # (one token would be a decode step, run by the policy); SnapKV leaves its observation window
    # (64 tokens), H2O everything (its prefill attention scores are not cached)
    cached = POLICY_CACHED[policy]
    doc = engine.tokenizer("the quick brown fox jumps over the lazy dog " * 12).input_ids
    ids = [300 + list(POLICY_CACHED).index(policy)] + doc[:278] + [40] * 10
    cold = _run(engine, ids, temperature=0, policy=policy, max_tokens=12)
    assert cold[1]["cached_tokens"] == 0
    before = engine.documents.lookup(block_keys(engine.identity, ids))
    snapshot = [{k: t.clone() for k, t in b.tensors.items()} for b in before]
    warm = _run(engine, ids, temperature=0, policy=policy, max_tokens=12)
    assert warm[0] == cold[0]
    assert len(before) == 9
    assert warm[1]["cached_tokens"] == cached
    assert warm[1]["prefilled_tokens"] == 289 - cached
    for b, old in zip(before, snapshot):
        assert all(torch.equal(b.tensors[k], old[k]) for k in old)


def test_bad_options_are_request_errors(engine):
    ok = [5] * 10
    for kw, param in (({"policy": "fast"}, "policy"), ({"max_tokens": 51}, "max_tokens"),
                      ({"page_size": 8}, "page_size")):
        with pytest.raises(RequestError) as err:
            engine.prepare(ok, **kw)
        assert err.value.param == param
    with pytest.raises(RequestError, match="at most 1000"):
        engine.prepare([5] * 1001)
    with pytest.raises(RequestError, match="empty"):
        engine.prepare([])
    assert engine.prepare([5] * 10).policy.name == "dense"  # short: dense; long: Quest
    assert engine.prepare([5] * 65).policy.name == "quest"
    assert engine.prepare([5] * 10, token_budget=4).policy.label() == "quest@4"


def test_a_chat_on_a_base_model_is_a_plain_transcript_that_stops_at_the_next_turn(
        load_tiny_chat):
    base = Engine(load_tiny_chat(chat=False), EngineSettings(block_tokens=32,
                                                             prefill_chunk=128))
    assert not base.chat_template
    ids, stops = base.chat_ids([{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"},
                                {"role": "user", "content": "and?"}])
    assert base.tokenizer.decode(ids) == ("System: be brief\n\nUser: hi\n\nAssistant: hello"
                                          "\n\nUser: and?\n\nAssistant:")
    assert stops == ("\nUser:", "\nSystem:")


def test_sampling_is_seeded_greedy_at_zero_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    draw = [sample(logits, 1.0, 1.0, torch.Generator().manual_seed(4)) for _ in range(2)]
    assert draw[0] == draw[1]
    g = torch.Generator().manual_seed(0)
    assert sample(logits, 0.0, 1.0, g) == 1
    assert {sample(logits, 1.0, 0.01, g) for _ in range(20)} == {1}
    assert {sample(logits, 1.0, 0.9, g) for _ in range(50)} == {1, 2}


class _Pieces:
    """A tokenizer whose token i is the string PIECES[i]."""
    PIECES = ["Hel", "lo", " EN", "D", " after", "\ufffd"]

    def decode(self, ids, **kw):
        return "".join(self.PIECES[i] for i in ids)


def test_text_stream_holds_back_a_possible_stop_and_cuts_before_it():
    s = TextStream(_Pieces(), ("END",))
    assert s.push(0) == ("H", False)    # the last len("END") - 1 characters wait
    assert s.push(1) == ("el", False)
    assert s.push(2) == ("lo ", False)  # "EN" waits: it may become END
    assert s.push(3) == ("", True)      # END: the text ends before it
    assert s.text == "Hello " and s.finish() == ""
    plain = TextStream(_Pieces())
    assert plain.push(5) == ("", False) and plain.finish() == "\ufffd"
