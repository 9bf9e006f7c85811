"""``longforge serve``: an OpenAI-compatible server over one model, decoding with longforge's
KV policies (Quest by default for long prompts) and reusing the KV of document prefixes across
requests. See docs/serve.md.

* :mod:`.kvcache` -- the document KV cache: block keys, the byte-bounded LRU (RAM, disk),
  restoring and capturing a request's ``SparseCache``;
* :mod:`.engine` -- prompts, policies, chunked prefill, decode and sampling of one request as a
  generator of model forwards, and the scheduler that interleaves them on one worker thread;
* :mod:`.protocol` -- the OpenAI request, response, stream and error formats;
* :mod:`.app` -- the FastAPI routes, limits and authentication;
* :mod:`.cli` -- the ``longforge serve`` command.
"""
