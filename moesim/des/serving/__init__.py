"""Request-level serving simulation (SimPy): arrivals, continuous batching with chunked prefill,
KV-cache admission and preemption, co-located or disaggregated pools, latency percentiles with
confidence intervals, goodput under an SLO, and the largest sustainable request rate.

Modules: arrivals (request streams), cost (the per-iteration cost protocol; closed-form and
grid-memoized implementations), deployment (costs and KV transfer from the step and memory
models), replica (one replica's iteration loop), balancer, observer (records), metrics
(summaries and export), system (pools and ``simulate``), capacity (``max_sustainable_rate``),
scenario (the TOML schema).
"""
from moesim.des.serving.arrivals import LengthDist, Requests, read_trace, synthetic
from moesim.des.serving.capacity import RateSearch, max_sustainable_rate
from moesim.des.serving.cost import GridCost, LinearCost, ReplicaCost
from moesim.des.serving.metrics import LatencyStats, ServingResult
from moesim.des.serving.replica import SchedulerConfig
from moesim.des.serving.system import KVTransfer, Pool, ServingSystem, simulate

__all__ = [
    "GridCost", "KVTransfer", "LatencyStats", "LengthDist", "LinearCost", "Pool", "RateSearch",
    "ReplicaCost", "Requests", "SchedulerConfig", "ServingResult", "ServingSystem",
    "max_sustainable_rate", "read_trace", "simulate", "synthetic",
]
