"""Exact softmax attention over the keys a policy keeps, with logit softcapping: written once.

Every decode path (the reference, the PyTorch CPU backend, the comparison policies), the dense
prefill of softcapped models and H2O's prefill scores call :func:`attend` or :func:`probabilities`;
the C and Triton kernels compute the same formula inside their loops and are tested against it.
"""
from __future__ import annotations

import torch


def softcap(s: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-style logit softcapping ``cap * tanh(s / cap)`` (``cap`` None or 0: unchanged)."""
    return torch.tanh(s / cap) * cap if cap else s


def scores(q: torch.Tensor, k: torch.Tensor, scale: float, cap: float | None = None,
           keys_first: bool = False) -> torch.Tensor:
    """Scaled, softcapped attention logits: ``q @ k^T`` as ``[..., Tq, Tk]``, or with
    ``keys_first`` ``k @ q^T`` as ``[..., Tk, Tq]`` (the CPU layout: it streams the keys row by
    row, and a decode step's few query heads make it a matrix-vector product)."""
    s = torch.matmul(k, q.transpose(-1, -2)) if keys_first else torch.matmul(q, k.transpose(-1, -2))
    s.mul_(scale)
    return softcap(s, cap)


def probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float,
                  cap: float | None = None, keys_first: bool = False,
                  floor: bool = False) -> torch.Tensor:
    """Softmax over the keys, in fp32. ``mask`` broadcasts to the logits: bool (True = may
    attend) or additive float; ``floor``: masked logits get the dtype's finite minimum instead of
    -inf, so that a row with no attendable key stays finite (as eager attention does)."""
    s = scores(q, k, scale, cap, keys_first)
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill_(~mask, torch.finfo(s.dtype).min if floor else float("-inf"))
        else:
            s = s + mask
    return torch.softmax(s, dim=-2 if keys_first else -1, dtype=torch.float32)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           scale: float = 1.0, cap: float | None = None, keys_first: bool = False,
           floor: bool = False, return_probs: bool = False):
    """Exact softmax attention of ``q [..., Tq, D]`` over ``k, v [..., Tk, D]`` -> ``[..., Tq, D]``
    (see :func:`probabilities` for ``mask``, ``keys_first`` and ``floor``); with
    ``return_probs`` also the fp32 probabilities."""
    p = probabilities(q, k, mask, scale, cap, keys_first, floor)
    pv = p.to(v.dtype)
    out = torch.matmul(pv.transpose(-1, -2) if keys_first else pv, v)
    return (out, p) if return_probs else out
