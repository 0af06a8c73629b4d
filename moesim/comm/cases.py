"""Predict ``all_to_all`` measurement cases (docs/cases.md) in each case's own metric.

Time is always predicted first (``all_to_all_time`` on the expected traffic of the case's
routing). A ``bandwidth_GBps`` case is then converted with the *source's* definition, which
counts bytes over one link class, divided by that time:

- ``nvlink`` (DeepEP intranode "NVL" bandwidth): bytes a rank receives, one copy per
  (token, destination rank) including its own share, x bytes_per_token.
- ``rdma`` (DeepEP internode "RDMA" and HybridEP "IB" bandwidth): (token, destination node)
  pairs of the rank's tokens, node-deduplicated, *own node included*, x bytes_per_token.

The link class is ``inputs.bandwidth_link`` when given, else ``rdma`` for a case spanning
several nodes and ``nvlink`` inside one. A null ``ranks_per_node`` defaults to the profile's
scale-up domain size (8 on HGX/DGX systems, docs/cases.md). Group-limited routing
(``num_groups``, ``topk_groups``) is honoured.

Expert counts that the ranks do not divide (288 experts at EP 64, 256 at EP 72) are real
deployments with redundant expert slots: ``redundant_experts`` when the case states it, else
the fewest slots that make ``num_experts + slots`` divisible by ``ranks`` (EPLB-style). Traffic
is then that of uniform routing over the slots, as the step model prices it
(moesim/step/layer.py: slots = experts + redundant, group limits dropped once replicas exist).
"""
from __future__ import annotations

from typing import Any

from moesim import units
from moesim.comm.alltoall import all_to_all_time
from moesim.comm.topology import build_topology
from moesim.comm.traffic import uniform_traffic
from moesim.errors import MoesimError, SpecError
from moesim.specs.hardware import HardwareProfile

A2A_FIT_PARAMS: tuple[str, ...] = (
    "comm.scale_up_bandwidth_fraction",
    "comm.scale_out_bandwidth_fraction",
    "comm.scale_up_latency_us",
    "comm.scale_out_latency_us",
    "comm.per_peer_overhead_us",
)

# Tokens per rank at or below which a case is a small (decode-sized) batch: DeepEP's
# low-latency kernels are specified and benchmarked at 128 tokens per rank. A "token" larger
# than SMALL_BATCH_MAX_TOKEN_BYTES is a bulk message encoded as one token (a plain NCCL
# all-to-all), not a decode batch.
SMALL_BATCH_TOKENS = 128
SMALL_BATCH_MAX_TOKEN_BYTES = 2**20


def _unsupported(reason: str) -> Exception:
    try:
        from moesim.validate import UnsupportedCase
    except ImportError:  # pragma: no cover - validate.py is the lead's module
        return MoesimError(reason)
    return UnsupportedCase(reason)


def case_group(inputs: dict[str, Any], hw: HardwareProfile | None = None) -> str:
    """``low_latency`` (low-latency mode, or <= 128 tokens of a hidden-state size per rank),
    else ``internode`` (ranks span several nodes) or ``intranode``."""
    rpn = inputs.get("ranks_per_node") or (hw.scale_up.domain_size if hw else 8)
    small = (inputs["tokens_per_rank"] <= SMALL_BATCH_TOKENS
             and inputs["bytes_per_token"] <= SMALL_BATCH_MAX_TOKEN_BYTES)
    if inputs.get("mode") == "low_latency" or small:
        return "low_latency"
    return "internode" if inputs["ranks"] > rpn else "intranode"


