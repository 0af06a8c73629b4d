"""Schedules of a stack of layers: device streams driven by a host that issues their operators.

Each layer is four operations per micro-batch (moesim/step/layer.py): P (attention + router,
compute), D (dispatch, comm), X (experts, compute), C (combine, comm). The host issues them in
program order; an operation cannot run before the host has issued it.

Host issue (fluid model). The host issues an operation's kernels one after another over its
host time h, starting at host clock a (then the clock reads a + h). The device runs them as they
arrive, so an operation of device time g that may start at s >= a (stream free, inputs ready)
ends at

    end = max(run(s, g), a + h)                                                   [s]   (1)

(the device cannot finish the last kernel before it was issued; run(s, g) = s + g, or the SM-
shared run of moesim/step/sharing.py). Only P and X carry host time: a comm operation is one
launch (counted in the X ops of the reference layer, moesim/step/host.py).

Host-GPU synchronisation (``sync``). A dispatch whose receive sizes are not known in advance
makes the host wait for the device: DeepEP normal-mode ``Buffer.dispatch`` "the CPU will wait for
GPU's signal to arrive, so this is not compatible with CUDA graph" (deepseek-ai/DeepEP README,
normal-kernel example; deep_ep/buffer.py ``dispatch``: only with ``num_worst_tokens``, intranode
only, "there will be no CPU sync"); Megatron-Core's dropless all-to-all dispatcher sets
``cuda_sync_point = "before_ep_alltoall"`` to read ``input_splits``/``output_splits`` on the host
(megatron/core/transformer/moe/token_dispatcher.py, MoEAlltoAllTokenDispatcher). The counts are
computed at the end of P, so before issuing D of micro-batch b the host waits for P_b:

    a <- max(a, end(P_b))                                                         [s]   (2)

and cannot run ahead into the next operations until then: host issue and device work no longer
overlap across that point. Without a sync the host runs ahead without bound (no queue limit).

Orders. ``none`` (one micro-batch, one stream): P, [sync], D, X, C per layer. ``two_microbatch``
(SGLang two-batch overlap for prefill, python/sglang/srt/operations_strategy.py
``_compute_moe_deepseek_blog_prefill``, tbo_delta_stages 0: stages "attention, gate,
select_experts, dispatch_a | dispatch_b, experts, combine_a | shared_experts, combine_b, output"
run for micro-batch 0 then 1, the third stage running into the next layer's first): host order P0 [sync] D0 P1 [sync] D1 X0 C0 X1 C1; compute stream
P0 P1 X0 X1, comm stream D0 D1 C0 C1, each operation also waiting for its micro-batch's previous
one (the max-plus recurrence; with no host time it is exactly the recurrence without a host).
NOTE: the wait for the counts also includes the count exchange (a notify all-to-all of a few
bytes per rank, latency-bound); not added.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from moesim.step.sharing import op_rates


def _run(start, work, intervals, idle=1.0, rates=None):
    """End of a compute op of full-speed duration ``work`` started at ``start`` while the comm
    intervals ``[(a, b, ...), ...]`` (time-ordered, disjoint) run: rate ``idle`` outside them and
    ``rates[i]`` inside interval i (fluid model, moesim/step/sharing.py eqs. 1, 4-5; without
    ``rates`` each interval's third entry, its compute share). Element-wise over arrays."""
    t, w = start, work
    for i, iv in enumerate(intervals):
        a, b = iv[0], iv[1]
        rate = iv[2] if rates is None else rates[i]
        pre = np.clip((a - t) * idle, 0.0, w)  # progress at the idle rate before the interval opens
        t, w = t + pre / idle, w - pre
        begin = np.maximum(t, a)
        done = np.minimum(w, np.maximum(b - begin, 0.0) * rate)
        t = np.where(w > 0, begin + done / rate, t)
        w = w - done
    return t + w / idle


def _arrays(shape, *arrays):
    return [np.broadcast_to(np.asarray(a, dtype=float), shape) for a in arrays]


def _sync(sync_L, shape):
    """Sync flags per layer, (L,) or (L, ...) like the op times."""
    sync = np.asarray(sync_L, dtype=bool)
    if sync.ndim == 1 and len(shape) > 1:
        sync = sync.reshape((-1,) + (1,) * (len(shape) - 1))
    return np.broadcast_to(sync, shape)


def two_microbatch_time(P_L, D_L, X_L, C_L, share_L=1.0, hP_L=0.0, hX_L=0.0, sync_L=False, *,
                        Pm_L=0.0, Pg_L=0.0, Xm_L=0.0, gemm_share_L=1.0, hbmD_L=0.0, hbmC_L=0.0):
    """Step time of the two-micro-batch program over L layers (max-plus recurrence).

    Arguments are per-micro-batch op times, shape (L,) or (L, ...) (then element-wise over the
    trailing axes). Compute stream: P0 P1 X0 X1; comm stream: D0 D1 C0 C1; each op also waits
    for its micro-batch's previous op. Returns the end of the last combine.
    ``share_L`` (broadcast to P_L): the compute stream's speed while layer l's dispatch/combine
    kernels run (moesim/step/sharing.py); 1 = the comm takes no compute units.
    What limits the overlap besides (moesim/step/sharing.py eqs. 2-5): ``Pm_L``, ``Xm_L`` the
    memory-bound seconds of P and X, which run at 1 - ``hbmD_L`` / ``hbmC_L`` (the HBM share of
    the dispatch / combine kernels) while those run; ``Pg_L`` the fixed-grid GEMM seconds of P
    (all of X but ``Xm_L`` is GEMMs), which run at ``gemm_share_L`` at all times. Defaults: the
    SM share alone (eq. 1).
    ``hP_L``, ``hX_L``: host issue time of one micro-batch's P and X ops; ``sync_L``: whether
    layer l's dispatch makes the host wait for the counts (module doc, eqs. 1-2), (L,) or like
    ``P_L``. Host time 0
    gives the recurrence without a host exactly.
    The recurrence is evaluated in the host's order P0 D0 P1 D1 X0 C0 X1 C1 (the same
    dependencies as the program order): every comm op a compute op can overlap is then already
    placed, and at most the last two (P1 overlaps the previous layer's C1 and this layer's D0).
    """
    P_L, D_L, X_L, C_L = (np.asarray(a, dtype=float) for a in (P_L, D_L, X_L, C_L))
    share_L, hP_L, hX_L = _arrays(P_L.shape, share_L, hP_L, hX_L)
    Pm_L, Pg_L, Xm_L, gemm_L, hbmD_L, hbmC_L = _arrays(P_L.shape, Pm_L, Pg_L, Xm_L, gemm_share_L, hbmD_L, hbmC_L)
    sync_L = _sync(sync_L, P_L.shape)
    shared = bool((share_L < 1.0).any() or (gemm_L < 1.0).any() or (hbmD_L > 0).any() or (hbmC_L > 0).any())
    shape = P_L.shape
    if shape[0] == 0:
        out = np.zeros(shape[1:])
        return float(out) if out.ndim == 0 else out
    cols = lambda a: np.ascontiguousarray(np.asarray(a, dtype=float).reshape(shape[0], -1))
    if shared:
        r = _overlap_rates(P_L, X_L, share_L, Pm_L, Pg_L, Xm_L, gemm_L, hbmD_L, hbmC_L)
        rates = [cols(r[k]) for k in (("P", "idle"), ("X", "idle"), ("P", "D", 0), ("P", "C", -1), ("X", "D", 0),
                                     ("X", "C", 0))]
    else:
        rates = [cols(np.ones(shape))] * 6
    out = _tbo_kernel(cols(P_L), cols(D_L), cols(X_L), cols(C_L), cols(hP_L), cols(hX_L),
                      np.ascontiguousarray(np.asarray(sync_L, dtype=bool).reshape(shape[0], -1)), *rates, shared)
    out = out.reshape(shape[1:])
    return float(out) if out.ndim == 0 else out


def _overlap_rates(P_L, X_L, share_L, Pm_L, Pg_L, Xm_L, gemm_L, hbmD_L, hbmC_L) -> dict:
    """Every rate the recurrence can need, per layer, in one vectorized pass (sharing.py eqs.
    4-5): P and X at idle, and under the comm kernels they can overlap in the host order
    P0 D0 P1 D1 X0 C0 X1 C1: P_l under D_l or C_{l-1}, X_l under D_l or C_l."""
    x_gemm = X_L - Xm_L
    prev = lambda a: np.concatenate([a[:1], a[:-1]], axis=0)  # layer l-1's value at l (l = 0: unused)
    return {
        ("P", "idle"): op_rates(P_L, Pg_L, Pm_L, gemm_L, 1.0, 0.0)[0],
        ("X", "idle"): op_rates(X_L, x_gemm, Xm_L, gemm_L, 1.0, 0.0)[0],
        ("P", "D", 0): op_rates(P_L, Pg_L, Pm_L, gemm_L, share_L, hbmD_L)[1],
        ("P", "C", -1): op_rates(P_L, Pg_L, Pm_L, gemm_L, prev(share_L), prev(hbmC_L))[1],
        ("X", "D", 0): op_rates(X_L, x_gemm, Xm_L, gemm_L, share_L, hbmD_L)[1],
        ("X", "C", 0): op_rates(X_L, x_gemm, Xm_L, gemm_L, share_L, hbmC_L)[1],
    }



@njit(cache=True)
def _run_scalar(start, work, idle, n_last, last_a, last_b, last_rate):
    """``_run`` on one column: the fluid progress of one compute op through the last comm
    intervals (same operations in the same order as the array version)."""
    t, w = start, work
    for i in range(n_last):
        a, b, rate = last_a[i], last_b[i], last_rate[i]
        pre = min(max((a - t) * idle, 0.0), w)
        t, w = t + pre / idle, w - pre
        begin = max(t, a)
        done = min(w, max(b - begin, 0.0) * rate)
        if w > 0:
            t = begin + done / rate
        w = w - done
    return t + w / idle


@njit(cache=True)
def _op_then_comm(comp, comm, host, after, work, h, idle, rate_d, rate_c, comm_dur, comm_kind, sync, shared,
                  n_last, last_s, last_e, last_kind, rate):
    """One compute op issued from the host clock (eq. 1), run through the last comm intervals at
    its rates under a dispatch (``rate_d``) or a combine (``rate_c``), then the host wait of eq.
    (2) when ``sync``, then its comm op of ``comm_kind`` (0 dispatch, 1 combine) queued on the comm
    stream and pushed onto the last two intervals. Returns (comp, comm, host, n_last)."""
    a = host
    host = a + h
    start = max(after, a)
    if shared:
        for i in range(n_last):
            rate[i] = rate_d if last_kind[i] == 0 else rate_c
        end = _run_scalar(start, work, idle, n_last, last_s, last_e, rate)
    else:
        end = start + work
    comp = max(end, host)
    if sync:
        host = max(host, comp)  # eq. (2): wait for the op's token counts
    st = max(comm, comp)
    comm = st + comm_dur
    if n_last == 2:
        last_s[0], last_e[0], last_kind[0] = last_s[1], last_e[1], last_kind[1]
        n_last = 1
    last_s[n_last], last_e[n_last], last_kind[n_last] = st, comm, comm_kind
    return comp, comm, host, n_last + 1


@njit(cache=True)
def _tbo_kernel(P, D, X, C, hP, hX, sync, idleP, idleX, rPD, rPC, rXD, rXC, shared):
    """The two-micro-batch recurrence of ``two_microbatch_time`` compiled, per column: arrays
    (L, N); rates from ``_overlap_rates`` (P under D_l or C_{l-1}; X under D_l or C_l)."""
    L, N = P.shape
    out = np.empty(N)
    last_s = np.zeros(2)
    last_e = np.zeros(2)
    last_kind = np.zeros(2, dtype=np.int64)  # 0: dispatch, 1: combine
    rate = np.zeros(2)
    d_end = np.zeros(2)
    for n in range(N):
        comp = comm = host = 0.0
        ready = np.zeros(2)
        n_last = 0
        for l in range(L):
            for b in range(2):
                comp, comm, host, n_last = _op_then_comm(
                    comp, comm, host, max(comp, ready[b]), P[l, n], hP[l, n], idleP[l, n], rPD[l, n], rPC[l, n],
                    D[l, n], 0, sync[l, n], shared, n_last, last_s, last_e, last_kind, rate)
                d_end[b] = comm
            for b in range(2):
                comp, comm, host, n_last = _op_then_comm(
                    comp, comm, host, max(comp, d_end[b]), X[l, n], hX[l, n], idleX[l, n], rXD[l, n], rXC[l, n],
                    C[l, n], 1, False, shared, n_last, last_s, last_e, last_kind, rate)
                ready[b] = comm
        out[n] = max(ready[0], ready[1])
    return out

def serial_time(P_L, D_L, X_L, C_L, hP_L=0.0, hX_L=0.0, sync_L=False):
    """Time of the one-micro-batch program (``none``): one stream P D X C per layer, issued by
    the host with eqs. (1)-(2). Host time 0 gives sum(P + D + X + C) exactly."""
    P_L, D_L, X_L, C_L = (np.asarray(a, dtype=float) for a in (P_L, D_L, X_L, C_L))
    hP_L, hX_L = _arrays(P_L.shape, hP_L, hX_L)
    sync_L = _sync(sync_L, P_L.shape)
    t = host = np.zeros(P_L.shape[1:])
    for l in range(P_L.shape[0]):
        a, host = host, host + hP_L[l]
        t = np.maximum(np.maximum(t, a) + P_L[l], host)
        host = np.where(sync_L[l], np.maximum(host, t), host)  # eq. (2)
        t = t + D_L[l]
        a, host = host, host + hX_L[l]
        t = np.maximum(np.maximum(t, a) + X_L[l], host) + C_L[l]
    return float(t) if t.ndim == 0 else t
