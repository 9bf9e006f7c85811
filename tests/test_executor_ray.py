"""The Ray executor on a real Ray cluster that this module starts (loopback, 2 CPUs, its own
temporary folder; stopped and removed at the end): the same bytes as the local executor for
synth and score, a killed worker's shard resubmitted (and the output still the same), a killed
driver's run resumed by the same command without redoing finished shards, and a task's own
error failing the run at once."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import ray
from ray import cloudpickle

import longforge
from longforge.executor import ExecutorError, RayExecutor, done_path
from longforge.prolong.score import ScoreSettings, score_corpus
from longforge.synth.config import SynthConfig
from longforge.synth.pipeline import run

pytestmark = pytest.mark.xdist_group("ray")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks below, for the workers
SRC = str(Path(longforge.__file__).resolve().parents[1])
TOPICS = ("kernel", "licence", "parser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head node with 2 CPUs, and this process connected to it as a driver."""
    tmp = tempfile.mkdtemp(prefix="lfray")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    log = Path(tmp) / "head.log"
    with open(log, "w") as fh:
        head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}",
                                 "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={tmp}",
                                 "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    address = f"127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "PYTHONPATH"):
            mp.setenv(k, env[k])
        try:
            deadline = time.time() + 120
            while "Ray runtime started" not in log.read_text() and head.poll() is None:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.2)
            assert head.poll() is None, log.read_text()
            ray.init(address=address, logging_level="warning", log_to_driver=False)
            yield {"address": address, "env": env, "tmp": tmp}
        finally:
            ray.shutdown()
            head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
            shutil.rmtree(tmp, ignore_errors=True)


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa document".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A model folder that loads in a blink in every worker: a word-level tokenizer (unknown
    words are <unk>) and a tiny random Llama of that vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from longforge.models import tiny_model

    vocab = ["<unk>", "<pad>", "<eos>"] + WORDS + list(TOPICS)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path_factory.mktemp("tiny")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(d)
    tiny_model("tiny-llama", vocab_size=len(vocab)).save_pretrained(d)
    return str(d)


def _connected(cluster):
    if not ray.is_initialized():
        ray.init(address=cluster["address"], logging_level="warning", log_to_driver=False)


