"""The faster embedding routes of knn and iclm are explicit options that do what they say."""
import numpy as np
import pytest

from longforge.synth.config import SynthConfig
from longforge.synth.embed import embed, load_embedder

TEXTS = ["The kernel schedules realtime threads before normal ones. " * 20,
         "A tenant gives written notice thirty days before the lease ends. " * 20,
         "The JSON parser reads nested arrays with an explicit stack. " * 20]


def test_fewer_tokens_and_int8_weights_stay_close_to_the_default():
    base = embed(load_embedder(), TEXTS)
    short = load_embedder(max_tokens=32)
    assert short.max_seq_length == 32
    int8 = load_embedder(quantize="int8")
    assert "quantized.dynamic" in type(int8[0].auto_model.encoder.layer[0].attention.self.query).__module__
    for model in (short, int8):
        vecs = embed(model, TEXTS)
        cos = (vecs * base).sum(1)
        assert np.all(cos > 0.75) and not np.allclose(vecs, base)
        assert np.argmax(vecs @ base.T, axis=1).tolist() == [0, 1, 2]  # each still nearest itself


def test_bad_embedding_options_fail_by_name(tmp_path):
    with pytest.raises(ValueError, match="--embed-quantize"):
        SynthConfig(inputs=["x"], output=tmp_path, method="knn", embed_quantize="int4")
    with pytest.raises(ValueError, match="--embed-max-tokens"):
        SynthConfig(inputs=["x"], output=tmp_path, method="knn", embed_max_tokens=2)
    with pytest.raises(ValueError, match="--embed-device"):
        SynthConfig(inputs=["x"], output=tmp_path, method="knn", embed_device="tpu")
