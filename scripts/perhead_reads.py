"""How many pages per-query-head Quest selection reads, against per-group selection.

Per-group selection reads K = budget / page_size pages per KV group per step; per-head selection
reads the union of its G heads' K pages. This runs NIAH samples of the bundled Gemma 3 270M
under ``quest-head`` and prints the mean union size over all sparse decode steps, as a multiple
of K:

    python scripts/perhead_reads.py --lengths 4096 --depths 0.25,0.75 --budget 1/8 --page-size 16
"""
from __future__ import annotations

import argparse

import torch

from longforge.evals import niah
from longforge.evals.runner import Method, _seed, run_sample
from longforge.models import load_model
from longforge.sparse.backends import get_backend
from longforge.sparse.hf import sparse_attention
from longforge.sparse.policies import Dense


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="4096")
    ap.add_argument("--depths", default="0.25,0.75")
    ap.add_argument("--budget", default="1/8")
    ap.add_argument("--page-size", type=int, default=16)
    a = ap.parse_args()
    lm = load_model("gemma-3-270m")
    ratios = []

    backend = get_backend()  # the instance the policy's sparse steps use (one per process)
    own_pages = backend.attend_head_pages

    def counting(q, store, top, *rest):  # top: each head's K pages [B, H_kv, G, K]
        for row in top.flatten(2).flatten(0, 1):
            ratios.append(len(set(row.tolist())) / top.shape[-1])
        return own_pages(q, store, top, *rest)

    backend.attend_head_pages = counting
    method = Method("quest-head", a.budget)
    with sparse_attention(lm.model, Dense()):
        for L in map(int, a.lengths.split(",")):
            for d in map(float, a.depths.split(",")):
                ids, _ = niah.build(lm.tokenizer, L, d, _seed(0, "niah", L, d, 0))
                run_sample(lm.model, ids, [method], 64, 12, a.page_size, 2)
    r = torch.tensor(ratios)
    print(f"{len(r)} sparse decode steps x groups: per-head selection reads {r.mean():.2f}x the "
          f"pages of per-group selection (min {r.min():.2f}, max {r.max():.2f}; G = 4 allows 4x)")


if __name__ == "__main__":
    main()
