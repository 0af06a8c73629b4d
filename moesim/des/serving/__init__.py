"""Request-level serving simulation (SimPy): arrivals, continuous batching, KV limits, metrics."""
