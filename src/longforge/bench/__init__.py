"""Speed benchmarks (``longforge bench``): decode attention and end-to-end decode, dense vs
Quest, each reported against a baseline and a bandwidth limit measured in the same run."""
