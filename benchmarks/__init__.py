"""Benchmark suite: one `bench_<op>.py` per fused op (pytest-benchmark tests plus a `measure` function for the
runner), and `python -m benchmarks`, which writes JSON to benchmarks/results/ and the tables of RESULTS.md."""
