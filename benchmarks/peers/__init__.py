"""kale_fast's samplers against BlackJAX and NumPyro (benchmarks/bench_peers.py).

targets.py defines the three targets once (numpy arrays, a torch potential and a JAX log density built from
them); common.py turns a (chain, draw, dim) trace into ArviZ bulk and tail ESS and moment errors; run_kale.py,
run_blackjax.py and run_numpyro.py run each library's samplers with warm-up and sampling timed apart.

XLA reads XLA_FLAGS once, when jax is first imported: they are set here, before any module of this package
imports jax, so every JAX computation runs on one thread like torch.set_num_threads(1) on the kale_fast side.
"""
import os

ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAGS}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
