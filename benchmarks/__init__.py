"""Benchmarks of the DCT optimisation loop against a reference-style loop (benchmarks/RESULTS.md).

``python -m benchmarks.optimize --preset mid`` times one optimisation epoch of ours and of the
reference-style loop, interleaved in one process, on identical random-weight models built from
configs (no downloads). ``python -m benchmarks.throughput`` measures classes per hour for a shard
with models loaded once against reloading them per class. Results: ``benchmarks/RESULTS.md``.
"""
