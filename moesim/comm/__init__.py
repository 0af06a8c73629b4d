"""Communication: topology, all-to-all from a traffic matrix, alpha-beta collectives."""
from moesim.comm.alltoall import AllToAllResult, all_to_all_time
from moesim.comm.collectives import (
    CollectiveResult,
    all_gather_time,
    all_reduce_time,
    collective_time,
    reduce_scatter_time,
)
from moesim.comm.topology import Topology, build_topology, topology_from
from moesim.comm.traffic import Traffic, expected_distinct_nodes, uniform_traffic

__all__ = [
    "AllToAllResult", "CollectiveResult", "Topology", "Traffic", "all_gather_time", "all_reduce_time",
    "all_to_all_time", "build_topology", "collective_time", "expected_distinct_nodes",
    "reduce_scatter_time", "topology_from", "uniform_traffic",
]
