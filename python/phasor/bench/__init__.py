"""`phasor bench`: correctness-checked microbenchmarks of every fused op (see harness.py)."""
