import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))


@pytest.fixture(scope="session")
def load_tiny_chat(tmp_path_factory):
    """A loader of a tiny Qwen2 GGUF with a ChatML chat template (random weights, a 512-token
    byte-level vocabulary; ``chat=False``: the same without a template, a base model): each
    call returns a new model object (one per server)."""
    from gguf_writer import write_tiny_qwen2

    from longforge.models import load_model, tiny_model

    root = tmp_path_factory.mktemp("tiny-chat")
    src = tiny_model("tiny-qwen2", seed=3)
    paths = {chat: write_tiny_qwen2(root / f"tiny-{chat}.gguf", src, chat=chat)
             for chat in (True, False)}

    def load(chat: bool = True):
        path = paths[chat]
        old = os.environ.get("LONGFORGE_CACHE")
        os.environ["LONGFORGE_CACHE"] = str(root / "cache")
        try:
            return load_model(str(path), device="cpu", dtype="fp32")
        finally:
            if old is None:
                os.environ.pop("LONGFORGE_CACHE")
            else:
                os.environ["LONGFORGE_CACHE"] = old

    return load


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread (with several, a tiny matmul spends more time waking
    threads than computing, worse on a busy machine). Restored after the module."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
