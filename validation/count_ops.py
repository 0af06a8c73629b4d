"""Count the operations one transformer layer issues from the host, forward and backward, and
write ``validation/data/op-counts.json`` (``python -m validation.count_ops``).

Why: an eager framework (PyTorch, Megatron) pays host time for every operator it dispatches
(Python, autograd bookkeeping, the dispatcher, the kernel launch). When the GPU work per operator
is small, the host, not the GPU, sets the pace. moesim's step model charges
``host_op_us`` per operator (moesim/data/stacks.toml); the number of operators per layer is *measured* here, not
guessed.

How: every aten operator that reaches the dispatcher is counted with a ``TorchDispatchMode``
(one count per call, the level at which a kernel is launched on a GPU backend; views and
metadata-only ops such as ``t``/``view``/``detach`` are counted separately as ``views`` and are
not launches). Forward and backward are counted separately (backward: ``loss.backward()`` under
the same mode; the CPU autograd engine runs on the calling thread).

The layer (pre-norm, as DeepSeek/Qwen/Mixtral/gpt-oss, written here with plain torch):
    x -> RMSNorm -> q, k, v projections -> scaled_dot_product_attention (causal) -> o projection
      -> + x -> RMSNorm -> FFN -> + residual
FFN is either a dense SwiGLU (``validation.torch_moe.SwiGLU``) or the reference MoE block
(``validation.torch_moe.MoEBlock``: router, top-k, sort of the routed copies, experts, weighted
index_add, shared experts). The MoE block is counted with two expert paths:
- ``grouped_mm``: one grouped GEMM per projection (op count independent of the local experts);
- ``loop``: per-expert slicing and GEMMs (op count grows with the local experts); the slope per
  non-empty local expert is (count(E2) - count(E1)) / (E2 - E1).
The attention is GQA (``Layer``) or DeepSeek-V2/V3 MLA (``MLALayer``, with and without query
compression); the MLA layers' counts are stored with their extra operators over the GQA layer
(checked equal in the dense and the MoE layer and all issued before the token-count sync).
Each count also gives the launches before the sync (``pre_sync``: PRE_SYNC_OP_COUNTS).
Both are stored; the step model uses the grouped path's constant count plus ``per_local_expert``
from the loop path only when asked (production MoE frameworks launch one grouped kernel per
projection: Megatron TEGroupedMLP / DeepGEMM), see moesim/step/host.py.
"""
from __future__ import annotations

import json
import platform
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from validation.torch_moe import MoEBlock, MoEConfig, SwiGLU

OUT = Path(__file__).parent / "data" / "op-counts.json"
# metadata-only aten ops: no kernel launch on a GPU backend
VIEW_OPS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "detach", "alias",
            "unsqueeze", "squeeze", "reshape", "as_strided", "slice", "select", "split",
            "split_with_sizes", "unbind", "_reshape_alias", "lift_fresh", "unflatten", "flatten",
            "narrow", "chunk", "view_as", "expand_as", "contiguous", "numpy_T", "_to_copy_noop"}
HIDDEN, HEADS, FFN, TOKENS = 64, 4, 32, 64
# MLA widths, small but in DeepSeek-V3's proportions (Table C: q_lora 1536, kv_lora 512, nope 128,
# rope 64, v 128, heads 128): the op count does not depend on the widths
MLA_Q_LORA, MLA_KV_LORA, MLA_NOPE, MLA_ROPE, MLA_V = 48, 16, 16, 8, 16


