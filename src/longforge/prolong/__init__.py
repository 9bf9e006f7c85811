"""ProLong long-dependency scoring (arXiv 2405.17915): ``longforge score`` and ``longforge filter``.

* :mod:`.lds` - the formulas, chunk and pair sampling (pure numpy);
* :mod:`.reference` - the naive per-pair algorithm (kept to test and benchmark against);
* :mod:`.fast` - KV reuse, batched continuations, LM head only where scored;
* :mod:`.score` - the corpus driver; :mod:`.filter` - keep the top documents.
"""
