"""Compute side: parameter and FLOP counts, GEMM and grouped-GEMM time, attention, memory."""
