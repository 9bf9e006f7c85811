import pytest


@pytest.fixture(scope="session")
def gemma():
    """The real bundled Gemma 3 270M (fp32, CPU), loaded once per test process."""
    from longforge.models import load_model

    return load_model("gemma-3-270m", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from longforge.models import load_tokenizer

    return load_tokenizer("gemma-3-270m")
