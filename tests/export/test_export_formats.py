"""Each export read back by its trainer's own library: the same token ids as the run's
tokens-00000.parquet, the same document boundaries, padding where each format says."""
import json
import warnings

import numpy as np
import pytest
import torch

from longforge.export import to_mds
from longforge.export.core import export
from longforge.export.source import SynthRun


@pytest.fixture(scope="module")
def packed(synth_run):
    """A Quest run padded at every keyword's end: many pieces per sequence and padding, with
    ids above 65,535."""
    return synth_run("quest-pad", group_boundary="pad")


def _segments(spans, n_pad, length, boundaries):
    """Expected [start, end) of every document a trainer sees, padding a document of its own."""
    seg = [tuple(s) for s in spans] if boundaries == "documents" else [(0, length - n_pad)]
    return seg + ([(length - n_pad, length)] if n_pad else [])


def _positions(segments):
    return np.concatenate([np.arange(b - a) for a, b in segments])


def test_ids_need_four_bytes(packed, truth):
    ids, _, pads = truth(packed)
    assert ids.max() > 65535 and sum(pads) > 0


def _megatron():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.datasets.indexed_dataset import IndexedDataset
        from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer
        from megatron.core.datasets.utils import Split

    class Tokenizer(MegatronLegacyTokenizer):
        """The ids Megatron's GPTDataset asks of a tokenizer: Gemma's EOS and pad."""
        vocab_size, eod, pad = 262144, 1, 0
        vocab = inv_vocab = {}

        def __init__(self):
            super().__init__("gemma-3-270m")

        def tokenize(self, text):
            raise NotImplementedError

        def detokenize(self, ids):
            raise NotImplementedError

    return GPTDataset, GPTDatasetConfig, IndexedDataset, Split, Tokenizer


def test_megatron_reads_every_pack_and_resets_positions_at_every_eod(packed, truth, tmp_path):
    GPTDataset, GPTDatasetConfig, IndexedDataset, Split, Tokenizer = _megatron()
    ids, spans, pads = truth(packed)
    n, L = ids.shape
    m = export(packed, "megatron", tmp_path / "meg")
    assert m["sequences"] == n and m["token_dtype"] == "int32" and m["eos_id"] == 1
    ds = IndexedDataset(str(tmp_path / "meg" / "sequences"))
    assert len(ds) == n and ds.index.dtype == np.int32
    assert (ds.sequence_lengths == L).all() and (ds.document_indices == np.arange(n + 1)).all()
    for i in range(n):
        assert (ds[i] == ids[i]).all()
    # GPTDataset, with Megatron's per-document flags: one sample per pack (the last pack of
    # an epoch only lends the extra label token), positions restarting after every separator,
    # no loss on separators or padding
    cfg = GPTDatasetConfig(random_seed=0, sequence_length=L, split="100,0,0",
                           tokenizer=Tokenizer(), reset_position_ids=True,
                           reset_attention_mask=True, eod_mask_loss=True)
    gpt = GPTDataset(ds, str(tmp_path / "meg" / "sequences"), np.arange(n), None, Split.train, cfg)
    assert len(gpt) == n - 1
    which = {ids[i].astype(np.int32).tobytes(): i for i in range(n)}
    for k in range(len(gpt)):
        sample = gpt[k]
        i = which[sample["tokens"].numpy().astype(np.int32).tobytes()]
        segments = _segments(spans[i], pads[i], L, "documents")
        assert (sample["position_ids"].numpy() == _positions(segments)).all()
        loss = sample["loss_mask"].numpy()
        content = L - pads[i]
        seps = [b - 1 for a, b in spans[i] if ids[i][b - 1] == 1]
        assert (loss[seps] == 0).all()
        # a pad label costs nothing; the last position's label is the next pack's first token
        assert (loss[content - 1 if pads[i] else L - 1:L - 1] == 0).all()
        keep = np.ones(L, dtype=bool)
        keep[seps] = False
        keep[content - 1 if pads[i] else L - 1:] = False
        assert (loss[keep] == 1).all()


