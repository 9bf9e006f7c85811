"""Quest query-centric long-context data synthesis and its baselines (``longforge synth``).

See docs/synth.md. Steps: :mod:`.queries` (predict queries) -> :mod:`.keywords` (RAKE +
filters) -> :mod:`.pipeline` (inverted index, split, method groups) -> :mod:`.pack` (packer).
"""