def case_traffic_and_time(inputs: dict[str, Any], hw: HardwareProfile):
    """(Traffic, AllToAllResult) of one case on ``hw``."""
    ranks = int(inputs["ranks"])
    rpn = int(inputs.get("ranks_per_node") or hw.scale_up.domain_size)
    rpn = min(rpn, ranks)
    routing = inputs.get("routing") or "uniform"
    if routing not in ("uniform", "balanced"):
        raise _unsupported(f"routing {routing!r}: only uniform and balanced have expected traffic here")
    topo = build_topology(hw, ranks, rpn)
    experts = int(inputs["num_experts"])
    redundant = inputs.get("redundant_experts")
    redundant = (-experts) % ranks if redundant is None else int(redundant)
    if (experts + redundant) % ranks:
        raise SpecError("redundant_experts", redundant,
                        f"num_experts {experts} + redundant slots must be a multiple of ranks {ranks}")
    groups = (int(inputs.get("num_groups") or 1), int(inputs.get("topk_groups") or 1))
    traffic = uniform_traffic(
        ranks, rpn, int(inputs["tokens_per_rank"]), experts + redundant, int(inputs["top_k"]),
        float(inputs["bytes_per_token"]), dedup=inputs.get("dedup") or "node", routing=routing,
        groups=groups[0] if redundant == 0 else 1, topk_groups=groups[1] if redundant == 0 else 1,
    )
    result = all_to_all_time(topo, traffic, inputs.get("mode") or "normal", inputs.get("op") or "dispatch")
    return traffic, result


def counted_bytes(inputs: dict[str, Any], traffic) -> float:
    """Bytes per rank the source's bandwidth definition counts (see module docstring)."""
    link = inputs.get("bandwidth_link") or ("rdma" if traffic.nodes > 1 else "nvlink")
    if link == "nvlink":
        return float(traffic.bytes_RR.sum(axis=0).mean())
    if link == "rdma":
        if traffic.node_bytes_RN is None:
            raise _unsupported("an rdma bandwidth needs node-deduplicated traffic (dedup 'node')")
        return float(traffic.node_bytes_RN.sum(axis=1).mean())
    raise SpecError("bandwidth_link", link, "nvlink or rdma")


# Inputs a case may state that the all-to-all time model does not depend on: the bandwidth
# fractions and latencies are fitted per profile at the sources' own kernel settings.
_NOT_MODELLED = {
    "num_sms": "kernel time does not depend on the SM count here (fractions are fitted at the sources' SM counts)",
    "library": "one all-to-all model for every library",
    "backend": "one all-to-all model for every backend",
    "dtype": "the payload is bytes_per_token; dtype is not read",
}


def predict_all_to_all_case(inputs: dict, hw: HardwareProfile) -> float:
    """Predicted value in the case's metric: ``time_s`` or ``bandwidth_GBps`` (decimal GB/s)."""
    from moesim.validate import flag_ignored

    for key, why in _NOT_MODELLED.items():
        flag_ignored(inputs, key, why)
    traffic, result = case_traffic_and_time(inputs, hw)
    metric = inputs.get("metric", "time_s")
    if metric == "time_s":
        return result.time_s
    if metric == "bandwidth_GBps":
        return counted_bytes(inputs, traffic) / result.time_s / units.GBps
    raise _unsupported(f"metric {metric!r} for all_to_all")


def a2a_fit_params(cases, hw: HardwareProfile) -> tuple[str, ...]:
    """The subset of A2A_FIT_PARAMS the ``cases`` on ``hw`` can determine (a profile whose cases
    never cross the scale-out network cannot fit its NIC fraction; one without small batches
    cannot fit latencies). ``moesim calibrate`` fits these."""

    uses_out = uses_up = small = False
    # NOTE: a latency is identifiable from small batches, or from two batch sizes (a line
    # through two points gives intercept and slope); all-4096-token sets cannot fit it.
    small = len({c.inputs["tokens_per_rank"] for c in cases
                 if c.inputs["bytes_per_token"] <= SMALL_BATCH_MAX_TOKEN_BYTES}) > 1
    for c in cases:
        _, res = case_traffic_and_time(dict(c.inputs), hw)
        uses_out |= res.max_scale_out_port_bytes > 0
        uses_up |= res.max_scale_up_port_bytes > 0
        small |= case_group(dict(c.inputs), hw) == "low_latency"
    names = []
    if uses_up:
        names.append("comm.scale_up_bandwidth_fraction")
    if uses_out:
        names.append("comm.scale_out_bandwidth_fraction")
    if small and uses_up:
        names += ["comm.scale_up_latency_us", "comm.per_peer_overhead_us"]
    if small and uses_out:
        names.append("comm.scale_out_latency_us")
    return tuple(n for n in A2A_FIT_PARAMS if n in names)
