"""Long-context evaluations of decode-time KV policies: passkey, needle-in-a-haystack, perplexity."""
