"""Quest on the real bundled Gemma 3 270M (sliding window 512, 3 full-attention layers)."""
import pytest
import torch

import longforge
from longforge.evals import passkey

pytestmark = pytest.mark.real_model


def test_gemma_full_budget_equals_stock_beyond_the_sliding_window(gemma):
    m, tok = gemma.model, gemma.tokenizer
    ids, _ = passkey.build(tok, 700, 0.5, seed=0)  # longer than the 512-token window
    x = torch.tensor([ids])
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    ref = m.generate(input_ids=x, **kw)
    with longforge.quest(m, token_budget=4096, dense_layers=0):
        out = m.generate(input_ids=x, **kw)
    diff = max((a - b).abs().max().item() for a, b in zip(ref.logits, out.logits))
    assert diff < 1e-3  # the pitfall (window lost without the mask function) gave ~13


def test_gemma_passkey_dense_and_quest(gemma):
    m, tok = gemma.model, gemma.tokenizer
    ids, key = passkey.build(tok, 1024, 0.3, seed=5)
    x = torch.tensor([ids])
    with longforge.quest(m, token_budget=128):
        out = m.generate(input_ids=x, max_new_tokens=7, do_sample=False)
    assert passkey.score(tok.decode(out[0, len(ids):]), key)
    assert passkey.score(tok.decode(m.generate(input_ids=x, max_new_tokens=7,
                                               do_sample=False)[0, len(ids):]), key)
