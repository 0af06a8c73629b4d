"""Count the operations one transformer layer issues from the host, forward and backward, and
write ``validation/data/op-counts.json`` (``python -m validation.count_ops``).

Why: an eager framework (PyTorch, Megatron) pays host time for every operator it dispatches
(Python, autograd bookkeeping, the dispatcher, the kernel launch). When the GPU work per operator
is small, the host, not the GPU, sets the pace. moesim's step model charges
``host_op_overhead_us`` per operator; the number of operators per layer is *measured* here, not
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


class OpCounter(TorchDispatchMode):
    """Counts aten calls by overload packet name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__.rstrip("_")] += 1
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

    def forward(self, x_TD):
        T, hd = x_TD.shape[0], HIDDEN // HEADS
        q, k, v = self.qkv(rms_norm(x_TD, self.n1)).split([HIDDEN, HIDDEN // 2, HIDDEN // 2], -1)
        q = q.view(T, HEADS, hd).transpose(0, 1)
        k = k.view(T, HEADS // 2, hd).transpose(0, 1).repeat_interleave(2, 0)
        v = v.view(T, HEADS // 2, hd).transpose(0, 1).repeat_interleave(2, 0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(T, HIDDEN)
        h = x_TD + self.o(a)
        return h + self.ffn(rms_norm(h, self.n2))


def count(ffn: torch.nn.Module) -> dict:
    """Forward and backward launches (and views) of one layer over TOKENS tokens."""
    torch.manual_seed(0)
    layer = Layer(ffn)
    x = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    with OpCounter() as fwd:
        y = layer(x)
    loss = y.float().pow(2).mean()
    with OpCounter() as bwd:
        loss.backward()
    return {"forward": fwd.launches(), "backward": bwd.launches(),
            "forward_views": fwd.views(), "backward_views": bwd.views(),
            "forward_ops": dict(sorted(fwd.ops.items())), "backward_ops": dict(sorted(bwd.ops.items()))}


def moe(experts: int, impl: str, shared: int = 1) -> dict:
    cfg = MoEConfig(hidden=HIDDEN, expert_ffn=FFN, num_experts=experts, top_k=2,
                    num_shared_experts=shared, shared_expert_ffn=FFN if shared else 0)
    return count(MoEBlock(cfg, impl=impl))


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or [str(OUT)])[0])
    dense = count(SwiGLU(HIDDEN, 4 * FFN))
    grouped = moe(8, "grouped_mm")
    grouped_noshared = moe(8, "grouped_mm", shared=0)
    loop4, loop8 = moe(4, "loop"), moe(8, "loop")
    # NOTE: with 2 x 64 = 128 copies over 4 or 8 experts every expert is non-empty (seed 0).
    slope = {p: (loop8[p] - loop4[p]) / 4 for p in ("forward", "backward")}
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
        "detail": {"dense": dense, "moe_grouped_mm": grouped, "moe_grouped_mm_no_shared": grouped_noshared,
                   "moe_loop_E4": loop4, "moe_loop_E8": loop8},
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({k: data[k] for k in ("dense_layer", "moe_layer")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
