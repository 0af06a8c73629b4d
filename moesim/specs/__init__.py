"""Validated, frozen specs: hardware, model, cluster, parallelism, workloads."""
from moesim.specs.cluster import Cluster, check_cluster
from moesim.specs.deployment import Deployment
from moesim.specs.common import DTYPES, Dtype, Spec, bytes_per_element, canonical_dtype
from moesim.specs.hardware import Efficiency, HardwareProfile
from moesim.specs.model import AttentionSpec, ModelSpec, MoESpec, PublishedCounts
from moesim.specs.parallel import Parallelism, check_parallelism, experts_per_rank
from moesim.specs.workload import SLO, RoutingSpec, ServingWorkload, TrainingWorkload, parse_skew

__all__ = [
    "AttentionSpec", "Cluster", "DTYPES", "Deployment", "Dtype", "Efficiency", "HardwareProfile", "ModelSpec",
    "MoESpec", "Parallelism", "PublishedCounts", "RoutingSpec", "SLO", "ServingWorkload", "Spec",
    "TrainingWorkload", "bytes_per_element", "canonical_dtype", "check_cluster", "check_parallelism",
    "experts_per_rank", "parse_skew",
]
