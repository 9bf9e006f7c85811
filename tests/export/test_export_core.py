"""`longforge export` as a command: the demo's synth output in all four formats, the run-folder
contract (settings, manifest, atomic, deterministic, reruns), and its errors."""
import json
import os
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from longforge.cli import app
from longforge.export import core, source
from longforge.export.core import export
from longforge.export.source import RunError
from longforge.runs import SettingsMismatch


def _cli(*args):
    return CliRunner().invoke(app, ["export", *map(str, args), "-q"])


def _read_back(fmt, out, L, streaming):
    """The token ids of every sequence, as the format's own library reads them."""
    if fmt == "megatron":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset
        ds = IndexedDataset(str(out / "sequences"))
        return np.stack([ds[i] for i in range(len(ds))])
    if fmt == "mds":
        ds = streaming.StreamingDataset(local=str(out), shuffle=False, batch_size=1)
        return np.stack([ds[i]["input_ids"] for i in range(len(ds))])
    if fmt == "hf":
        import datasets

        return np.array(datasets.load_from_disk(str(out)).with_format("numpy")["input_ids"])
    from datatrove.utils.dataset import DatatroveFileDataset

    ds = DatatroveFileDataset(str(out / "sequences.ds"), seq_len=L - 1, token_size=4)
    return np.stack([ds[i]["input_ids"].numpy() for i in range(len(ds))])


def test_the_demo_s_synth_output_reads_back_token_for_token_in_all_four_formats(
        tmp_path_factory, truth, streaming):
    """The demo's synth stage (its settings, its slice of the sample corpus, Gemma's tokenizer),
    with keywords taken from the documents instead of Gemma's queries, so that no model runs."""
    from longforge.synth.demo import demo_config
    from longforge.synth.pipeline import run

    tmp = tmp_path_factory.mktemp("demo")
    cfg = demo_config(tmp / "synth", query_source="document")
    assert cfg.tokenized and cfg.context_length == 2048 and cfg.tokenizer == "gemma-3-270m"
    run(cfg)
    ids, spans, pads = truth(cfg.output)
    for fmt in core.FORMATS:
        out = tmp / "export" / f"quest-{fmt}"
        res = _cli(cfg.output, "--to", fmt, "-o", out)
        assert res.exit_code == 0, res.output
        assert f"{len(ids)} sequences of 2048 tokens" in res.output
        m = json.loads((out / "manifest.json").read_text())
        assert (m["sequences"], m["tokens"], m["pieces"]) == (len(ids), ids.size,
                                                              sum(map(len, spans)))
        assert m["source"]["method"] == "quest" and m["tokenizer"] == "gemma-3-270m"
        assert m["pad_tokens"] == sum(pads) and set(m["files"]) and m["eos_id"] == 1
        assert (_read_back(fmt, out, 2048, streaming) == ids).all(), fmt


def test_a_rerun_keeps_the_export_and_other_settings_are_refused(synth_run, tmp_path):
    path = synth_run("quest-pad", group_boundary="pad")
    out = tmp_path / "hf"
    assert _cli(path, "--to", "hf", "-o", out).exit_code == 0
    stamp = (out / "data-00000-of-00001.arrow").stat().st_mtime_ns
    res = _cli(path, "--to", "hf", "-o", out)
    assert res.exit_code == 0 and (out / "data-00000-of-00001.arrow").stat().st_mtime_ns == stamp
    res = _cli(path, "--to", "hf", "-o", out, "--boundaries", "documents")
    assert res.exit_code == 1 and "boundaries: 'sequence' there, 'documents' now" in res.output
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    res = _cli(path, "--to", "mds", "-o", stray)
    assert res.exit_code == 1 and "holds files but no settings.json" in res.output
    assert (stray / "notes.txt").read_text() == "mine"


def test_same_run_same_bytes(synth_run, tmp_path):
    path = synth_run("quest-pad", group_boundary="pad")
    for fmt in core.FORMATS:
        a, b = tmp_path / f"{fmt}-a", tmp_path / f"{fmt}-b"
        export(path, fmt, a, boundaries="documents" if fmt != "megatron" else "sequence")
        os.rename(a, b)
        export(path, fmt, a, boundaries="documents" if fmt != "megatron" else "sequence")
        names = sorted(p.name for p in a.iterdir() if p.name != "timings.json")
        assert names == sorted(p.name for p in b.iterdir() if p.name != "timings.json")
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), (fmt, name)


def test_a_failed_export_leaves_nothing_behind(synth_run, tmp_path, monkeypatch):
    path = synth_run("quest-pad", group_boundary="pad")

    def dies(run, batches, out, boundaries):
        next(iter(batches))
        (out / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(core.to_mds, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        export(path, "mds", tmp_path / "out" / "mds")
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_options_are_usage_errors_and_bad_inputs_name_the_problem(synth_run, tmp_path,
                                                                     monkeypatch):
    path = synth_run("quest-pad", group_boundary="pad")
    res = _cli(path, "--to", "csv", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "--to must be one of megatron, mds, hf, datatrove" in res.output
    res = _cli(path, "--to", "megatron", "--boundaries", "documents", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "--reset-attention-mask" in res.output
    res = _cli(tmp_path, "--to", "hf", "-o", tmp_path / "x")
    assert res.exit_code == 1 and "is not a `longforge synth` output folder" in res.output
    plain = synth_run("standard-plain", method="standard", fmt="parquet", tokenized=False)
    res = _cli(plain, "--to", "hf", "-o", tmp_path / "x")
    assert res.exit_code == 1 and "--retokenize" in res.output
    assert not (tmp_path / "x").exists()
    res = _cli(plain, "--to", "datatrove", "-o", tmp_path / "x", "--retokenize")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert m["source"]["token_ids"].startswith("retokenized") and m["format"] == "datatrove"
    real = source.importlib.import_module

    def no_datasets(name, *a):
        if name.startswith("datasets"):
            raise ImportError(name)
        return real(name, *a)

    monkeypatch.setattr(source.importlib, "import_module", no_datasets)
    with pytest.raises(RunError, match=r"--to hf needs datasets: pip install 'longforge\[export\]'"):
        export(path, "hf", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    with pytest.raises(SettingsMismatch):
        export(path, "megatron", tmp_path / "x")  # the datatrove export of another run
