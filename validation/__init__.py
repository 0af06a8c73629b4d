"""Validation harness: a reference torch MoE, micro-benchmarks that write ``moesim-cases/1``
files, and a small MoE language model trained on CPU to record routing traces.

Nothing in the ``moesim`` package imports this folder; torch is needed only here.
"""
