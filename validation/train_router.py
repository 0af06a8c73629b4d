"""Train a small MoE language model on CPU and record its routing (issue 10 traces).

Text: the Python standard library's own ``*.py`` files (``sysconfig.get_paths()['stdlib']``),
sorted by relative path and concatenated as UTF-8 bytes (byte-level tokens, vocab 256), so
every machine with the same Python has the same corpus offline. Batches are random windows
drawn with a seeded generator.

Model: byte embedding -> L x [RMSNorm -> causal multi-head attention -> +residual,
RMSNorm -> MoEBlock (validation/torch_moe.py, dropless) -> +residual] -> RMSNorm -> LM head.
Loss = cross-entropy + sum over layers of (aux_coef x Switch aux + z_coef x router z-loss).

One command runs the sweep (aux {0, 1e-3, 1e-2} x z-loss {off, on} x noise {off, on} = 12
settings): ``python -m validation.train_router --sweep --out validation/data/traces``;
``--quick`` runs a tiny version (tests). The trace format is in validation/data/traces/README.md.

Legend: S steps, C steps with recorded choices, L MoE layers, E experts, T sampled tokens, K top-k.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from validation.torch_moe import MoEBlock, MoEConfig

TRACE_FORMAT = "moesim.routing-trace"  # moesim/routing/trace.py reads counts_SE (layer 0) from it


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the sweep's setting (see README in the traces folder)."""

    num_layers: int = 3
    hidden: int = 64
    heads: int = 4
    expert_ffn: int = 128
    num_experts: int = 32
    top_k: int = 2
    num_shared_experts: int = 0
    shared_expert_ffn: int = 0
    seq_len: int = 128
    batch: int = 16
    steps: int = 500
    lr: float = 3e-3
    aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    router_noise_std: float = 0.0
    sample_tokens: int = 256
    choice_every: int = 4
    corpus_bytes: int = 4_000_000
    seed: int = 0
    threads: int = 1

    @property
    def name(self) -> str:
        z = "z1" if self.z_loss_coef > 0 else "z0"
        noise = "noise1" if self.router_noise_std > 0 else "noise0"
        return f"e{self.num_experts}k{self.top_k}_aux{self.aux_loss_coef:g}_{z}_{noise}"


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """The stdlib's .py files (site-packages excluded), sorted by path relative to the stdlib root."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = (p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    return tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


def load_corpus(max_bytes: int) -> np.ndarray:
    """Bytes of the stdlib's .py files in sorted relative-path order (uint8, first max_bytes)."""
    chunks, total = [], 0
    for path in stdlib_files():
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Layer(torch.nn.Module):
    """Pre-norm attention + MoE layer."""

    def __init__(self, cfg: TrainConfig, moe_cfg: MoEConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1, self.norm2 = RMSNorm(cfg.hidden), RMSNorm(cfg.hidden)
        self.qkv = torch.nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=False)
        self.out = torch.nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.moe = MoEBlock(moe_cfg, impl="grouped")

    def forward(self, x_BSD):
        B, S, D = x_BSD.shape
        q, k, v = self.qkv(self.norm1(x_BSD)).view(B, S, 3, self.heads, D // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x_BSD = x_BSD + self.out(att.transpose(1, 2).reshape(B, S, D))
        h_TD = self.norm2(x_BSD).reshape(B * S, D)
        return x_BSD + self.moe(h_TD).view(B, S, D)


class TinyMoELM(torch.nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        torch.manual_seed(cfg.seed)
        self.embed = torch.nn.Embedding(256, cfg.hidden)
        self.layers = torch.nn.ModuleList(
            Layer(cfg, moe_config(cfg, layer)) for layer in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden)
        self.head = torch.nn.Linear(cfg.hidden, 256, bias=False)

    def forward(self, tokens_BS):
        x = self.embed(tokens_BS)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def moe_config(cfg: TrainConfig, layer: int) -> MoEConfig:
    return MoEConfig(
        hidden=cfg.hidden, expert_ffn=cfg.expert_ffn, num_experts=cfg.num_experts, top_k=cfg.top_k,
        num_shared_experts=cfg.num_shared_experts, shared_expert_ffn=cfg.shared_expert_ffn,
        router_noise_std=cfg.router_noise_std, aux_loss_coef=cfg.aux_loss_coef,
        z_loss_coef=cfg.z_loss_coef, seed=cfg.seed * 1000 + layer,
    )


def train(cfg: TrainConfig, corpus: np.ndarray, out_dir: Path | None = None, log=print) -> dict:
    """Train one setting; return the trace arrays (and write ``<out_dir>/<name>.npz``)."""
    return train_model(cfg, corpus, out_dir, log)[1]


def train_model(cfg: TrainConfig, corpus: np.ndarray, out_dir: Path | None = None,
                log=print) -> tuple[TinyMoELM, dict]:
    """Train one setting; return the trained model and the trace arrays (see :func:`train`)."""
    torch.set_num_threads(cfg.threads)
    model = TinyMoELM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    T = cfg.batch * cfg.seq_len
    sample_T = np.linspace(0, T - 1, min(cfg.sample_tokens, T)).astype(np.int64)
    L, E, K, S = cfg.num_layers, cfg.num_experts, cfg.top_k, cfg.steps
    counts_SLE = np.zeros((S, L, E), np.int32)
    choice_steps_C = np.arange(0, S, cfg.choice_every, dtype=np.int32)
    choices_CLTK = np.zeros((len(choice_steps_C), L, len(sample_T), K), np.int16)
    loss_S, aux_SL, z_SL = np.zeros(S, np.float32), np.zeros((S, L), np.float32), np.zeros((S, L), np.float32)
    t0 = time.perf_counter()
    for step in range(S):
        starts = rng.integers(0, len(corpus) - cfg.seq_len - 1, cfg.batch)
        window = np.stack([corpus[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64)
        tok = torch.from_numpy(window)
        logits = model(tok[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, 256), tok[:, 1:].reshape(-1))
        reg = sum(layer.moe.aux_losses() for layer in model.layers)
        opt.zero_grad(set_to_none=True)
        (ce + reg).backward()
        opt.step()
        loss_S[step] = float(ce.detach())
        for li, layer in enumerate(model.layers):
            rec, routing = layer.moe.last, layer.moe.last_routing
            counts_SLE[step, li] = rec.demand_E.numpy()
            if step % cfg.choice_every == 0:
                choices_CLTK[step // cfg.choice_every, li] = rec.topk_ids_TK.numpy()[sample_T]
            aux_SL[step, li], z_SL[step, li] = float(routing.aux_loss.detach()), float(routing.z_loss.detach())
        if log and (step % 50 == 0 or step == S - 1):
            imb = counts_SLE[step].max(-1) / counts_SLE[step].mean(-1)
            log(f"{cfg.name} step {step} ce {loss_S[step]:.3f} imbalance {np.round(imb, 2).tolist()}"
                f" {time.perf_counter() - t0:.0f}s")
    meta = {
        "name": cfg.name, "config": asdict(cfg),
        "tokens_per_step": T, "sampled_token_positions": "np.linspace(0, T-1, sample_tokens) of the flattened batch",
        "counts": "demand before capacity (training is dropless)",
        "corpus": f"python {sys.version.split()[0]} stdlib *.py, sorted by relative path, first {len(corpus)} bytes",
        "torch": torch.__version__, "train_seconds": round(time.perf_counter() - t0, 1),
        "router": "softmax top-k, norm_topk_prob, noise = fixed-std Gaussian on logits in training",
    }
    source = f"validation/train_router.py {cfg.name} (stdlib bytes, torch {torch.__version__}, CPU)"
    trace = {"format": np.array(TRACE_FORMAT), "version": np.array(1), "num_experts": np.array(E),
             "top_k": np.array(K), "counts_SE": counts_SLE[:, 0].astype(np.int64), "layer": np.array(0),
             "source": np.array(source), "counts_SLE": counts_SLE, "choices_CLTK": choices_CLTK,
             "choice_steps_C": choice_steps_C, "steps_S": np.arange(S, dtype=np.int32),
             "loss_S": loss_S, "aux_loss_SL": aux_SL, "z_loss_SL": z_SL, "meta": np.array(json.dumps(meta))}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out_dir / f"{cfg.name}.npz", **trace)
    return model, trace


def sweep_configs(base: TrainConfig, noise_std: float = 0.5, z_coef: float = 1e-3) -> list[TrainConfig]:
    """aux {0, 1e-3, 1e-2} x z-loss {off, on} x noise {off, on} on one base setting."""
    return [
        replace(base, aux_loss_coef=a, z_loss_coef=z, router_noise_std=n)
        for a, z, n in itertools.product((0.0, 1e-3, 1e-2), (0.0, z_coef), (0.0, noise_std))
    ]


QUICK = TrainConfig(num_layers=2, hidden=32, heads=2, expert_ffn=32, num_experts=8, top_k=2,
                    seq_len=32, batch=4, steps=6, sample_tokens=32, choice_every=2, corpus_bytes=200_000, threads=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validation.train_router", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("validation/data/traces"))
    p.add_argument("--sweep", action="store_true", help="run all 12 settings (default: one, aux 1e-2)")
    p.add_argument("--quick", action="store_true", help="tiny dims and 6 steps (test suite)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--experts", type=int, default=None, help="override the number of experts")
    p.add_argument("--top-k", type=int, default=None, help="override top-k")
    p.add_argument("--only", default=None, help="run only settings whose name contains this")
    p.add_argument("--shard", default=None, help="i/n: run settings i, i+n, ... (parallel processes)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else TrainConfig()
    overrides = {"steps": args.steps, "num_experts": args.experts, "top_k": args.top_k}
    base = replace(base, **{k: v for k, v in overrides.items() if v})
    configs = sweep_configs(base) if args.sweep else [replace(base, aux_loss_coef=1e-2)]
    if args.only:
        configs = [c for c in configs if args.only in c.name]
    if args.shard:
        i, n = map(int, args.shard.split("/"))
        configs = configs[i::n]
    corpus = load_corpus(base.corpus_bytes)
    for cfg in configs:
        train(cfg, corpus, args.out, log=None if args.quick else print)
    print(f"wrote {len(configs)} trace(s) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
