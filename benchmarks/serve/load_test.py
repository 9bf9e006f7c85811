"""A bounded loopback load test of ``longforge serve``: concurrent clients, mixed streaming and
non-streaming chat and completion requests, mixed KV policies.

    python benchmarks/serve/load_test.py --model tiny-qwen2 --clients 8 --requests 10

Starts ``longforge serve`` as a subprocess on a free loopback port (or targets ``--url``),
warms it up with one request of each kind, records the server's RSS (the baseline), runs
``clients x requests`` requests with the official openai client, waits until nothing is in
flight, and records the RSS again. Prints p50/p99 latency, the error count and the RSS before
and after; exits 1 if any request failed or the RSS did not come back to within
``--rss-slack-mib`` of the baseline. Prompts are short (below one document-cache block), so the
document cache holds nothing and does not count against the memory check.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil

POLICIES = ["dense", "quest", "streaming", "h2o", "tova", "snapkv"]
KINDS = ["chat-stream", "chat", "completion-stream", "completion"]
WORDS = ("river mill wheel spring town alder stone bridge field lantern harbour winter "
         "orchard market bell").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, key: str | None) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "longforge.cli", "serve", "--model", args.model, "--port",
           str(port), "--max-concurrent", str(args.max_concurrent), "--token-budget", "32",
           "--device", "cpu", "-q"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + args.startup_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            get_json(url + "/health", None)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not come up in time")


def one_request(client, model: str, kind: str, policy: str, rng: random.Random,
                max_tokens: int) -> float:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
    extra = {"policy": policy, "token_budget": 32}
    t0 = time.perf_counter()
    if kind.startswith("chat"):
        req = dict(model=model, messages=[{"role": "user", "content": text}],
                   max_tokens=max_tokens, temperature=0.7, seed=rng.randint(0, 10**6),
                   extra_body=extra)
        if kind.endswith("stream"):
            for _ in client.chat.completions.create(**req, stream=True):
                pass
        else:
            client.chat.completions.create(**req)
    else:
        req = dict(model=model, prompt=text, max_tokens=max_tokens, temperature=0,
                   extra_body=extra)
        if kind.endswith("stream"):
            for _ in client.completions.create(**req, stream=True):
                pass
        else:
            client.completions.create(**req)
    return time.perf_counter() - t0


def rss_mib(pid: int | None) -> float | None:
    return None if pid is None else psutil.Process(pid).memory_info().rss / 2**20


def settle(url: str, key: str | None, seconds: float = 2.0) -> None:
    while get_json(url + "/metrics", key)["in_flight"]:
        time.sleep(0.1)
    time.sleep(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-qwen2", help="model spec for the server it starts")
    ap.add_argument("--url", help="an already running server (no RSS check then)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--served-name", default=None, help="model name (default: --model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-concurrent", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--rss-slack-mib", type=float, default=64.0)
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), None
    else:
        proc, url = start_server(args)
        pid = proc.pid
    model = args.served_name or args.model
    client = openai.OpenAI(base_url=url + "/v1", api_key=args.api_key or "unused", max_retries=0,
                           timeout=300)
    try:
        rng = random.Random(args.seed)
        for kind in KINDS:  # warm-up: every kind and policy once, not timed
            for policy in POLICIES:
                one_request(client, model, kind, policy, rng, args.max_tokens)
        settle(url, args.api_key)
        before = rss_mib(pid)

        def client_run(i: int):
            r = random.Random(args.seed * 1000 + i)
            out = []
            for j in range(args.requests):
                kind, policy = KINDS[(i + j) % len(KINDS)], POLICIES[(i * 7 + j) % len(POLICIES)]
                try:
                    out.append(("ok", one_request(client, model, kind, policy, r,
                                                  args.max_tokens)))
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    out.append(("error", f"{kind}/{policy}: {type(exc).__name__}: {exc}"))
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = [r for rs in pool.map(client_run, range(args.clients)) for r in rs]
        wall = time.perf_counter() - t0
        settle(url, args.api_key)
        after = rss_mib(pid)
        metrics = get_json(url + "/metrics", args.api_key)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    lat = sorted(v for k, v in results if k == "ok")
    errors = [v for k, v in results if k == "error"]
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))] if lat else float("nan")
    print(f"requests: {len(results)} ({args.clients} clients x {args.requests}), "
          f"errors: {len(errors)}, wall {wall:.1f} s, {len(results) / wall:.2f} req/s")
    if lat:
        print(f"latency: p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {lat[-1] * 1000:.0f} ms")
    print(f"server: peak in flight {metrics['peak_in_flight']}, cancelled "
          f"{metrics['cancelled']}, failed {metrics['failed']}, document cache "
          f"{metrics['document_cache']['bytes']} bytes")
    ok = not errors
    for e in errors[:10]:
        print("  error:", e)
    if before is not None:
        grew = after - before
        print(f"RSS: {before:.0f} MiB before, {after:.0f} MiB after ({grew:+.0f} MiB; "
              f"allowed +{args.rss_slack_mib:.0f})")
        ok = ok and grew <= args.rss_slack_mib
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
