"""``longforge analyze``: compare synth outputs (intra-context similarity, domain spread, keyword
index sizes, a 2-D projection of a few contexts). See docs/synth.md."""
