"""``longforge serve``: an OpenAI-compatible HTTP server over one model (see docs/serve.md)."""
from __future__ import annotations

import re

import typer

from longforge.cli_support import DEVICE_HELP, DTYPE_HELP, command

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str, option: str) -> int:
    """``"2GiB"``, ``"512M"``, ``"1000000"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
    if not m:
        raise typer.BadParameter(f"{text!r}: give bytes, e.g. 2GiB, 512MiB or 1000000",
                                 param_hint=option)
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


@command
def serve(
    model: str = typer.Option("gemma-3-270m", "--model", "-m",
                              help="Model spec (bundled name, .gguf file, HF id or folder)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="TCP port."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    served_model_name: str = typer.Option(None, help="The model name clients send (default: "
                                                     "the spec)."),
    api_key: str = typer.Option(None, envvar="LONGFORGE_API_KEY",
                                help="Require 'Authorization: Bearer KEY' on /v1 and /metrics."),
    token_budget: int = typer.Option(2048, help="Default token budget: Quest decodes prompts "
                                                "longer than it, dense the others."),
    page_size: int = typer.Option(16, help="KV page size in tokens (Quest's pages)."),
    dense_layers: str = typer.Option("auto", help="Layers that decode densely under every "
                                                  "policy: auto, N or full:N."),
    block_tokens: int = typer.Option(256, help="Document-cache block size in tokens (a multiple "
                                               "of --page-size): prefixes are reused in blocks."),
    prefill_chunk: int = typer.Option(2048, help="Prompt tokens per prefill forward."),
    kv_cache_bytes: str = typer.Option("2GiB", help="RAM for the document KV cache (LRU); 0 "
                                                    "keeps nothing in RAM."),
    kv_cache_dir: str = typer.Option(None, help="Also keep the document KV cache in this folder "
                                                "(safetensors), across restarts."),
    max_concurrent: int = typer.Option(4, help="Generations in flight (their steps "
                                               "interleaved); later requests wait, FIFO."),
    max_queue: int = typer.Option(64, help="Requests that may wait; beyond, 429."),
    max_prompt_tokens: int = typer.Option(None, help="Longest prompt accepted (default: the "
                                                     "model's context)."),
    max_new_tokens: int = typer.Option(1024, help="Most tokens generated per request (also "
                                                  "the default max_tokens)."),
    request_timeout: float = typer.Option(600.0, help="Seconds a request may take, queue "
                                                      "included; then 504."),
    max_body_bytes: str = typer.Option("8MiB", help="Largest request body; beyond, 413."),
    threads: int = typer.Option(None, help="torch intra-op threads (default: torch's own)."),
) -> None:
    """Serve MODEL over OpenAI's chat and completions API, with Quest decoding and a document
    KV cache."""
    from longforge.models import check_spec, load_model
    from longforge.progress import is_quiet, say
    from longforge.serve.app import ServerConfig, create_app
    from longforge.serve.engine import Engine, EngineSettings
    from longforge.sparse.policies import normalize_dense_layers

    try:
        settings = EngineSettings(token_budget, page_size, normalize_dense_layers(dense_layers),
                                  block_tokens, prefill_chunk,
                                  parse_bytes(kv_cache_bytes, "--kv-cache-bytes"), kv_cache_dir,
                                  max_prompt_tokens, max_new_tokens)
        config = ServerConfig(served_model_name or model, api_key,
                              parse_bytes(max_body_bytes, "--max-body-bytes"), request_timeout,
                              max_concurrent, max_queue)
        if max_concurrent < 1 or max_queue < 0 or request_timeout <= 0:
            raise ValueError("--max-concurrent must be >= 1, --max-queue >= 0 and "
                             "--request-timeout > 0")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    check_spec(model)
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)

    say(f"loading {model} ...")
    engine = Engine(load_model(model, device=device, dtype=dtype), settings)
    app = create_app(engine, config)
    say(f"serving {config.model_name!r} at http://{host}:{port}/v1 (document KV cache: "
        f"{settings.kv_cache_bytes} bytes of RAM"
        f"{', ' + kv_cache_dir if kv_cache_dir else ''})")
    uvicorn.run(app, host=host, port=port, log_level="warning" if is_quiet() else "info")
