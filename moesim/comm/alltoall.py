"""All-to-all time from a traffic matrix on a hierarchical topology.

Legend: R ranks, N nodes (scale-up domains), L local index inside a node (ranks_per_node).

Every transfer is placed on the fabric it uses; each device port (scale-up send/receive, NIC
send/receive) and each link (full-mesh pairs, torus links) accumulates its bytes; the most
loaded one, at its achievable bandwidth, decides (transfers of one all-to-all are pipelined,
so the fabrics overlap):

    time = max(port or link bytes / achievable bandwidth)                       [s]
         + scale-up latency (if any scale-up bytes) + scale-out latency (if any)  [s]
         + per-peer overhead x (most peers any rank sends to)                     [s]

Paths (``mode``):
- ``normal`` with node-deduplicated traffic (``Traffic.node_bytes_RN``): hierarchical dispatch as
  in DeepEP/HybridEP normal kernels. A token crosses the scale-out network once per destination
  node, rank s -> the rank with s's local index on that node (rail-aligned), which forwards it
  over the scale-up fabric to every destination rank there. Own-node tokens go direct.
  In general the scale-up carrier of (s, d) is rank (node(d), local(s)); no scale-up hop when
  that is d itself.
- ``normal`` without node dedup, and ``low_latency``: every (token, rank) copy goes direct, on the
  scale-up fabric inside a node and NIC to NIC between nodes (low-latency kernels skip the
  forwarding stage: one hop, so one latency).
Combine is the same traffic reversed (``op="combine"``): every load transposes, send and receive
swap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from moesim.comm.topology import Topology
from moesim.comm.torus import link_loads
from moesim.comm.traffic import Traffic
from moesim.errors import SpecError

Mode = Literal["normal", "low_latency"]
MODES: tuple[str, ...] = ("normal", "low_latency")
OPS: tuple[str, ...] = ("dispatch", "combine")


@dataclass(frozen=True)
class AllToAllResult:
    """Time of one all-to-all and what decided it (bytes are totals over all ranks)."""

    time_s: float
    bottleneck: str            # scale_up_send | scale_up_recv | scale_up_link | ici_link |
                               # scale_out_send | scale_out_recv | latency | none
    bandwidth_time_s: float
    latency_time_s: float
    internode_bytes: float     # bytes crossing the scale-out network
    intranode_bytes: float     # bytes crossing the scale-up fabric (forwarding included)
    max_scale_up_port_bytes: float
    max_scale_out_port_bytes: float
    max_peers: float
    mode: str
    op: str

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in self.__dict__.items()}


def _scale_up_links(traffic: Traffic, forward: bool) -> np.ndarray:
    """``link_NLL[n, a, b]``: bytes local rank a sends to local rank b over node n's scale-up fabric."""
    n, l = traffic.nodes, traffic.ranks_per_node
    b_NLNL = traffic.bytes_RR.reshape(n, l, n, l)
    if forward:
        # carrier of (s, d) is (node(d), local(s)): sum over source nodes -> [local(s), node(d), local(d)]
        link = b_NLNL.sum(axis=0).transpose(1, 0, 2).copy()
    else:
        link = np.einsum("ikil->ikl", b_NLNL).copy()
    idx = np.arange(l)
    link[:, idx, idx] = 0.0
    return link


def _scale_out_ports(traffic: Traffic, forward: bool) -> tuple[np.ndarray, np.ndarray]:
    """(send_R, recv_R): NIC bytes per rank."""
    n, l = traffic.nodes, traffic.ranks_per_node
    if forward:
        m_RN = traffic.node_bytes_RN.copy()
        m_RN[np.arange(traffic.ranks), np.arange(traffic.ranks) // l] = 0.0
        send = m_RN.sum(axis=1)
        recv = m_RN.reshape(n, l, n).sum(axis=0).T.reshape(-1)   # receiver (node n, local l)
        return send, recv
    b_NLNL = traffic.bytes_RR.reshape(n, l, n, l).copy()
    nodes = np.arange(n)
    b_NLNL[nodes, :, nodes, :] = 0.0
    return b_NLNL.sum(axis=(2, 3)).reshape(-1), b_NLNL.sum(axis=(0, 1)).reshape(-1)


def _scale_up_time(topo: Topology, link_NLL: np.ndarray) -> tuple[float, str, float]:
    """(seconds, which port or link, max port bytes) of the scale-up stage."""
    send = link_NLL.sum(axis=2).max(initial=0.0)
    recv = link_NLL.sum(axis=1).max(initial=0.0)
    port = max(send, recv)
    name = "scale_up_send" if send >= recv else "scale_up_recv"
    if port == 0.0:
        return 0.0, "none", 0.0
    t = port / topo.scale_up_Bps
    l = topo.ranks_per_domain
    if topo.scale_up_kind == "full_mesh" and l > 1:
        t_link = link_NLL.max() / (topo.scale_up_Bps / (l - 1))
        if t_link > t:
            return t_link, "scale_up_link", port
    elif topo.scale_up_kind == "torus":
        worst = max(link_loads(link_NLL[i], topo.torus_shape, topo.torus_wraparound).max()
                    for i in range(link_NLL.shape[0]))
        return worst / topo.ici_link_Bps, "ici_link", port
    return t, name, port


def all_to_all_time(topology: Topology, traffic: Traffic, mode: Mode = "normal",
                    op: str = "dispatch") -> AllToAllResult:
    """Time of one dispatch (or combine) of ``traffic`` on ``topology`` (see module docstring)."""
    if mode not in MODES:
        raise SpecError("mode", mode, f"one of {', '.join(MODES)}")
    if op not in OPS:
        raise SpecError("op", op, f"one of {', '.join(OPS)}")
    if traffic.ranks != topology.ranks or traffic.ranks_per_node != topology.ranks_per_domain:
        raise SpecError("traffic", f"{traffic.ranks} ranks, {traffic.ranks_per_node} per node",
                        f"topology has {topology.ranks} ranks, {topology.ranks_per_domain} per domain")
    forward = mode == "normal" and traffic.node_bytes_RN is not None and traffic.nodes > 1
    link_NLL = _scale_up_links(traffic, forward)
    t_up, up_name, up_port = _scale_up_time(topology, link_NLL)
    out_send, out_recv = _scale_out_ports(traffic, forward)
    out_port = max(out_send.max(initial=0.0), out_recv.max(initial=0.0))
    out_name = "scale_out_send" if out_send.max(initial=0.0) >= out_recv.max(initial=0.0) else "scale_out_recv"
    t_out = out_port / topology.scale_out_Bps if out_port > 0 else 0.0
    t_bw, name = (t_up, up_name) if t_up >= t_out else (t_out, out_name)
    peers = float(traffic.peers_R.max(initial=0.0))
    t_lat = (topology.scale_up_latency_s * (up_port > 0) + topology.scale_out_latency_s * (out_port > 0)
             + topology.per_peer_overhead_s * peers)
    if t_lat > t_bw:
        name = "latency"
    if op == "combine":
        name = {"scale_up_send": "scale_up_recv", "scale_up_recv": "scale_up_send",
                "scale_out_send": "scale_out_recv", "scale_out_recv": "scale_out_send"}.get(name, name)
    return AllToAllResult(
        time_s=t_bw + t_lat,
        bottleneck=name,
        bandwidth_time_s=t_bw,
        latency_time_s=t_lat,
        internode_bytes=float(out_send.sum()),
        intranode_bytes=float(link_NLL.sum()),
        max_scale_up_port_bytes=float(up_port),
        max_scale_out_port_bytes=float(out_port),
        max_peers=peers,
        mode=mode,
        op=op,
    )
