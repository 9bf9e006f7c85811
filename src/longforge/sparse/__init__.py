"""Quest query-aware sparse attention for decoding long contexts (SPEC.md section 3)."""
