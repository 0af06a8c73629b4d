"""Per-link loads of a traffic matrix on a torus (TPU ICI) with dimension-ordered routing.

Legend: P chips of one torus, A source chip, B destination chip.

A message from chip a to chip b first moves along dimension 0 until its coordinate matches b's,
then along dimension 1, and so on (dimension-ordered routing). Along each dimension it takes the
shorter way round the ring when the torus wraps around (on a tie, half goes each way), or the
only way on a mesh. Every directed link it crosses carries its bytes. The slowest link decides.
"""
from __future__ import annotations

import numpy as np


def link_loads(bytes_AB: np.ndarray, shape: tuple[int, ...], wraparound: bool = True) -> np.ndarray:
    """``load_PDS[p, dim, s]``: bytes on the link leaving chip p along ``dim`` in direction s.

    s = 0 is the + direction, s = 1 the - direction. ``bytes_AB`` is P x P (diagonal ignored);
    chips are numbered in C order over ``shape`` (``np.unravel_index``).
    """
    shape = tuple(int(x) for x in shape)
    chips = int(np.prod(shape))
    w_AB = np.asarray(bytes_AB, dtype=float)
    if w_AB.shape != (chips, chips):
        raise ValueError(f"bytes_AB shape {w_AB.shape} does not match torus {shape}")
    a_idx, b_idx = np.nonzero(w_AB)
    keep = a_idx != b_idx
    a_idx, b_idx = a_idx[keep], b_idx[keep]
    w = w_AB[a_idx, b_idx]
    cur = np.array(np.unravel_index(a_idx, shape)).T.copy()   # current coordinates, pairs x dims
    dst = np.array(np.unravel_index(b_idx, shape)).T
    load = np.zeros((chips, len(shape), 2))
    for dim, ring in enumerate(shape):
        fwd = (dst[:, dim] - cur[:, dim]) % ring
        if wraparound:
            back = (ring - fwd) % ring
            share_f = np.where(fwd < back, 1.0, np.where(fwd == back, 0.5, 0.0))
        else:
            back = cur[:, dim] - dst[:, dim]
            fwd = np.where(back > 0, 0, -back)
            back = np.maximum(back, 0)
            share_f = np.where(fwd > 0, 1.0, 0.0)
        for direction, dist, share in ((0, fwd, share_f), (1, back, 1.0 - share_f)):
            step_sign = 1 if direction == 0 else -1
            for step in range(int(dist.max(initial=0))):
                on = (dist > step) & (share > 0)
                if not on.any():
                    continue
                coords = cur[on].copy()
                coords[:, dim] = (coords[:, dim] + step_sign * step) % ring
                origin = np.ravel_multi_index(coords.T, shape)
                np.add.at(load[:, dim, direction], origin, w[on] * share[on])
        cur[:, dim] = dst[:, dim]
    return load
