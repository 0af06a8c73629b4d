"""Hierarchical topology of a cluster: scale-up domains joined by a scale-out network.

A ``Topology`` is built once from a ``Cluster`` (or ranks + ranks per domain) and its
``HardwareProfile``, and carries the *achievable* numbers communication models use:
raw bandwidth from the profile's spec times the fitted efficiency fraction, latencies in
seconds. Ranks are numbered domain-major: rank r lives in domain r // ranks_per_domain at
local index r % ranks_per_domain.

- scale-up: ``switch`` (NVSwitch: any device to any at full per-device bandwidth, only the
  device ports limit), ``full_mesh`` (one direct link per peer, bandwidth / (n - 1) each, AMD
  xGMI), ``torus`` (TPU ICI: ``torus_shape`` chips, one link per direction per neighbour).
- scale-out: one NIC per device, a non-blocking fabric, rail-aligned when the profile says so
  (node-deduplicated dispatch sends to the same local index on the destination node).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from moesim import units
from moesim.errors import SpecError
from moesim.specs.cluster import Cluster, check_cluster
from moesim.specs.hardware import HardwareProfile


@dataclass(frozen=True)
class Topology:
    """Ranks, domain structure and achievable link parameters (bytes/s, seconds)."""

    ranks: int
    ranks_per_domain: int
    scale_up_kind: str
    scale_up_Bps: float            # achievable per device, one direction (switch / full_mesh)
    scale_up_latency_s: float
    scale_out_Bps: float           # achievable NIC bandwidth per device, one direction
    scale_out_latency_s: float
    per_peer_overhead_s: float
    rail_aligned: bool = True
    torus_shape: tuple[int, ...] = ()
    ici_link_Bps: float = 0.0      # achievable per link, one direction (torus)
    torus_wraparound: bool = True

    @property
    def domains(self) -> int:
        return self.ranks // self.ranks_per_domain

    def to_dict(self) -> dict:
        d = asdict(self)
        d["torus_shape"] = list(self.torus_shape)
        d["domains"] = self.domains
        return d


def torus_shape_for(chips: int, dims: int) -> tuple[int, ...]:
    """The most cubic ``dims``-dimensional shape with ``chips`` chips (largest side first)."""
    best: tuple[int, ...] | None = None

    def rec(left: int, k: int, prefix: tuple[int, ...]):
        nonlocal best
        if k == 1:
            shape = tuple(sorted(prefix + (left,), reverse=True))
            if best is None or max(shape) - min(shape) < max(best) - min(best):
                best = shape
            return
        for f in range(1, left + 1):
            if left % f == 0:
                rec(left // f, k - 1, prefix + (f,))

    rec(chips, dims, ())
    return best


def build_topology(profile: HardwareProfile, ranks: int, ranks_per_domain: int | None = None) -> Topology:
    """Topology of ``ranks`` devices of ``profile``, ``ranks_per_domain`` per scale-up domain.

    Raises SpecError for non-positive sizes, a domain larger than the profile supports, or
    ranks that are not a whole number of domains.
    """
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks <= 0:
        raise SpecError("ranks", ranks, "must be a positive integer")
    rpd = profile.scale_up.domain_size if ranks_per_domain is None else ranks_per_domain
    if isinstance(rpd, bool) or not isinstance(rpd, int) or rpd <= 0:
        raise SpecError("ranks_per_node", rpd, "must be a positive integer")
    if rpd > profile.scale_up.max_domain_size:
        raise SpecError("ranks_per_node", rpd, f"{profile.name} supports scale-up domains of at most "
                        f"{profile.scale_up.max_domain_size} devices")
    if ranks > rpd and ranks % rpd:
        raise SpecError("ranks", ranks, f"must be a multiple of ranks_per_node = {rpd}")
    rpd = min(rpd, ranks)
    eff = profile.efficiency.comm
    su = profile.scale_up
    so = profile.scale_out
    if ranks > rpd and so is None:
        raise SpecError("ranks", ranks, f"{profile.name} has no scale-out network: at most {rpd} ranks")
    torus_shape: tuple[int, ...] = ()
    ici_Bps = 0.0
    wrap = True
    if su.topology == "torus":
        if profile.ici is None:
            raise SpecError("scale_up.topology", "torus", f"{profile.name} needs an [ici] section")
        torus_shape = torus_shape_for(rpd, profile.ici.torus_dims)
        ici_Bps = profile.ici.link_bandwidth_per_direction_GBps * units.GBps * eff.scale_up_bandwidth_fraction
        wrap = profile.ici.wraparound
    return Topology(
        ranks=ranks,
        ranks_per_domain=rpd,
        scale_up_kind=su.topology,
        scale_up_Bps=su.bandwidth_Bps * eff.scale_up_bandwidth_fraction,
        scale_up_latency_s=eff.scale_up_latency_us * units.us,
        scale_out_Bps=(so.bandwidth_Bps * eff.scale_out_bandwidth_fraction) if so else 0.0,
        scale_out_latency_s=eff.scale_out_latency_us * units.us,
        per_peer_overhead_s=eff.per_peer_overhead_us * units.us,
        rail_aligned=so.rail_aligned if so else True,
        torus_shape=torus_shape,
        ici_link_Bps=ici_Bps,
        torus_wraparound=wrap,
    )


def topology_from(cluster: Cluster, profile: HardwareProfile) -> Topology:
    """Topology of a ``Cluster`` on its ``HardwareProfile`` (checked against the profile)."""
    check_cluster(cluster, profile)
    return build_topology(profile, cluster.devices, cluster.domain_size(profile))
