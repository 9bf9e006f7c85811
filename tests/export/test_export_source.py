"""Reading synth runs: every method's pieces at their exact token offsets, batch by batch, and
a clear error for a folder that is not a finished, tokenized synth run."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from longforge.export import source
from longforge.export.source import RunError, SynthRun

RUNS = [
    ("quest-pad", dict(group_boundary="pad")),                     # padded at every keyword's end
    ("quest-truncate", dict(boundary="truncate", fmt="jsonl")),
    ("standard", dict(method="standard", fmt="parquet")),          # carried across sequences
    ("longdoc", dict(method="longdoc", boundary="pad")),
    ("knn", dict(method="knn", knn_k=3, context_length=256)),
    ("iclm", dict(method="iclm", iclm_k=4, context_length=256, iclm_dup_threshold=1.01)),
]


@pytest.mark.parametrize("name, settings", RUNS, ids=[r[0] for r in RUNS])
def test_every_method_reads_back_its_tokens_and_piece_offsets(synth_run, truth, synth_records,
                                                              name, settings):
    path = synth_run(name, **settings)
    ids, spans, pads = truth(path)
    run = SynthRun(path)
    got = [s for batch in run.batches(7) for s in batch]
    assert len(got) == len(ids) > 0
    for s, i, sp, p in zip(got, ids, spans, pads):
        assert s.input_ids.dtype == np.int32 and (s.input_ids == i).all()
        assert (s.spans == sp).all() and s.n_pad == p
    assert run.eos_id == 1 and run.eos_inside_documents == 0
    # a piece followed by EOS ends its document; only a sequence's last piece may lack it
    n_tokens = dict(zip(*pq.read_table(path / "work" / "docs-00000.parquet",
                                       columns=["id", "n_tokens"]).to_pydict().values()))
    for s, rec in zip(got, synth_records(path)):
        for k, (p, (a, b)) in enumerate(zip(rec["pieces"], s.spans)):
            sep = b - a == p["end"] - p["start"] + 1
            assert sep <= (p["end"] == n_tokens[p["doc"]])
            assert sep or k == len(rec["pieces"]) - 1
            if sep:
                assert s.input_ids[b - 1] == run.eos_id
        assert (s.input_ids[s.content:] == run.pad_id).all()


def test_a_run_without_tokens_is_refused_or_retokenized_exactly_as_the_packer_did(synth_run,
                                                                                 tmp_path):
    tokenized = SynthRun(synth_run("standard", method="standard", fmt="parquet"))
    plain = _copy(synth_run("standard-plain", method="standard", fmt="parquet", tokenized=False),
                  tmp_path)
    with pytest.raises(RunError, match="--retokenize.*--tokenized"):
        SynthRun(plain)
    again = SynthRun(plain, retokenize=True)
    a = [s for b in tokenized.batches() for s in b]
    b = [s for b in again.batches(5) for s in b]
    assert len(a) == len(b) and "retokenized" in again.token_source
    for x, y in zip(a, b):
        assert (x.input_ids == y.input_ids).all() and (x.spans == y.spans).all()
    assert (again.eos_id, again.pad_id) == (tokenized.eos_id, 0)
    shutil.rmtree(plain / "work")
    with pytest.raises(RunError, match="texts-00000.sqlite: missing.*--tokenized"):
        SynthRun(plain, retokenize=True)


def _copy(path, tmp_path):
    return shutil.copytree(path, tmp_path / path.name)


def test_folders_that_are_not_finished_synth_runs_are_refused_with_the_reason(synth_run,
                                                                              tmp_path):
    with pytest.raises(RunError, match="no such folder"):
        SynthRun(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a `longforge synth` output folder"):
        SynthRun(tmp_path / "empty")
    other = tmp_path / "eval"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"command": "eval", "settings": {}}))
    with pytest.raises(RunError, match="not a `longforge synth` output folder"):
        SynthRun(other)
    run = _copy(synth_run("quest-pad", group_boundary="pad"), tmp_path)
    (run / "tokens-00000.parquet").rename(run / "moved.parquet")
    with pytest.raises(RunError, match="tokens-00000.parquet: missing"):
        SynthRun(run)
    (run / "manifest.json").unlink()
    with pytest.raises(RunError, match="not finished"):
        SynthRun(run)


def test_a_record_that_does_not_fill_the_sequence_is_named_by_file_and_line(synth_run,
                                                                           tmp_path):
    run = _copy(synth_run("quest-truncate", boundary="truncate", fmt="jsonl"), tmp_path)
    lines = (run / "sequences-00000.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["pieces"][0]["end"] -= 5
    lines[2] = json.dumps(rec)
    (run / "sequences-00000.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunError, match=r"sequences-00000.jsonl:3: the pieces .* context length 128"):
        for _ in SynthRun(run).batches(2):
            pass
    (run / "sequences-00000.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(RunError, match="has 2 sequences"):
        for _ in SynthRun(run).batches(2):
            pass


def test_reading_streams_batch_by_batch(synth_run, monkeypatch):
    path = synth_run("standard-16", method="standard", context_length=16, fmt="jsonl")
    rows, lines = [], []
    real_iter, real_loads = pq.ParquetFile.iter_batches, json.loads

    def counted_batches(self, *a, **kw):
        for b in real_iter(self, *a, **kw):
            rows.append(b.num_rows)
            yield b

    def counted_loads(text, *a, **kw):
        lines.append(1)
        return real_loads(text, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted_batches)
    monkeypatch.setattr(source.json, "loads", counted_loads)
    run = SynthRun(path)
    lines.clear()  # settings.json and manifest.json
    assert run.num_sequences > 100
    batches = run.batches(8)
    first = next(batches)
    assert len(first) == 8 and sum(rows) == 8 and len(lines) == 8  # nothing read ahead
    sizes = [len(first)] + [len(b) for b in batches]
    assert max(sizes) == 8 and sum(sizes) == run.num_sequences == sum(rows) == len(lines)
