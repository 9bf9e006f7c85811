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


def test_neighbours_are_copies_first_then_exact_score_then_position_whatever_the_threads():
    """Copies of one vector and near-ties come out in one order: faiss's float32 search with
    another thread count must not change a document's neighbours (or the KNN/ICLM groups)."""
    import faiss

    from longforge.synth.embed import neighbours

    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    emb = np.concatenate([base, base[[3] * 6], base[:10] + 1e-7]).astype(np.float32)
    emb = emb[rng.permutation(len(emb))]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    k = 9
    first = {v.tobytes(): i for i, v in reversed(list(enumerate(emb)))}
    score = (emb.astype(np.float64) @ emb.astype(np.float64).T).astype(np.float32)

    def expected(i):
        others = [j for j in range(len(emb)) if j != i]
        same = [j for j in others if emb[j].tobytes() == emb[i].tobytes()]
        rest = sorted((j for j in others if j not in same),
                      key=lambda j: (-score[i, j], first[emb[j].tobytes()], j))
        return (same + rest)[:k]

    runs = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        nb, kind = neighbours(emb, k, "flat")
        runs.append(nb)
    assert kind == "flat" and np.array_equal(runs[0], runs[1])
    assert [runs[0][i].tolist() for i in range(len(emb))] == [expected(i) for i in range(len(emb))]
    assert neighbours(emb[:3], 5, "flat")[0][:, 2:].tolist() == [[-1] * 3] * 3  # -1 pads
