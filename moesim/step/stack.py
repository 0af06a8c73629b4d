"""A stack of layers under a schedule, over many iterations at once.

Legend: L layers of the stack, N iterations (columns: batches, contexts, prompt sizes).

Each layer is four operations per micro-batch (moesim/step/layer.py, ``LayerOps``): P, D, X, C,
with host issue times hP (P) and hX (X), a host sync before D, and the compute speed while the
layer's all-to-all runs. ``stack_times`` runs them under a schedule (moesim/step/schedule.py):
- ``none``: ops are whole-batch times on one stream (``serial_time``); exposed comm = D + C;
- ``two_microbatch``: ops are half-batch times, the max-plus recurrence with SM sharing, the
  GEMMs' fixed grid, HBM contention (moesim/step/sharing.py) and the host
  (``two_microbatch_time``); exposed comm = the recurrence without the host - full-speed
  compute (waiting for the all-to-all, and compute slowed by the SMs and HBM bandwidth it takes).
Both: exposed host = time - the same schedule without the host (the device waiting for the
host); host issue = the host's total issue time (x 2 micro-batches under overlap).
NOTE: a hidden host (a graph launch behind the device) leaves the two schedules equal up to the
rounding of their different summation orders; an exposed host below ``HIDDEN_RTOL`` of the time
is reported as 0, so that the same step answers the same whatever its batch neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from moesim.errors import SpecError
from moesim.step.schedule import serial_time, two_microbatch_time

OVERLAPS: tuple[str, ...] = ("none", "two_microbatch")
HIDDEN_RTOL = 1e-12  # exposed host below this fraction of the time: rounding, reported as 0


@dataclass(frozen=True)
class StackArrays:
    """Per-layer op times of a stack, arrays (L, N) (s), ``sync_LN`` bool. What limits the
    overlap (moesim/step/sharing.py): ``share_LN`` the compute speed while the layer's all-to-all
    runs, ``Pm_LN`` / ``Xm_LN`` the memory-bound seconds of P / X, ``Pg_LN`` the fixed-grid GEMM
    seconds of P, ``gemm_LN`` those GEMMs' SM share, ``hbmD_LN`` / ``hbmC_LN`` the HBM share of the
    dispatch / combine (defaults: none of them, the SM share alone)."""

    P_LN: np.ndarray
    D_LN: np.ndarray
    X_LN: np.ndarray
    C_LN: np.ndarray
    share_LN: np.ndarray
    hP_LN: np.ndarray
    hX_LN: np.ndarray
    sync_LN: np.ndarray
    Pm_LN: np.ndarray | float = 0.0
    Pg_LN: np.ndarray | float = 0.0
    Xm_LN: np.ndarray | float = 0.0
    gemm_LN: np.ndarray | float = 1.0
    hbmD_LN: np.ndarray | float = 0.0
    hbmC_LN: np.ndarray | float = 0.0

    @classmethod
    def of(cls, ops_LN) -> "StackArrays":
        """From ``LayerOps`` as a nested list [layer][column]."""
        def arr(name, dtype=float):
            return np.array([[getattr(o, name) for o in row] for row in ops_LN], dtype=dtype)

        return cls(arr("pre_s"), arr("dispatch_s"), arr("ffn_s"), arr("combine_s"), arr("compute_share"),
                   arr("host_pre_s"), arr("host_post_s"), arr("host_sync", bool), arr("pre_memory_s"),
                   arr("pre_gemm_s"), arr("ffn_memory_s"), arr("gemm_share"), arr("dispatch_hbm_share"),
                   arr("combine_hbm_share"))

    def overlap_limits(self) -> dict:
        """The keyword arguments of ``two_microbatch_time`` that limit the overlap."""
        return dict(Pm_L=self.Pm_LN, Pg_L=self.Pg_LN, Xm_L=self.Xm_LN, gemm_share_L=self.gemm_LN,
                    hbmD_L=self.hbmD_LN, hbmC_L=self.hbmC_LN)

    def rows(self, index) -> "StackArrays":
        """The stack of layers ``index`` (an index array into L): every array's rows."""
        return StackArrays(**{f.name: (v[index] if np.ndim(v) else v)
                              for f in fields(self) for v in (getattr(self, f.name),)})


@dataclass(frozen=True)
class StackTimes:
    """A stack of layers under a schedule, per column (s): its time, the communication not
    hidden behind compute, the time the device waits for the host, and the host's issue time."""

    time_s: np.ndarray
    exposed_comm_s: np.ndarray
    exposed_host_s: np.ndarray
    host_s: np.ndarray


def stack_times(a: StackArrays, overlap: str) -> StackTimes:
    """``StackTimes`` of every column of ``a`` under ``overlap`` (module docstring)."""
    if overlap not in OVERLAPS:
        raise SpecError("overlap", overlap, f"one of {', '.join(OVERLAPS)}")
    P, D, X, C = a.P_LN, a.D_LN, a.X_LN, a.C_LN
    n = P.shape[1]
    if P.shape[0] == 0:
        z = np.zeros(n)
        return StackTimes(z, z, z, z)
    issue = (a.hP_LN + a.hX_LN).sum(axis=0)
    hosted = bool((issue > 0).any())
    host = dict(hP_L=a.hP_LN, hX_L=a.hX_LN, sync_L=a.sync_LN)
    if overlap == "none":
        gpu = P.sum(0) + D.sum(0) + X.sum(0) + C.sum(0)
        total = np.where(issue > 0, serial_time(P, D, X, C, **host), gpu) if hosted else gpu
        waited = np.where(issue > 0, _exposed(total, gpu), 0.0)
        return StackTimes(total, D.sum(0) + C.sum(0), waited, issue)
    limits = a.overlap_limits()
    rec = two_microbatch_time(P, D, X, C, a.share_LN, **limits)
    total = np.where(issue > 0, two_microbatch_time(P, D, X, C, a.share_LN, **host, **limits), rec) if hosted else rec
    compute = 2.0 * (P.sum(0) + X.sum(0))
    return StackTimes(total, np.maximum(0.0, rec - compute), _exposed(total, rec), 2.0 * issue)


def _exposed(total, without_host):
    """max(0, total - without_host), with differences below ``HIDDEN_RTOL`` x total as 0."""
    d = np.maximum(0.0, total - without_host)
    return np.where(d > HIDDEN_RTOL * total, d, 0.0)
