"""Alpha-beta costs of collectives (all-reduce, all-gather, reduce-scatter) for TP, CP and DP.

``bytes`` is always the full buffer: the all-reduced tensor, the gathered result, or the input
of a reduce-scatter. alpha = per-step latency [s], bandwidth = achievable per-device, one
direction [bytes/s] (Thakur, Rabenseifner and Gropp 2005; Patarasuk and Yuan 2009):

- ring all-reduce:     2 (n - 1) / n x bytes / bandwidth + 2 (n - 1) alpha
- tree all-reduce:     2 (n - 1) / n x bytes / bandwidth + 2 ceil(log2 n) alpha
  (double binary tree, pipelined: each tree carries half the buffer, so the bandwidth term is
  the ring's and only the latency term changes)
- all-gather / reduce-scatter (ring): (n - 1) / n x bytes / bandwidth + (n - 1) alpha
- direct, inside one switched scale-up domain (NVSwitch: every rank reaches every peer in one
  hop): each stage is one exchange with all n - 1 peers at once. All-reduce = reduce-scatter +
  all-gather, 2 (n - 1) / n x bytes / bandwidth + 2 alpha; all-gather / reduce-scatter one
  stage, (n - 1) / n x bytes / bandwidth + alpha. The serving engines' custom all-reduce runs
  this way (TensorRT-LLM cpp/tensorrt_llm/kernels/customAllReduceKernels.cu
  ``twoShotAllReduceKernel``: each GPU reduces its part of the message from its peers' buffers,
  then gathers the others' parts; vLLM's and SGLang's ``cross_device_reduce_2stage``); not on a
  torus, whose peers are several hops away.
- auto: the fastest of ring and, on a switched domain, direct, per stage: what a collective
  library's tuner picks by message size (NCCL's algorithm selection; TensorRT-LLM's
  ``AllReduceStrategy.AUTO`` between its one-shot / two-shot kernels and NCCL). The step model
  prices every collective this way.

Across domains (n > ranks per domain, hierarchical): reduce-scatter inside each domain (m
ranks, scale-up), all-reduce of bytes / m across the D domains over the NICs (each rank holds
one shard and talks to its rail peers), all-gather inside the domain. All-gather and
reduce-scatter are the corresponding two-stage halves. On a torus the per-device bandwidth is
that of all its links (a ring per dimension and direction): 2 x dims x link bandwidth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from math import ceil, log2
from typing import Literal

from moesim.comm.topology import Topology
from moesim.errors import SpecError

Collective = Literal["all_reduce", "all_gather", "reduce_scatter"]
Algorithm = Literal["ring", "tree", "direct", "auto"]
ALGORITHMS: tuple[str, ...] = ("ring", "tree", "direct", "auto")


@dataclass(frozen=True)
class CollectiveResult:
    """Time of one collective, split into its bandwidth and latency terms."""

    time_s: float
    bandwidth_time_s: float
    latency_time_s: float
    collective: str
    algorithm: str
    ranks: int
    bytes: float
    hierarchical: bool
    bottleneck: str      # scale_up | scale_out | latency

    def to_dict(self) -> dict:
        return asdict(self)


def _flat_terms(kind: str, n: int, nbytes: float, bw: float, alpha: float, algorithm: str,
                switched: bool = False):
    """(bandwidth seconds, latency seconds) of one flat collective over n ranks; ``switched``:
    the ranks share one switched domain (``direct`` is possible; ``auto`` considers it)."""
    if n == 1:
        return 0.0, 0.0
    if algorithm == "auto":
        options = [_flat_terms(kind, n, nbytes, bw, alpha, "ring")]
        if switched:
            options.append(_flat_terms(kind, n, nbytes, bw, alpha, "direct", True))
        return min(options, key=sum)
    frac = (n - 1) / n
    stages = 2 if kind == "all_reduce" else 1
    if algorithm == "direct":
        return stages * frac * nbytes / bw, stages * alpha
    if algorithm == "tree":
        return stages * frac * nbytes / bw, stages * ceil(log2(n)) * alpha
    return stages * frac * nbytes / bw, stages * (n - 1) * alpha


def _scale_up_bw(topo: Topology) -> float:
    if topo.scale_up_kind == "torus":
        return 2 * len(topo.torus_shape) * topo.ici_link_Bps
    return topo.scale_up_Bps


def collective_time(topology: Topology, collective: Collective, nbytes: float, ranks: int | None = None,
                    algorithm: Algorithm = "ring") -> CollectiveResult:
    """Time of ``collective`` over the first ``ranks`` ranks (default: all) of ``topology``."""
    n = topology.ranks if ranks is None else ranks
    if collective not in ("all_reduce", "all_gather", "reduce_scatter"):
        raise SpecError("collective", collective, "all_reduce, all_gather or reduce_scatter")
    if algorithm not in ALGORITHMS:
        raise SpecError("algorithm", algorithm, ", ".join(ALGORITHMS))
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= topology.ranks:
        raise SpecError("ranks", n, f"must be an integer in 1..{topology.ranks}")
    if not nbytes > 0:
        raise SpecError("bytes", nbytes, "must be > 0")
    m = topology.ranks_per_domain
    up_bw, up_a = _scale_up_bw(topology), topology.scale_up_latency_s
    switched = topology.scale_up_kind != "torus"
    if algorithm == "direct" and not switched:
        raise SpecError("algorithm", algorithm, "ring, tree or auto on a torus (direct needs a switched domain)")
    if n <= m:
        bw_t, lat_t = _flat_terms(collective, n, nbytes, up_bw, up_a, algorithm, switched)
        return _result(collective, algorithm, n, nbytes, False, (bw_t, lat_t, "scale_up"))
    if n % m:
        raise SpecError("ranks", n, f"a collective across domains needs a multiple of {m} ranks")
    d = n // m
    out_bw, out_a = topology.scale_out_Bps, topology.scale_out_latency_s
    half = "reduce_scatter" if collective in ("all_reduce", "reduce_scatter") else "all_gather"
    b1, l1 = _flat_terms(half, m, nbytes, up_bw, up_a, algorithm, switched)
    out_alg = "ring" if algorithm == "direct" else algorithm  # across domains: no single switch
    b2, l2 = _flat_terms(collective, d, nbytes / m, out_bw, out_a, out_alg)
    stages_up = 2 if collective == "all_reduce" else 1
    up_b, up_l = stages_up * b1, stages_up * l1
    where = "scale_out" if b2 >= up_b else "scale_up"
    return _result(collective, algorithm, n, nbytes, True, (up_b + b2, up_l + l2, where))


def _result(collective, algorithm, n, nbytes, hier, terms) -> CollectiveResult:
    bw_t, lat_t, where = terms
    return CollectiveResult(
        time_s=bw_t + lat_t, bandwidth_time_s=bw_t, latency_time_s=lat_t, collective=collective,
        algorithm=algorithm, ranks=n, bytes=float(nbytes), hierarchical=hier,
        bottleneck="latency" if lat_t > bw_t else where,
    )


def all_reduce_time(topology: Topology, nbytes: float, ranks: int | None = None,
                    algorithm: Algorithm = "ring") -> CollectiveResult:
    """All-reduce of ``nbytes`` over ``ranks`` ranks (see module docstring)."""
    return collective_time(topology, "all_reduce", nbytes, ranks, algorithm)


def all_gather_time(topology: Topology, nbytes: float, ranks: int | None = None,
                    algorithm: Algorithm = "ring") -> CollectiveResult:
    """All-gather producing ``nbytes`` on every rank."""
    return collective_time(topology, "all_gather", nbytes, ranks, algorithm)


def reduce_scatter_time(topology: Topology, nbytes: float, ranks: int | None = None,
                        algorithm: Algorithm = "ring") -> CollectiveResult:
    """Reduce-scatter of an ``nbytes`` input."""
    return collective_time(topology, "reduce_scatter", nbytes, ranks, algorithm)
