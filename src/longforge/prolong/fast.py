"""The fast path. Chunk j's keys and values do not depend on the chunk that follows it, so:

1. one forward per chunk (batched) gives its KV cache *and* its single-chunk perplexity;
2. each pair (j, i) then runs only chunk i's first c-1 tokens (the last one predicts nothing
   that is scored) at positions c..2c-2 against chunk j's cached KV, many pairs per batch
   (all chunks have exactly c tokens: no padding);
3. the LM head (for Gemma 3 270M a 262144 x 640 matrix: most of the FLOPs) runs only on the
   hidden states whose next token is scored, in cache-sized blocks of rows x vocabulary,
   with an online log-sum-exp: the full-vocabulary logits are never written out.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from longforge.models import cache_kw


class FastScorer:
    """Same contract as :class:`~longforge.prolong.reference.ReferenceScorer`."""

    def __init__(self, model, batch_tokens: int = 4096, head_rows: int = 1024,
                 vocab_block: int | None = None):
        self.model, self.config = model, model.config
        self.base = model.base_model
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise TypeError(f"{type(model).__name__}: the fast path needs an LM head")
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        self.batch_tokens, self.head_rows = batch_tokens, head_rows
        self.device = next(model.parameters()).device
        # 1024 x 2048 fp32 logits (8 MB) fit this CPU's L3 with the head's weight block; the
        # head then runs at ~1.9 ms per row for Gemma 3 against ~2.9 ms for 256 full-vocab
        # rows. A GPU has no such cache to fit: it takes much wider blocks (fewer launches).
        self.vocab_block = vocab_block or (32768 if self.device.type == "cuda" else 2048)
        self._self_check()

    def _logit_blocks(self, hidden: torch.Tensor, buf: torch.Tensor | None):
        """Yield ``(v0, logits[:, v0:v0 + block])`` in fp32, softcapped, over the vocabulary.

        A plain ``nn.Linear`` head is multiplied one vocabulary block at a time into ``buf``;
        any other head module is applied whole and its logits form a single block.
        """
        if buf is None:
            yield 0, self._softcap(self.head(hidden).float())
            return
        w, b = self.head.weight, self.head.bias
        for v in range(0, w.shape[0], buf.shape[1]):
            width = min(buf.shape[1], w.shape[0] - v)
            out = buf.view(-1)[: len(hidden) * width].view(len(hidden), width)  # contiguous
            torch.mm(hidden, w[v:v + width].t(), out=out)
            if b is not None:
                out.add_(b[v:v + width])
            yield v, self._softcap(out.float())

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    def _nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Token NLL (float32) of ``targets [R]`` from final hidden states ``[R, H]``.

        ``log-sum-exp(logits) - logits[target]``, with the log-sum-exp taken online over
        vocabulary blocks (running max and rescaled running sum, as in flash attention), so
        the logits are never materialised: for Gemma 3 a full ``rows x 262144`` fp32 block is
        268 MB per 256 rows, and writing it to memory and reading it back three times cost ~1/3
        of the head's time on this CPU. Blocks of ``head_rows x vocab_block`` stay in cache.
        """
        out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        rows = self.head_rows
        buf = None
        if type(self.head) is torch.nn.Linear:
            buf = torch.empty(min(rows, len(targets)), self.vocab_block,
                              dtype=self.head.weight.dtype, device=hidden.device)
        for s in range(0, len(targets), rows):
            h, t = hidden[s:s + rows], targets[s:s + rows]
            mx = torch.full((len(t),), -torch.inf, device=hidden.device)
            total = torch.zeros(len(t), device=hidden.device)
            target = torch.zeros(len(t), device=hidden.device)
            for v, logits in self._logit_blocks(h, buf):
                at = t - v
                hit = ((at >= 0) & (at < logits.shape[1])).nonzero().squeeze(1)
                target[hit] = logits[hit, at[hit]]
                new = torch.maximum(mx, logits.amax(dim=-1))
                total.mul_((mx - new).exp_()).add_(logits.sub_(new[:, None]).exp_().sum(dim=-1))
                mx = new
            out[s:s + rows] = total.log_().add_(mx).sub_(target)
        return out

    def _self_check(self) -> None:
        """On a tiny input, the fast path must agree with plain forwards of the model (catches
        models whose logits or cache this class cannot reproduce)."""
        from longforge.prolong.reference import ReferenceScorer

        chunks = (np.arange(16).reshape(2, 8) * 7 + 3) % self.config.vocab_size
        pi, pj = np.array([1]), np.array([0])
        want = np.concatenate(ReferenceScorer(self.model).perplexities(chunks, pi, pj))
        got = np.concatenate(self.perplexities(chunks, pi, pj))
        tol = 1e-3 if self.head.weight.dtype == torch.float32 else 0.1
        if not np.allclose(got, want, rtol=tol):
            raise TypeError(f"{type(self.model).__name__}: the fast path disagrees with the "
                            f"model's own forward ({got} vs {want}); use --path reference")

    @torch.inference_mode()
    def perplexities(self, chunks: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray):
        x = torch.as_tensor(chunks, device=self.device)
        n, c = x.shape
        batch = max(1, self.batch_tokens // c)
        # 1. every chunk once: its KV (per layer, [n, kv_heads, c, head_dim], written into
        # tensors allocated once: no list of pieces concatenated at twice the memory) and NLL
        keys, values, single = None, None, []
        for s in range(0, n, batch):
            b = x[s:s + batch]
            cache = DynamicCache()
            out = self.base(input_ids=b, **cache_kw(self.base, cache), use_cache=True)
            layers = cache.layers
            if keys is None:
                keys = [layer.keys.new_empty((n, *layer.keys.shape[1:])) for layer in layers]
                values = [layer.values.new_empty((n, *layer.values.shape[1:])) for layer in layers]
            for k, layer in enumerate(layers):
                keys[k][s:s + len(b)] = layer.keys
                values[k][s:s + len(b)] = layer.values
            h = out.last_hidden_state[:, :-1]
            single.append(self._nll(h.reshape(-1, h.shape[-1]), b[:, 1:].reshape(-1))
                          .view(len(b), c - 1).mean(1))
        # 2. chunk i's tokens 0..c-2 at positions c..2c-2 against chunk j's KV
        pos = torch.arange(c, 2 * c - 1, device=self.device)[None]
        pair = []
        for s in range(0, len(pair_i), batch):
            bi = torch.as_tensor(pair_i[s:s + batch], device=self.device)
            bj = torch.as_tensor(pair_j[s:s + batch], device=self.device)
            cache = DynamicCache(ddp_cache_data=[(k.index_select(0, bj), v.index_select(0, bj))
                                                 for k, v in zip(keys, values)],
                                 config=self.config)
            xi = x.index_select(0, bi)
            h = self.base(input_ids=xi[:, :-1], **cache_kw(self.base, cache), position_ids=pos,
                          use_cache=True).last_hidden_state
            pair.append(self._nll(h.reshape(-1, h.shape[-1]), xi[:, 1:].reshape(-1))
                        .view(len(bi), c - 1).mean(1))
        cat = lambda parts: torch.cat(parts).double().exp().cpu().numpy() if parts else np.zeros(0)
        return cat(single), cat(pair)
