import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when it decorates its own library functions (tl.max, tl.sum...),
# i.e. when triton is first imported -- and transformers imports it early. Without a GPU the
# kernels can only run interpreted, so set it here, before any test module imports anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def gemma():
    """The real bundled Gemma 3 270M (fp32, CPU), loaded once per test process."""
    from longforge.models import load_model

    return load_model("gemma-3-270m", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from longforge.models import load_tokenizer

    return load_tokenizer("gemma-3-270m")


@pytest.fixture(scope="session")
def qwen():
    """The real bundled Qwen2.5-Coder-0.5B-Instruct (fp32, CPU), loaded once per test process."""
    from longforge.models import load_model

    return load_model("qwen2.5-coder-0.5b-instruct", device="cpu", dtype="fp32")
