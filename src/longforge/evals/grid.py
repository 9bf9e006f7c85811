"""A passkey or NIAH grid as an executor task: ``GridJob(...)(shard, num_shards)`` loads the
model and runs its share of the samples (:func:`longforge.evals.runner.run_grid` with
``shard``), so ``longforge eval --num-shards N`` runs a grid as N shards, in local worker
processes or Ray tasks (one per GPU), that write into one folder. Everything in it is plain
data: it pickles by reference to this module, as the executors need (docs/scale.md)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field


def score_for(task: str):
    """The scorer of a grid task's answers, ``score(output_text, expected) -> bool`` (the grid
    uses it as it runs, ``eval report`` to score stored answers again)."""
    from longforge.evals import niah, passkey

    return passkey.score if task == "passkey" else niah.score


def stop_for(tokenizer, variant: str = "single", needles: int = 4):
    """The greedy decode's stop rule of a grid's answers: one number followed by something else;
    for multivalue, ``needles`` numbers of a value's digits (list markers do not count)."""
    from longforge.evals import niah
    from longforge.evals.runner import numbers_done

    if variant == "multivalue":
        return numbers_done(tokenizer, needles, digits=niah.VALUE_DIGITS)
    return numbers_done(tokenizer, 1)


@dataclass(frozen=True)
class GridJob:
    task: str                   # passkey, niah, niah-multikey, niah-multivalue
    model: str                  # a model spec (docs/models.md)
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    trials: int
    methods: str                # "dense,quest@1024,...": each with its budget (parse_methods)
    out: str
    tail: int
    max_new: int
    page_size: int
    dense_layers: int | str
    seed: int
    device: str
    dtype: str
    settings: dict = field(default_factory=dict)  # what else the results depend on
    haystack: object = None     # niah.Haystack (NIAH tasks)
    variant: str = "single"
    needles: int = 4

    def functions(self):
        """``(build, score, needle_free)`` of the task."""
        from longforge.evals import niah, passkey

        if self.task == "passkey":
            return passkey.build, score_for(self.task), passkey.needle_free
        build = functools.partial(niah.build, haystack=self.haystack, variant=self.variant,
                                  needles=self.needles)
        return (build, score_for(self.task),
                functools.partial(niah.needle_free, haystack=self.haystack))

    def __call__(self, shard: int = 0, num_shards: int = 1) -> dict:
        import torch

        from longforge.evals.runner import parse_methods, run_grid
        from longforge.models import cache_dir

        torch.set_grad_enabled(False)
        lm = _loaded(self.model, self.device, self.dtype)
        build, score, free = self.functions()
        stop = stop_for(lm.tokenizer, self.variant, self.needles)
        run_grid(self.task, lm.model, lm.tokenizer, build, score, list(self.lengths),
                 list(self.depths), self.trials, parse_methods(self.methods, ""),
                 self.out, tail=self.tail, max_new=self.max_new, page_size=self.page_size,
                 dense_layers=self.dense_layers, seed=self.seed,
                 settings={"model": self.model, **self.settings}, stop=stop, needle_free=free,
                 bank_dir=cache_dir() / "prefix-banks",
                 shard=(shard, num_shards) if num_shards > 1 else None)
        return {"shard": shard, "num_shards": num_shards}


@functools.lru_cache(maxsize=1)
def _loaded(spec: str, device: str, dtype: str):
    """The model, kept for the next shard this process runs: the local executor with one worker
    runs every shard in turn in one process, and a Ray worker may be given several."""
    from longforge.models import load_model

    return load_model(spec, device=device, dtype=dtype)
