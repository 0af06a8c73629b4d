"""Traffic under skewed expert popularity, by sampling routed tokens (Monte Carlo).

Legend: T tokens, K top-k, E experts, R ranks, N nodes.

Each token draws K distinct experts with probabilities proportional to ``popularity_E``
(sequential sampling without replacement, drawn exactly with the Gumbel-top-k trick:
the K largest of log p_e + Gumbel noise). Popularity is global, so every source rank has the
same expected row; hot experts on one rank make that rank's receive port the incast point.
Used until the routing engine (moesim/routing/) provides traffic matrices, and as a second
engine for the closed forms in ``traffic.py`` (uniform popularity must reproduce them).
"""
from __future__ import annotations

import numpy as np

from moesim.comm.traffic import DEDUPS, Traffic, check_sizes
from moesim.errors import SpecError


def popularity_from_skew(kind: str, param, num_experts: int, rng: np.random.Generator) -> np.ndarray:
    """Expert popularity for a parsed skew (``moesim.specs.workload.parse_skew``), summing to 1.

    zipf:S -> p_e proportional to (e + 1)^-S (expert 0 hottest, so rank 0 is the incast point);
    dirichlet:A -> one draw of Dirichlet(A, ..., A); explicit -> the given vector (length E).
    """
    if kind in ("uniform", "balanced"):
        p = np.ones(num_experts)
    elif kind == "zipf":
        p = (np.arange(num_experts) + 1.0) ** -float(param)
    elif kind == "dirichlet":
        p = rng.dirichlet(np.full(num_experts, float(param)))
    elif kind == "explicit":
        p = np.asarray(param, dtype=float)
        if p.size != num_experts:
            raise SpecError("skew", f"explicit with {p.size} values", f"needs num_experts = {num_experts} values")
    else:
        raise SpecError("skew", kind, "trace skews need the routing engine (moesim route)")
    return p / p.sum()


def sample_choices(popularity_E: np.ndarray, top_k: int, tokens: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``choices_TK``: K distinct experts per token, Plackett-Luce sampling via Gumbel-top-k."""
    p = np.asarray(popularity_E, dtype=float)
    if np.count_nonzero(p) < top_k:
        raise SpecError("skew", f"{np.count_nonzero(p)} experts with nonzero popularity", f"need >= top_k = {top_k}")
    with np.errstate(divide="ignore"):
        keys_TE = np.log(p)[None, :] + rng.gumbel(size=(tokens, p.size))
    return np.argpartition(-keys_TE, top_k - 1, axis=1)[:, :top_k]


def sampled_traffic(popularity_E: np.ndarray, ranks: int, ranks_per_node: int, tokens_per_rank: int,
                    top_k: int, bytes_per_token: float, dedup: str = "node",
                    rng: np.random.Generator | int = 0, sample_tokens: int = 8192) -> Traffic:
    """Expected traffic estimated from ``sample_tokens`` sampled tokens, scaled to T per rank.

    Hit fractions per destination rank and node are sample means; rows are identical across
    source ranks (global popularity). Standard error of each fraction <= 0.5 / sqrt(sample_tokens).
    """
    rng = np.random.default_rng(rng)
    num_experts = len(popularity_E)
    ranks_per_node = min(ranks_per_node, ranks)
    check_sizes(ranks, ranks_per_node, tokens_per_rank, num_experts, top_k, bytes_per_token)
    if dedup not in DEDUPS:
        raise SpecError("dedup", dedup, f"one of {', '.join(DEDUPS)}")
    choices_TK = sample_choices(popularity_E, top_k, sample_tokens, rng)
    rank_TK = choices_TK // (num_experts // ranks)
    rows = np.arange(sample_tokens)[:, None]
    hit_TR = np.zeros((sample_tokens, ranks), dtype=bool)
    hit_TR[rows, rank_TK] = True
    p_rank_R = hit_TR.mean(axis=0)
    copies_R = np.bincount(rank_TK.ravel(), minlength=ranks) / sample_tokens
    per_token_R = copies_R if dedup == "none" else p_rank_R
    bytes_RR = np.tile(tokens_per_rank * bytes_per_token * per_token_R, (ranks, 1))
    node_bytes_RN = None
    if dedup == "node":
        hit_TN = np.zeros((sample_tokens, ranks // ranks_per_node), dtype=bool)
        hit_TN[rows, rank_TK // ranks_per_node] = True
        node_bytes_RN = np.tile(tokens_per_rank * bytes_per_token * hit_TN.mean(axis=0), (ranks, 1))
    reach_RR = np.tile(1.0 - (1.0 - p_rank_R) ** tokens_per_rank, (ranks, 1))
    np.fill_diagonal(reach_RR, 0.0)
    return Traffic(bytes_RR, ranks_per_node, node_bytes_RN, reach_RR.sum(axis=1))