@pytest.mark.parametrize("boundaries", ["sequence", "documents"])
def test_mds_has_mdswriter_s_bytes_and_streaming_dataset_reads_it(packed, truth, tmp_path,
                                                                 streaming, monkeypatch,
                                                                 boundaries):
    ids, spans, pads = truth(packed)
    n, L = ids.shape
    monkeypatch.setattr(to_mds, "SIZE_LIMIT", 1 << 12)  # several shards
    export(packed, "mds", tmp_path / "mds", boundaries=boundaries)
    with streaming.MDSWriter(out=str(tmp_path / "ref"), columns=to_mds.COLUMNS,
                             size_limit=1 << 12) as w:
        for s in (s for b in SynthRun(packed).batches() for s in b):
            w.write({"input_ids": s.input_ids.astype(np.uint32),
                     "indices": s.segments(boundaries).astype(np.uint32),
                     "spans": s.spans.astype(np.uint32)})
    ref = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert len(ref) > 3 and ref == sorted(set(ref) & {p.name for p in (tmp_path / "mds").iterdir()})
    for name in ref:
        assert (tmp_path / "mds" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    ds = streaming.StreamingDataset(local=str(tmp_path / "mds"), shuffle=False, batch_size=1)
    assert len(ds) == n
    for i in range(n):
        row = ds[i]
        assert row["input_ids"].dtype == np.uint32 and (row["input_ids"] == ids[i]).all()
        assert (row["spans"] == spans[i]).all()
        # ProLong's collator takes `for a, b in indices`: the documents, never the padding
        want = _segments(spans[i], pads[i], L, boundaries)[:len(spans[i]) if boundaries ==
                                                            "documents" else 1]
        assert [tuple(map(int, x)) for x in row["indices"]] == want


@pytest.mark.parametrize("boundaries", ["sequence", "documents"])
def test_hf_load_from_disk_reads_ids_labels_spans_and_positions(packed, truth, tmp_path,
                                                                boundaries):
    import datasets
    from transformers.masking_utils import find_packed_sequence_indices

    ids, spans, pads = truth(packed)
    n, L = ids.shape
    export(packed, "hf", tmp_path / "hf", boundaries=boundaries)
    ds = datasets.load_from_disk(str(tmp_path / "hf")).with_format("numpy")
    want = ["input_ids", "labels", "spans"] + (["position_ids"] if boundaries == "documents" else [])
    assert ds.column_names == want and len(ds) == n
    for i, row in enumerate(ds):
        assert (row["input_ids"] == ids[i]).all() and (row["spans"] == spans[i]).all()
        labels = ids[i].copy()
        labels[L - pads[i]:] = -100
        assert (row["labels"] == labels).all()
        if boundaries == "documents":
            segments = _segments(spans[i], pads[i], L, "documents")
            assert (row["position_ids"] == _positions(segments)).all()
            # what transformers makes of them: one packed document per segment
            found = find_packed_sequence_indices(torch.tensor(row["position_ids"])[None])
            doc_of = np.repeat(np.arange(len(segments)), [b - a for a, b in segments])
            assert (found is None and len(segments) == 1) or (found[0].numpy() == doc_of).all()


def test_hf_position_ids_keep_a_model_inside_each_document(packed, tmp_path):
    """transformers reads restarting position ids as packed documents when it builds no cache
    (training with use_cache=False, as docs/export.md says)."""
    import datasets
    from transformers import LlamaConfig, LlamaForCausalLM

    export(packed, "hf", tmp_path / "hf", boundaries="documents")
    ds = datasets.load_from_disk(str(tmp_path / "hf")).with_format("torch")
    row = next(r for r in ds if len(r["spans"]) >= 3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=262144, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2)).eval()
    a, b = (int(x) for x in row["spans"][1])
    with torch.no_grad():
        packed_logits = model(input_ids=row["input_ids"][None], use_cache=False,
                              position_ids=row["position_ids"][None]).logits[0, a:b]
        alone = model(input_ids=row["input_ids"][None, a:b], use_cache=False).logits[0]
    assert torch.allclose(packed_logits, alone, atol=1e-5)


@pytest.mark.parametrize("boundaries", ["sequence", "documents"])
def test_datatrove_file_dataset_reads_each_pack_with_its_positions(packed, truth, tmp_path,
                                                                   boundaries):
    from datatrove.utils.dataset import DatatroveFileDataset, DatatroveFolderDataset

    ids, spans, pads = truth(packed)
    n, L = ids.shape
    out = tmp_path / "dt"
    m = export(packed, "datatrove", out, boundaries=boundaries)
    assert sorted(m["files"]) == ["sequences.ds", "sequences.ds.index", "sequences.ds.loss",
                                  "sequences.ds.metadata"]
    ds = DatatroveFileDataset(str(out / "sequences.ds"), seq_len=L - 1, token_size=4,
                              return_positions=True)
    assert len(ds) == n
    for i in range(n):
        item = ds[i]
        assert (item["input_ids"].numpy() == ids[i]).all()
        segments = _segments(spans[i], pads[i], L, boundaries)
        assert (item["positions"].numpy() == _positions(segments)).all()
    folder = DatatroveFolderDataset(str(out), seq_len=L - 1, token_size=4)
    assert len(folder) == n and (folder[n - 1]["input_ids"].numpy() == ids[n - 1]).all()
    loss = np.fromfile(out / "sequences.ds.loss", dtype=np.uint8).reshape(n, L)
    assert (loss == (np.arange(L)[None] < (L - np.array(pads))[:, None])).all()
    meta = (out / "sequences.ds.metadata").read_text().splitlines()
    assert meta[:2] == ["tiny-llama|4", str(n * L)]
    assert json.loads((out / "manifest.json").read_text())["boundaries"] == boundaries