class OpCounter(TorchDispatchMode):
    """Counts aten calls by overload packet name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.seq: list[str] = []  # launches in program order

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__.rstrip("_")
        self.ops[name] += 1
        if name not in VIEW_OPS:
            self.seq.append(name)
        return func(*args, **(kwargs or {}))

    def launches(self) -> int:
        return sum(n for name, n in self.ops.items() if name not in VIEW_OPS)

    def views(self) -> int:
        return sum(n for name, n in self.ops.items() if name in VIEW_OPS)


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


class Layer(torch.nn.Module):
    """One pre-norm transformer layer with GQA attention and a dense or MoE FFN."""

    def __init__(self, ffn: torch.nn.Module):
        super().__init__()
        self.n1 = torch.nn.Parameter(torch.ones(HIDDEN))
        self.n2 = torch.nn.Parameter(torch.ones(HIDDEN))
        self.qkv = torch.nn.Linear(HIDDEN, 2 * HIDDEN, bias=False)  # q: D, k and v: D/2 each (GQA)
        self.o = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.ffn = ffn

    def attend(self, xn_TD):
        """Attention output before the o projection, (T, heads x v width)."""
        T, hd = xn_TD.shape[0], HIDDEN // HEADS
        q, k, v = self.qkv(xn_TD).split([HIDDEN, HIDDEN // 2, HIDDEN // 2], -1)
        q = q.view(T, HEADS, hd).transpose(0, 1)
        k = k.view(T, HEADS // 2, hd).transpose(0, 1).repeat_interleave(2, 0)
        v = v.view(T, HEADS // 2, hd).transpose(0, 1).repeat_interleave(2, 0)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(T, HIDDEN)

    def forward(self, x_TD, mark=None):
        """``mark(name, tensor)``, when given, is called at the attention output (before the o
        projection) and at the end of the attention block (after its residual add)."""
        a = self.attend(rms_norm(x_TD, self.n1))
        if mark:
            mark("attention_out", a)
        h = x_TD + self.o(a)
        if mark:
            mark("attention_block", h)
        return h + self.ffn(rms_norm(h, self.n2))


def rope(x_TXR, cos_T1R, sin_T1R):
    """Rotary embedding, rotate-half form: x cos + [-x2, x1] sin (x1, x2 the two halves of R)."""
    x1, x2 = x_TXR.chunk(2, -1)
    return x_TXR * cos_T1R + torch.cat([-x2, x1], -1) * sin_T1R


class MLALayer(Layer):
    """The same layer with DeepSeek-V2/V3 multi-head latent attention (MLA), training/prefill form
    (keys and values up-projected, no weight absorption). DeepSeek-V2 paper eqs. (37)-(47), with the
    projections named as in the V3 configs (moe-models.md Table C):
        c_Q = RMSNorm(W_DQ h)                         q_a_proj, q_a_layernorm   (q_lora_rank > 0)
        [q_C ; q_R] = W_UQ c_Q  (per head nope | rope) q_b_proj  (q_lora_rank 0: W_Q h directly)
        [c_KV ; k_R] = W_DKV h (latent | one shared rope key)   kv_a_proj_with_mqa
        [k_C ; v_C] = W_UKV RMSNorm(c_KV)  (per head nope | v)   kv_a_layernorm, kv_b_proj
        q = [q_C ; RoPE(q_R)], k = [k_C ; RoPE(k_R) broadcast to every head]
        o = W_O softmax(q k^T / sqrt(nope + rope)) v_C    (causal)
    The RoPE cos/sin tables are computed once per model forward (Megatron computes them in the
    model, not in the layer), so they are buffers here, outside the counted layer."""

    def __init__(self, ffn: torch.nn.Module, q_lora: int = MLA_Q_LORA):
        torch.nn.Module.__init__(self)
        H, N, R, V = HEADS, MLA_NOPE, MLA_ROPE, MLA_V
        self.n1 = torch.nn.Parameter(torch.ones(HIDDEN))
        self.n2 = torch.nn.Parameter(torch.ones(HIDDEN))
        self.q_lora = q_lora
        if q_lora:
            self.q_a = torch.nn.Linear(HIDDEN, q_lora, bias=False)
            self.q_a_norm = torch.nn.Parameter(torch.ones(q_lora))
        self.q_b = torch.nn.Linear(q_lora or HIDDEN, H * (N + R), bias=False)
        self.kv_a = torch.nn.Linear(HIDDEN, MLA_KV_LORA + R, bias=False)
        self.kv_a_norm = torch.nn.Parameter(torch.ones(MLA_KV_LORA))
        self.kv_b = torch.nn.Linear(MLA_KV_LORA, H * (N + V), bias=False)
        self.o = torch.nn.Linear(H * V, HIDDEN, bias=False)
        self.ffn = ffn
        inv_freq_R2 = 1.0 / 10000.0 ** (torch.arange(0, R, 2).float() / R)
        ang_TR = torch.outer(torch.arange(TOKENS).float(), inv_freq_R2).repeat(1, 2)
        self.register_buffer("cos_T1R", ang_TR.cos()[:, None, :])
        self.register_buffer("sin_T1R", ang_TR.sin()[:, None, :])

    def attend(self, xn_TD):
        T, H, N, R, V = xn_TD.shape[0], HEADS, MLA_NOPE, MLA_ROPE, MLA_V
        c_q = rms_norm(self.q_a(xn_TD), self.q_a_norm) if self.q_lora else xn_TD
        q_nope, q_pe = self.q_b(c_q).view(T, H, N + R).split([N, R], -1)
        c_kv, k_pe = self.kv_a(xn_TD).split([MLA_KV_LORA, R], -1)
        k_nope, v = self.kv_b(rms_norm(c_kv, self.kv_a_norm)).view(T, H, N + V).split([N, V], -1)
        q_pe = rope(q_pe, self.cos_T1R, self.sin_T1R)
        k_pe = rope(k_pe.view(T, 1, R), self.cos_T1R, self.sin_T1R)
        q = torch.cat([q_nope, q_pe], -1).transpose(0, 1)
        k = torch.cat([k_nope, k_pe.expand(T, H, R)], -1).transpose(0, 1)
        a = F.scaled_dot_product_attention(q, k, v.transpose(0, 1), is_causal=True)
        return a.transpose(0, 1).reshape(T, H * V)


ATTENTION = {"gqa": Layer, "mla": MLALayer, "mla_no_q_lora": lambda ffn: MLALayer(ffn, q_lora=0)}


def count(ffn: torch.nn.Module, attention: str = "gqa") -> dict:
    """Forward and backward launches (and views) of one layer over TOKENS tokens, and the
    launches of the attention block: forward, launches up to the block's residual add (program
    order); backward, launches after the gradient of the attention output reaches it (a tensor
    hook) plus the o projection's 2 GEMMs (its input and weight gradients, run just before)."""
    torch.manual_seed(0)
    layer = ATTENTION[attention](ffn)
    x = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    at: dict[str, int] = {}
    with OpCounter() as fwd:
        bwd = OpCounter()

        def mark(name, t):
            at[name] = fwd.launches()
            if name == "attention_out":
                t.register_hook(lambda g: at.__setitem__("attention_grad", bwd.launches()))

        y = layer(x, mark)
    loss = y.float().pow(2).mean()
    with bwd:
        loss.backward()
    return {"forward": fwd.launches(), "backward": bwd.launches(),
            "attention_forward": at["attention_block"],
            "attention_backward": bwd.launches() - at["attention_grad"] + 2,
            # launch number of the first data-dependent-shape op (a host sync on a GPU); MoE only
            "first_sync_forward": fwd.seq.index("nonzero") + 1 if "nonzero" in fwd.seq else None,
            "forward_views": fwd.views(), "backward_views": bwd.views(),
            "forward_ops": dict(sorted(fwd.ops.items())), "backward_ops": dict(sorted(bwd.ops.items()))}