def _corpus(path: Path, n_per_topic: int = 8) -> Path:
    lines = []
    for t in TOPICS:
        for i in range(n_per_topic):
            text = f"{t} document {i}. " + " ".join(f"{t}{j}" for j in range(30 + 5 * i))
            lines.append(json.dumps({"id": f"{t}/{i}", "text": text, "source": t,
                                     "queries": [f"How does the {t} work?"]}))
    lines[5:5] = ["{not json", json.dumps({"id": "empty", "text": " "})]
    lines.append(json.dumps({"id": "kernel/1", "text": "a later shard repeats this id"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _synth_cfg(tmp_path, out, corpus, tokenizer, **kw):
    base = dict(inputs=[str(corpus)], output=tmp_path / out, method="quest", tokenizer=tokenizer,
                query_source="user", context_length=128, group_boundary="pad", tokenized=True,
                num_shards=3)
    return SynthConfig(**{**base, **kw})


SYNTH_FILES = ("sequences-00000.jsonl.gz", "tokens-00000.parquet", "index-00000.parquet",
               "manifest.json")


def _same_outputs(a: Path, b: Path, files=SYNTH_FILES):
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_synth_on_ray_writes_the_bytes_of_the_local_executor(tmp_path, cluster, tiny_dir):
    _connected(cluster)
    corpus = _corpus(tmp_path / "c.jsonl")
    local = run(_synth_cfg(tmp_path, "local", corpus, tiny_dir))
    on_ray = run(_synth_cfg(tmp_path, "ray", corpus, tiny_dir, executor="ray", workers=0,
                            ray_address=cluster["address"]))
    _same_outputs(tmp_path / "local", tmp_path / "ray")
    assert local["skipped_by_reason"] == {"duplicate_id": 1, "empty": 1, "invalid_json": 1}
    assert on_ray == local
    timings = json.loads((tmp_path / "ray" / "timings.json").read_text())
    assert timings["executor"]["kind"] == "ray" and timings["executor"]["resubmissions"] == []


def _score_corpus(path: Path) -> Path:
    with open(path, "w") as fh:
        for k in range(8):
            text = " ".join(WORDS[(k * 3 + t * t) % len(WORDS)] for t in range(20 + 12 * k))
            fh.write(json.dumps({"id": f"d{k}", "text": text}) + "\n")
        fh.write(json.dumps({"id": "d0", "text": "a repeated id in the last shard"}) + "\n")
    return path


def test_score_on_ray_writes_the_bytes_of_the_local_executor(tmp_path, cluster, tiny_dir):
    _connected(cluster)
    corpus = _score_corpus(tmp_path / "c.jsonl")
    s = ScoreSettings(model=tiny_dir, chunk_size=16, max_chunks=8, pairs=12, seed=1,
                      threshold=-1.0, batch_tokens=64)
    local = score_corpus(corpus, tmp_path / "local", s, num_shards=2)
    on_ray = score_corpus(corpus, tmp_path / "ray", s, num_shards=2, executor="ray",
                          ray_address=cluster["address"])
    _same_outputs(tmp_path / "local", tmp_path / "ray", ("scores-00000.jsonl", "scores-00001.jsonl"))
    assert on_ray["skipped_by_reason"] == local["skipped_by_reason"] == {"duplicate_id": 1}
    assert on_ray["executor"]["kind"] == "ray" and local["used"] == on_ray["used"] > 0


def test_an_eval_grid_in_shards_on_ray_writes_the_rows_of_one_local_run(tmp_path, cluster):
    """Each Ray task loads the model and appends its share of the samples to its own file."""
    from longforge.evals.grid import GridJob
    from longforge.evals.runner import Results
    from longforge.executor import make_executor

    _connected(cluster)
    job = GridJob("passkey", "tiny-llama", (300,), (0.0, 0.5, 1.0), 1, "dense,quest@64",
                  str(tmp_path / "local"), tail=8, max_new=2, page_size=16, dense_layers=1,
                  seed=0, device="cpu", dtype="auto")
    job()
    on_ray = replace(job, out=str(tmp_path / "ray"))
    make_executor("ray", ray_address=cluster["address"]).run(on_ray, 2)
    assert sorted(p.name for p in (tmp_path / "ray").glob("results*")) == [
        "results.0-of-2.jsonl", "results.1-of-2.jsonl"]
    rows = [{Results.key(r): r for r in Results.folder(tmp_path / d).rows}
            for d in ("local", "ray")]
    assert len(rows[0]) == 6 and rows[0] == rows[1]


class _Killer(threading.Thread):
    """Kills the worker process of the first prepare shard seen running (its text store's
    temporary file, ``.texts-<shard>.sqlite.tmp<pid>``, names the worker's pid)."""

    def __init__(self, work: Path):
        super().__init__(daemon=True)
        self.work, self.killed, self.stop = work, None, threading.Event()

    def run(self):
        while not self.stop.is_set() and self.killed is None:
            for tmp in self.work.glob(".texts-*.sqlite.tmp*"):
                m = re.fullmatch(r"\.texts-(\d+)\.sqlite\.tmp(\d+)", tmp.name)
                if m is None:
                    continue
                try:
                    psutil.Process(int(m[2])).kill()
                except psutil.NoSuchProcess:
                    continue
                self.killed = int(m[1])
                return
            time.sleep(0.005)


def test_a_killed_worker_is_resubmitted_and_the_output_is_the_same(tmp_path, cluster, tiny_dir):
    _connected(cluster)
    corpus = _corpus(tmp_path / "c.jsonl", n_per_topic=300)
    cfg = _synth_cfg(tmp_path, "ray", corpus, tiny_dir, executor="ray", workers=0, num_shards=2,
                     ray_address=cluster["address"])
    killer = _Killer(tmp_path / "ray" / "work")
    (tmp_path / "ray" / "work").mkdir(parents=True)
    killer.start()
    try:
        run(cfg)
    finally:
        killer.stop.set()
    assert killer.killed is not None, "no shard was seen running"
    timings = json.loads((tmp_path / "ray" / "timings.json").read_text())
    [resub] = timings["executor"]["resubmissions"]
    assert resub["shard"] == killer.killed and "WorkerCrashedError" in resub["reason"]
    run(_synth_cfg(tmp_path, "local", corpus, tiny_dir, num_shards=2))
    _same_outputs(tmp_path / "local", tmp_path / "ray")


def test_a_killed_driver_resumes_without_redoing_finished_shards(tmp_path, cluster, tiny_dir):
    from typer.testing import CliRunner

    from longforge.cli import app

    corpus = _corpus(tmp_path / "c.jsonl", n_per_topic=300)
    out = tmp_path / "ray"
    args = ["synth", str(corpus), "-o", str(out), "-q", "--tokenizer", tiny_dir,
            "--method", "quest", "--query-source", "user", "--context-length", "128",
            "--group-boundary", "pad", "--tokenized", "--num-shards", "2", "--executor", "ray",
            "--ray-address", cluster["address"], "--workers", "1"]  # one shard at a time
    driver = subprocess.Popen([sys.executable, "-m", "longforge.cli", *args], env=cluster["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = done_path(out / "state" / "prepare", 0)
    deadline = time.time() + 120
    while not first.exists() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    driver.kill()
    driver.wait()
    assert first.exists(), driver.stdout.read().decode()
    assert not (out / "manifest.json").exists()  # killed mid-run
    stamp = [(p, p.stat().st_mtime_ns) for p in (first, out / "work" / "docs-00000.parquet")]
    _connected(cluster)
    rerun = CliRunner().invoke(app, args)  # the same command, here (this process is a driver too)
    assert rerun.exit_code == 0, rerun.output
    assert [(p, p.stat().st_mtime_ns) for p, _ in stamp] == stamp  # shard 0 was not redone
    run(_synth_cfg(tmp_path, "local", corpus, tiny_dir, num_shards=2))
    _same_outputs(tmp_path / "local", out)


class DiesOnce:
    """Kills its own worker process the first time it runs shard 1 (a flag file says so)."""

    def __init__(self, flag: Path, always: bool = False):
        self.flag, self.always = flag, always

    def __call__(self, shard, num_shards):
        if shard == 1 and (self.always or not self.flag.exists()):
            self.flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"shard": shard}


class BadRecord:
    def __call__(self, shard, num_shards):
        if shard == 1:
            raise ValueError("c.jsonl:7: a record this step cannot use")
        time.sleep(0.2)
        return {"shard": shard}


def test_executor_failures_are_resubmitted_a_bounded_number_of_times(tmp_path, cluster):
    _connected(cluster)
    ex = RayExecutor(state_dir=tmp_path / "state", address=cluster["address"])
    assert ex.run(DiesOnce(tmp_path / "flag"), 3) == [{"shard": s} for s in range(3)]
    assert [(r["shard"], r["attempt"]) for r in ex.resubmissions] == [(1, 1)]
    ex = RayExecutor(state_dir=tmp_path / "again", address=cluster["address"], max_retries=2)
    with pytest.raises(ExecutorError, match="shard 1 failed 3 times.*WorkerCrashedError"):
        ex.run(DiesOnce(tmp_path / "flag", always=True), 2)
    assert done_path(tmp_path / "again", 0).exists() and not done_path(tmp_path / "again", 1).exists()


def test_a_tasks_own_error_fails_the_run_at_once_with_its_message(tmp_path, cluster):
    _connected(cluster)
    ex = RayExecutor(state_dir=tmp_path / "state", address=cluster["address"])
    with pytest.raises(ValueError, match=r"^c\.jsonl:7: a record this step cannot use$"):
        ex.run(BadRecord(), 3)
    assert ex.resubmissions == []


def test_without_an_address_a_local_cluster_is_started_and_stopped(tmp_path, cluster,
                                                                   monkeypatch):
    ray.shutdown()  # this process leaves the module's cluster for this test
    root = Path(tempfile.mkdtemp(prefix="lfray"))
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        ex = RayExecutor(state_dir=tmp_path / "state", cpus_per_task=0.5)
        (tmp_path / "flag").touch()  # DiesOnce lives
        assert ex.run(DiesOnce(tmp_path / "flag"), 2) == [{"shard": 0}, {"shard": 1}]
        assert not ray.is_initialized()  # the executor stopped the cluster it started
        deadline = time.time() + 30
        while _processes_under(root):
            assert time.time() < deadline, _processes_under(root)
            time.sleep(0.2)
        assert list(root.iterdir()) == []  # and removed its folder
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _processes_under(root: Path) -> list[str]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if str(root) in line:
            out.append(line[:120])
    return out
