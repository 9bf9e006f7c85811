"""The ProLong stage of ``longforge demo``: score a handful of sample documents, keep the top half."""
from __future__ import annotations

from pathlib import Path

from longforge.corpus import read_documents, write_documents
from longforge.prolong.filter import filter_corpus
from longforge.prolong.score import ScoreSettings, read_scores, score_corpus


def prolong_stage(out_dir: Path, model, per_domain: int = 1, max_chunks: int = 6) -> str:
    from longforge.data import sample_corpus_path

    base = out_dir / "prolong"
    picked: dict[str, list] = {}
    for d in read_documents(sample_corpus_path()):  # the first long-enough documents per domain
        if len(d.text) > 4000 and len(picked.setdefault(d.source, [])) < per_domain:
            picked[d.source].append(d)
    corpus = write_documents([d for ds in picked.values() for d in ds], base, prefix="input",
                             fmt="jsonl")
    s = ScoreSettings(model=model.spec, max_chunks=max_chunks)
    m = score_corpus(corpus, base / "scores", s, model=model)
    f = filter_corpus(base / "scores", corpus, base / "kept", keep=0.5)
    recs = sorted((r for r in read_scores(base / "scores") if r["lds"] is not None),
                  key=lambda r: -r["lds"])
    return (f"scored {m['used']} documents (<= {max_chunks} chunks of 128 tokens, all pairs): "
            f"LDS {recs[-1]['lds']:.2f} ({recs[-1]['id']}) .. {recs[0]['lds']:.2f} "
            f"({recs[0]['id']}); kept {f['used']} (LDS >= {f['lds_cutoff']:.2f}) in {base / 'kept'}")