def moe(experts: int, impl: str, shared: int = 1, attention: str = "gqa") -> dict:
    cfg = MoEConfig(hidden=HIDDEN, expert_ffn=FFN, num_experts=experts, top_k=2,
                    num_shared_experts=shared, shared_expert_ffn=FFN if shared else 0)
    return count(MoEBlock(cfg, impl=impl), attention)


def pre_sync(dense: dict, grouped: dict) -> dict:
    """Operators issued before the expert path needs the token counts (moesim/step/host.py
    PRE_SYNC_OP_COUNTS): MoE forward, up to the first sync; dense forward and both backwards,
    the attention block."""
    return {"dense": {"forward": dense["attention_forward"], "backward": dense["attention_backward"]},
            "moe": {"forward": grouped["first_sync_forward"], "backward": grouped["attention_backward"]}}


def attention_variant(name: str, dense: dict, grouped: dict, gqa_dense: dict, gqa_grouped: dict) -> dict:
    """Counts of the layer with another attention, and its extra operators over the GQA layer
    (the same in the dense and the MoE layer, and all before the sync: checked here)."""
    extra = {p: dense[p] - gqa_dense[p] for p in ("forward", "backward")}
    assert all(grouped[p] - gqa_grouped[p] == extra[p] for p in extra), name
    assert pre_sync(dense, grouped) == {k: {p: n + extra[p] for p, n in v.items()}
                                        for k, v in pre_sync(gqa_dense, gqa_grouped).items()}, name
    return {"dense_layer": {p: dense[p] for p in ("forward", "backward")},
            "moe_layer": {p: grouped[p] for p in ("forward", "backward")},
            "pre_sync": pre_sync(dense, grouped), "extra_vs_gqa": extra}


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or [str(OUT)])[0])
    dense = count(SwiGLU(HIDDEN, 4 * FFN))
    grouped = moe(8, "grouped_mm")
    grouped_noshared = moe(8, "grouped_mm", shared=0)
    loop4, loop8 = moe(4, "loop"), moe(8, "loop")
    # NOTE: with 2 x 64 = 128 copies over 4 or 8 experts every expert is non-empty (seed 0).
    slope = {p: (loop8[p] - loop4[p]) / 4 for p in ("forward", "backward")}
    mla_dense, mla_grouped = count(SwiGLU(HIDDEN, 4 * FFN), "mla"), moe(8, "grouped_mm", attention="mla")
    mlanq_dense = count(SwiGLU(HIDDEN, 4 * FFN), "mla_no_q_lora")
    mlanq_grouped = moe(8, "grouped_mm", attention="mla_no_q_lora")
    data = {
        "description": "aten operators (kernel launches; views excluded) one transformer layer "
                       "dispatches per micro-batch, counted with validation/count_ops.py",
        "method": "torch.utils._python_dispatch.TorchDispatchMode counting every aten call of one "
                  "layer's forward and of loss.backward(); metadata-only ops (view, t, transpose, "
                  "expand, detach, ...) excluded as they launch no kernel; CPU tensors, fp32",
        "torch_version": torch.__version__, "python": platform.python_version(),
        "layer": "pre-norm: RMSNorm, fused qkv GEMM, SDPA causal (GQA via repeat_interleave), "
                 "o GEMM, residual, RMSNorm, FFN, residual",
        "shapes": {"hidden": HIDDEN, "heads": HEADS, "tokens": TOKENS, "expert_ffn": FFN, "top_k": 2},
        "dense_layer": {k: dense[k] for k in ("forward", "backward")},
        "moe_layer": {
            "forward": grouped["forward"], "backward": grouped["backward"],
            "shared_experts_forward": grouped["forward"] - grouped_noshared["forward"],
            "shared_experts_backward": grouped["backward"] - grouped_noshared["backward"],
            "per_local_expert_forward": slope["forward"], "per_local_expert_backward": slope["backward"],
            "expert_path": "grouped_mm (constant) ; per_local_expert from the loop path, "
                           "(count(E=8) - count(E=4)) / 4",
        },
        "pre_sync": pre_sync(dense, grouped),
        "pre_sync_method": "forward MoE: launch number of the first nonzero (data-dependent shape, a "
                           "host sync on a GPU) in program order; dense forward: launches up to the "
                           "attention block's residual add; backward: launches after the attention "
                           "output's gradient hook + the o projection's 2 GEMMs",
        "mla": {
            "layer": "as above with DeepSeek-V2/V3 multi-head latent attention (training/prefill form, "
                     "K/V up-projected): q_a GEMM, RMSNorm, q_b GEMM; kv_a GEMM (latent + shared rope "
                     "key), RMSNorm, kv_b GEMM; rotate-half RoPE on the q and k rope parts; cat "
                     "nope|rope; SDPA causal; o GEMM (validation/count_ops.py MLALayer)",
            "shapes": {"q_lora_rank": MLA_Q_LORA, "kv_lora_rank": MLA_KV_LORA, "qk_nope_head_dim": MLA_NOPE,
                       "qk_rope_head_dim": MLA_ROPE, "v_head_dim": MLA_V},
            **attention_variant("mla", mla_dense, mla_grouped, dense, grouped),
        },
        "mla_no_q_lora": {
            "layer": "MLA with q_lora_rank 0 (DeepSeek-V2-Lite): q projected directly, no q norm",
            **attention_variant("mla_no_q_lora", mlanq_dense, mlanq_grouped, dense, grouped),
        },
        "detail": {"dense": dense, "moe_grouped_mm": grouped, "moe_grouped_mm_no_shared": grouped_noshared,
                   "moe_loop_E4": loop4, "moe_loop_E8": loop8, "mla_dense": mla_dense,
                   "mla_moe_grouped_mm": mla_grouped, "mla_no_q_lora_dense": mlanq_dense,
                   "mla_no_q_lora_moe_grouped_mm": mlanq_grouped},
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({k: data[k] for k in ("dense_layer", "moe_layer", "pre_sync")}
                     | {k: data[k]["extra_vs_gqa"] for k in ("mla", "mla_no_q_lora")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
