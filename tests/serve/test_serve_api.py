"""``longforge serve`` against a live server (uvicorn on a free loopback port) with the official
``openai`` client: chat and completions, streaming and not, sampling options, the document KV
cache seen through the usage counters, concurrent requests, client disconnects, limits, and a
4xx with an OpenAI error body for every kind of bad input."""
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import openai
import pytest

from longforge.serve.app import ServerConfig, background, create_app
from longforge.serve.engine import Engine, EngineSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY = "sk-test"
NAME = "tiny-chat"
DOC = "In the town of Alder the river rises every spring and the mill wheel turns. " * 6


@contextmanager
def _serve(lm, settings: EngineSettings, **config):
    app = create_app(Engine(lm, settings), ServerConfig(NAME, **{"api_key": KEY, **config}))
    with background(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def server(load_tiny_chat):
    settings = EngineSettings(token_budget=64, block_tokens=32, prefill_chunk=128,
                              max_prompt_tokens=1500, max_new_tokens=4000)
    with _serve(load_tiny_chat(), settings, max_body_bytes=64 << 10) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _raw(url, method, path, body=None, key=KEY, headers=None):
    """(status, parsed JSON body) of one plain HTTP request."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw) if raw else None


def _metrics(url):
    return _raw(url, "GET", "/metrics")[1]


def _chat(text, **kw):
    return dict(model=NAME, messages=[{"role": "user", "content": text}], **kw)


# ------------------------------------------------------------------ the happy paths
def test_chat_completions_stream_and_not_agree(client):
    req = _chat("Where does the river rise?", max_tokens=16, temperature=0)
    full = client.chat.completions.create(**req)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert full.model == NAME and full.object == "chat.completion"
    u = full.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 1 <= u.completion_tokens <= 16
    chunks = list(client.chat.completions.create(**req, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == u.completion_tokens
    assert chunks[-1].usage.prompt_tokens == u.prompt_tokens


def test_completions_stream_and_not_and_token_id_prompts(client, server):
    full = client.completions.create(model=NAME, prompt="the mill wheel", max_tokens=8,
                                     temperature=0)
    assert full.object == "text_completion" and full.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt="the mill wheel", max_tokens=8, temperature=0, stream=True))
    assert streamed == full.choices[0].text
    tok = server[1].state.engine.tokenizer
    by_ids = client.completions.create(model=NAME, prompt=tok("the mill wheel").input_ids,
                                       max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == full.choices[0].text


def test_models_health_and_max_tokens(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    assert _raw(server[0], "GET", "/health", key=None) == (200, {"status": "ok", "model": NAME})
    out = client.chat.completions.create(**_chat("count", max_tokens=3, temperature=0))
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats_and_stop_strings_cut_the_text(client):
    req = _chat("Tell me about Alder.", max_tokens=24, temperature=1.0, top_p=0.9)
    a, b, c = (client.chat.completions.create(**req, seed=s).choices[0].message.content
               for s in (7, 7, 8))
    assert a == b and a != c
    text = client.chat.completions.create(**_chat("Alder?", max_tokens=24, temperature=0)) \
        .choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = client.chat.completions.create(**_chat("Alder?", max_tokens=24, temperature=0,
                                                 stop=[stop, "\x00never"]))
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_second_question_over_a_document_prefills_only_what_follows_it(client, server):
    url = server[0]
    before = _metrics(url)
    first = client.chat.completions.create(**_chat(DOC + "Q: when?", max_tokens=10,
                                                   temperature=0))
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    again = client.chat.completions.create(**_chat(DOC + "Q: when?", max_tokens=10,
                                                   temperature=0))
    assert again.choices[0].message.content == first.choices[0].message.content
    other = client.chat.completions.create(**_chat(DOC + "Q: and who turns the wheel?",
                                                   max_tokens=10, temperature=0,
                                                   extra_body={"policy": "quest",
                                                               "token_budget": 32}))
    u = other.usage
    assert u.prompt_tokens_details.cached_tokens >= 32 * (first.usage.prompt_tokens // 32 - 1)
    assert u.model_extra["prefilled_tokens"] == u.prompt_tokens - u.prompt_tokens_details.cached_tokens
    assert other.model_extra["longforge"]["policy"] == "quest@32"
    after = _metrics(url)
    total = first.usage.prompt_tokens + again.usage.prompt_tokens + u.prompt_tokens
    cached = again.usage.prompt_tokens_details.cached_tokens + u.prompt_tokens_details.cached_tokens
    assert after["prefilled_tokens"] - before["prefilled_tokens"] == total - cached


def test_concurrent_requests_answer_as_they_do_alone(client, server):
    reqs = [_chat(f"Request {i}: " + "words " * (10 + 25 * i), max_tokens=30, temperature=0,
                  extra_body={"policy": p, "token_budget": 32})
            for i, p in enumerate(["quest", "dense", "tova", "streaming", "snapkv", "quest"])]

    def run(i):
        if i % 2:
            return client.chat.completions.create(**reqs[i]).choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(**reqs[i], stream=True))

    alone = [run(i) for i in range(len(reqs))]
    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(run, range(len(reqs))))
    assert together == alone
    assert server[1].state.scheduler.stats()["peak_in_flight"] >= 3  # they did overlap


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_slot(server, stream):
    url = server[0]
    cancelled = _metrics(url)["cancelled"]
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = _chat("go on forever", max_tokens=4000, temperature=0, stream=stream)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data:")
    else:
        while _metrics(url)["in_flight"] == 0:
            time.sleep(0.01)
    conn.sock.shutdown(2)
    conn.close()
    for _ in range(200):
        m = _metrics(url)
        if m["in_flight"] == 0 and m["cancelled"] > cancelled:
            break
        time.sleep(0.05)
    assert m["in_flight"] == 0 and m["cancelled"] == cancelled + 1


def test_the_disk_cache_serves_a_restarted_server(load_tiny_chat, tmp_path):
    settings = EngineSettings(block_tokens=32, prefill_chunk=128, kv_cache_dir=str(tmp_path))
    req = _chat(DOC + "Q: when?", max_tokens=8, temperature=0)
    answers = []
    for _ in range(2):  # the second server starts with an empty RAM cache
        with _serve(load_tiny_chat(), settings) as (url, app):
            c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
            answers.append(c.chat.completions.create(**req))
            reads = _metrics(url)["document_cache"]["disk_reads"]
    first, again = answers
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens > 0 and reads > 0
    assert again.choices[0].message.content == first.choices[0].message.content
    assert list(tmp_path.glob("*/*.safetensors"))


def test_a_failing_generation_is_a_500_and_the_server_goes_on(server, client, monkeypatch):
    engine = server[1].state.engine

    def broken(job):
        raise RuntimeError("out of memory, say")
        yield

    monkeypatch.setattr(engine, "steps", broken)
    status, err = _raw(server[0], "POST", "/v1/chat/completions", _chat("x", max_tokens=2))
    assert status == 500 and "out of memory" in err["error"]["message"]
    monkeypatch.undo()
    assert client.chat.completions.create(**_chat("x", max_tokens=2)).usage.completion_tokens


# ------------------------------------------------------------------ bad input: always a 4xx
BAD = [  # (path, body, status, param)
    ("/v1/chat/completions", b'{"model": "tiny-chat", "messages": [', 400, None),
    ("/v1/chat/completions", b'["not", "an", "object"]', 400, None),
    ("/v1/chat/completions", {"model": NAME}, 400, "messages"),
    ("/v1/chat/completions", {"model": NAME, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": NAME, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "robot", "content": "x"}]},
     400, "messages.0.role"),
    ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": 5}]},
     400, "messages.0.content.str"),
    ("/v1/chat/completions", _chat("x", policy="fastest"), 400, "policy"),
    ("/v1/chat/completions", _chat("x", token_budget=0), 400, "token_budget"),
    ("/v1/chat/completions", _chat("x", page_size=8), 400, "page_size"),
    ("/v1/chat/completions", _chat("x" * 3000), 400, "messages"),
    ("/v1/chat/completions", _chat("x", max_tokens=0), 400, "max_tokens"),
    ("/v1/chat/completions", _chat("x", max_tokens=-5), 400, "max_tokens"),
    ("/v1/chat/completions", _chat("x", max_tokens=4001), 400, "max_tokens"),
    ("/v1/chat/completions", _chat("x", max_tokens="10"), 400, "max_tokens"),
    ("/v1/chat/completions", _chat("x", temperature="hot"), 400, "temperature"),
    ("/v1/chat/completions", _chat("x", temperature=3), 400, "temperature"),
    ("/v1/chat/completions", _chat("x", top_p=0), 400, "top_p"),
    ("/v1/chat/completions", _chat("x", stream="yes"), 400, "stream"),
    ("/v1/chat/completions", _chat("x", seed=2**64), 400, "seed"),
    ("/v1/chat/completions", _chat("x", n=2), 400, "n"),
    ("/v1/chat/completions", _chat("x", stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("/v1/chat/completions", _chat("x", logprobs=True), 400, "logprobs"),
    ("/v1/chat/completions", _chat("x", tools=[{"type": "function"}]), 400, "tools"),
    ("/v1/chat/completions", {**_chat("x"), "model": "gpt-4o"}, 404, "model"),
    ("/v1/completions", {"model": NAME}, 400, "prompt"),
    ("/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"model": NAME, "prompt": [1, 99999]}, 400, "prompt"),
    ("/v1/completions", {"model": NAME, "prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"model": NAME, "prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"model": NAME, "prompt": "x" * (70 << 10)}, 413, None),
    ("/v1/nothing", {"model": NAME}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_bad_input_gets_a_4xx_with_an_openai_error_body(server, path, body, status, param):
    got, err = _raw(server[0], "POST", path, body)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
    assert err["error"]["param"] == param


def test_without_the_api_key_requests_are_refused(server, client):
    url = server[0]
    for key in (None, "wrong"):
        for method, path, body in (("POST", "/v1/chat/completions", _chat("x")),
                                   ("GET", "/v1/models", None), ("GET", "/metrics", None)):
            status, err = _raw(url, method, path, body, key=key)
            assert status == 401 and err["error"]["code"] == "invalid_api_key", (key, path)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="unknown policy"):
        client.chat.completions.create(**_chat("x"), extra_body={"policy": "fastest"})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**{**_chat("x"), "model": "gpt-4o"})


def test_a_full_queue_is_429_and_the_time_limit_504(load_tiny_chat):
    settings = EngineSettings(block_tokens=32, prefill_chunk=128, max_new_tokens=6000)
    with _serve(load_tiny_chat(), settings, api_key=None, max_concurrent=1, max_queue=1,
                request_timeout=1.5) as (url, app):
        long = _chat("go", max_tokens=6000, temperature=0)
        results = {}

        def send(name):
            results[name] = _raw(url, "POST", "/v1/chat/completions", long)

        first = threading.Thread(target=send, args=("running",))
        first.start()
        while app.state.scheduler.stats()["in_flight"] == 0:
            time.sleep(0.01)
        second = threading.Thread(target=send, args=("queued",))
        second.start()
        while app.state.scheduler.stats()["queued"] == 0:
            time.sleep(0.01)
        status, err = _raw(url, "POST", "/v1/chat/completions", long)
        assert status == 429 and err["error"]["code"] == "queue_full"
        first.join()
        second.join()
        for name in ("running", "queued"):
            status, err = results[name]
            assert status == 504 and err["error"]["code"] == "request_timeout", name
        for _ in range(100):  # both jobs stopped: cancelled by their handlers or timed out
            stats = app.state.scheduler.stats()
            if stats["in_flight"] == stats["queued"] == 0:
                break
            time.sleep(0.05)
        assert stats["in_flight"] == stats["queued"] == 0
        assert stats["timed_out"] + stats["cancelled"] == 2 and stats["rejected"] == 1
