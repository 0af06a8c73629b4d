"""Measure the quality cost of routing decisions on the small MoE LM trained here (CPU).

For each training setting (stabilizers: aux loss, z-loss, router noise; validation/train_router.py)
one model is trained dropless, then evaluated on held-out text with the router changed at
inference only:

- capacity factor {0.5, 0.75, 1.0, 1.25, 1.5, 2.0} x overflow {drop, reroute, shared} and dropless;
- top-k reduced at inference (k' = 1 .. K-1; gate weights renormalised over the k' kept, as
  the router does) dropless and at capacity factor 1.0 / 1.25 with drops.

Beside each held-out loss (cross-entropy, nats per byte, and perplexity) it records what a
routing engine would report: the fractions of the T x k' routed copies dropped, rerouted and
served by the shared expert, the imbalance (max / mean expert demand before capacity), and the
dropped gate-weight mass, each averaged over layers and eval batches. Every setting of one model
is evaluated on the same held-out batches, so loss differences are paired; their standard error
over batches is recorded too.

Held-out text: windows of ``seq_len + 1`` bytes evenly spaced over the 8 MB of the stdlib corpus
after the training slice (so they come from many files none of which was trained on), ``batch``
windows per forward (capacity is computed per forward of ``batch x seq_len`` tokens, as in
training).

Run: ``python -m validation.quality_sweep --out validation/data/quality-cpu-tinymoe.json``
(``--quick``: tiny dims, a few steps, for the test suite). Legend: T tokens, K top-k, E experts,
L MoE layers, B eval batches.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from validation.train_router import TinyMoELM, TrainConfig, load_corpus, train_model

FORMAT = "moesim.quality-measurements"
CAPACITY_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
POLICIES = ("drop", "reroute", "shared")
TOPK_CAPACITY_FACTORS = (None, 1.0, 1.25)


@dataclass(frozen=True)
class EvalSetting:
    """One inference-time router setting: top-k, capacity factor (None = dropless), overflow."""

    top_k: int
    capacity_factor: float | None
    overflow: str

    @property
    def key(self) -> str:
        cf = "dropless" if self.capacity_factor is None else f"cf{self.capacity_factor:g}"
        return f"k{self.top_k}_{cf}_{self.overflow}"


def eval_settings(top_k: int) -> list[EvalSetting]:
    """The grid of the module docstring (dropless at full k first: the reference)."""
    grid = [EvalSetting(top_k, None, "drop")]
    grid += [EvalSetting(top_k, cf, pol) for cf in CAPACITY_FACTORS for pol in POLICIES]
    grid += [EvalSetting(k, cf, "drop") for k in range(top_k - 1, 0, -1) for cf in TOPK_CAPACITY_FACTORS]
    return grid


HELDOUT_SPAN_BYTES = 8_000_000


def heldout_batches(corpus: np.ndarray, cfg: TrainConfig, num_batches: int,
                    span: int = HELDOUT_SPAN_BYTES) -> list[torch.Tensor]:
    """``num_batches x cfg.batch`` windows of ``seq_len + 1`` bytes, evenly spaced over the
    ``span`` bytes after the training slice (many files, none seen in training)."""
    window = cfg.seq_len + 1
    n = num_batches * cfg.batch
    text = corpus[cfg.corpus_bytes:cfg.corpus_bytes + span]
    if len(text) < n * window:
        raise ValueError(f"held-out text: need {n * window} bytes after the training slice, have {len(text)}")
    starts = np.linspace(0, len(text) - window, n).astype(np.int64)
    windows = np.stack([text[s:s + window] for s in starts]).astype(np.int64)
    return [torch.from_numpy(w) for w in windows.reshape(num_batches, cfg.batch, window)]


def _set_router(model: TinyMoELM, setting: EvalSetting) -> None:
    for layer in model.layers:
        cfg = replace(layer.moe.cfg, top_k=setting.top_k, capacity_factor=setting.capacity_factor,
                      overflow=setting.overflow)
        layer.moe.cfg = cfg
        layer.moe.router.cfg = cfg


@torch.no_grad()
def evaluate(model: TinyMoELM, batches: list[torch.Tensor], setting: EvalSetting) -> dict:
    """Held-out loss and routing fractions of one setting (router restored afterwards)."""
    saved = [layer.moe.cfg for layer in model.layers]
    _set_router(model, setting)
    model.eval()
    loss_B, drop, rer, bak, imb, wdrop = [], [], [], [], [], []
    try:
        for tok in batches:
            logits = model(tok[:, :-1])
            loss_B.append(float(F.cross_entropy(logits.reshape(-1, 256), tok[:, 1:].reshape(-1))))
            for layer in model.layers:
                r = layer.moe.last_routing
                copies = r.expert_TK.numel()
                drop.append(r.dropped / copies)
                rer.append(r.rerouted / copies)
                bak.append(r.backed_up / copies)
                demand = r.demand_E.double()
                imb.append(float(demand.max() / demand.mean()))
                wdrop.append(_unserved_weight_share(r))
    finally:
        for layer, cfg in zip(model.layers, saved):
            layer.moe.cfg = cfg
            layer.moe.router.cfg = cfg
    loss = float(np.mean(loss_B))
    return {
        "key": setting.key, "top_k": setting.top_k, "capacity_factor": setting.capacity_factor,
        "overflow": setting.overflow, "loss": loss, "perplexity": float(np.exp(loss)),
        "loss_per_batch": [round(x, 6) for x in loss_B],
        "drop_fraction": float(np.mean(drop)), "reroute_fraction": float(np.mean(rer)),
        "backup_fraction": float(np.mean(bak)), "imbalance": float(np.mean(imb)),
        "unserved_weight_fraction": float(np.mean(wdrop)),
    }


def _unserved_weight_share(r) -> float:
    """Share of the routed gate weight (normalised top-k weights sum to 1 per token) that no
    expert serves: dropped copies' weight (a rerouted copy counts with its new gate weight, a
    shared-expert backup with its own)."""
    backup = 0.0 if r.backup_weight_T is None else float(r.backup_weight_T.sum())
    served = float(r.weight_TK.sum()) + backup
    return max(0.0, 1.0 - served / r.topk_ids_TK.shape[0])


def add_deltas(rows: list[dict]) -> list[dict]:
    """Loss increase over the dropless full-k reference, with its paired standard error."""
    ref_B = np.asarray(rows[0]["loss_per_batch"])
    out = []
    for row in rows:
        d_B = np.asarray(row["loss_per_batch"]) - ref_B
        se = float(d_B.std(ddof=1) / np.sqrt(d_B.size)) if d_B.size > 1 else 0.0
        out.append({**row, "loss_increase": float(d_B.mean()), "loss_increase_se": se})
    return out


def stabilizer_configs(base: TrainConfig, noise_std: float = 0.5, z_coef: float = 1e-3) -> dict[str, TrainConfig]:
    """Training settings: the base (aux 1e-2) and one change of stabilizer each."""
    return {
        "aux0.01": base,
        "aux0": replace(base, aux_loss_coef=0.0),
        "aux0.001": replace(base, aux_loss_coef=1e-3),
        "aux0.01_z": replace(base, z_loss_coef=z_coef),
        "aux0.01_noise": replace(base, router_noise_std=noise_std),
    }


BASE = TrainConfig(num_layers=4, hidden=96, heads=4, expert_ffn=192, num_experts=32, top_k=4,
                   num_shared_experts=1, shared_expert_ffn=192, seq_len=128, batch=16, steps=600,
                   aux_loss_coef=1e-2, corpus_bytes=4_000_000, threads=1)
QUICK = TrainConfig(num_layers=2, hidden=32, heads=2, expert_ffn=32, num_experts=8, top_k=2,
                    num_shared_experts=1, shared_expert_ffn=32, seq_len=32, batch=4, steps=4,
                    aux_loss_coef=1e-2, corpus_bytes=100_000, threads=1)


def run_setting(name: str, cfg: TrainConfig, corpus: np.ndarray, eval_batches: int, log=print) -> dict:
    t0 = time.perf_counter()
    model, trace = train_model(cfg, corpus[:cfg.corpus_bytes], None, log=log)
    train_s = time.perf_counter() - t0
    batches = heldout_batches(corpus, cfg, eval_batches)
    rows = add_deltas([evaluate(model, batches, s) for s in eval_settings(cfg.top_k)])
    if log:
        log(f"{name}: trained {train_s:.0f}s, evaluated {time.perf_counter() - t0 - train_s:.0f}s,"
            f" dropless loss {rows[0]['loss']:.4f}")
    return {
        "name": name, "config": asdict(cfg), "train_seconds": round(train_s, 1),
        "final_train_loss": float(np.mean(trace["loss_S"][-20:])),
        "eval_tokens": eval_batches * cfg.batch * cfg.seq_len, "results": rows,
    }


def _param_count(cfg: TrainConfig) -> int:
    """Parameters of the trained LM (for the limits text)."""
    return sum(p.numel() for p in TinyMoELM(cfg).parameters())


def export_table(doc: dict) -> dict:
    """The compact table moesim.quality ships (moesim/quality/data/): one point per model x setting."""
    points, configs = [], []
    for st in doc["settings"]:
        cfg = st["config"]
        configs.append(cfg)
        dropless = st["results"][0]["loss"]
        for r in st["results"]:
            points.append({
                "setting": st["name"], "trained_top_k": cfg["top_k"], "top_k": r["top_k"],
                "capacity_factor": r["capacity_factor"], "overflow": r["overflow"],
                "drop_fraction": round(r["drop_fraction"], 6), "reroute_fraction": round(r["reroute_fraction"], 6),
                "backup_fraction": round(r["backup_fraction"], 6), "imbalance": round(r["imbalance"], 4),
                "loss_increase": round(r["loss_increase"], 6), "loss_increase_se": round(r["loss_increase_se"], 6),
                "dropless_loss": round(dropless, 6),
            })
    c = configs[0]
    model = (f"byte-level MoE LM: {c['num_layers']} layers, hidden {c['hidden']}, {c['num_experts']} routed SwiGLU "
             f"experts (ffn {c['expert_ffn']}) top-{c['top_k']} + {c['num_shared_experts']} shared expert "
             f"(ffn {c['shared_expert_ffn']}), {_param_count(TrainConfig(**c)):,} parameters, trained dropless "
             f"{c['steps']} steps x {c['batch'] * c['seq_len']} tokens on CPU (fp32)")
    return {
        "format": "moesim.quality-table", "version": 1,
        "source": f"{doc['script']} {' '.join(doc['argv'])} (torch {doc['torch']}, {doc['corpus']})",
        "model": model,
        "limits": ("a small byte-level model is a proxy: the loss increases are nats per byte of a "
                   f"{model.split(':')[0]} with ~{_param_count(TrainConfig(**c)) / 1e6:.1f}M parameters, "
                   "measured with capacity changed at inference only; they say which routing settings cost "
                   "quality and roughly how they compare, not the loss change of a production model"),
        "points": points,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m validation.quality_sweep", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="measurement file to write (JSON)")
    p.add_argument("--quick", action="store_true", help="tiny dims, 4 steps (test suite)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eval-batches", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated setting names")
    p.add_argument("--table", type=Path, default=None,
                   help="also write the compact table moesim.quality reads (moesim/quality/data/...)")
    p.add_argument("--table-from", type=Path, default=None,
                   help="only write --table from an existing measurement file (no training)")
    args = p.parse_args(argv)
    if args.table_from is not None:
        if args.table is None:
            p.error("--table-from needs --table")
        return _write_table(json.loads(args.table_from.read_text()), args.table)
    if args.out is None:
        p.error("--out is required")
    base = QUICK if args.quick else BASE
    if args.steps:
        base = replace(base, steps=args.steps)
    eval_batches = args.eval_batches or (2 if args.quick else 20)
    configs = stabilizer_configs(base)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    torch.set_num_threads(base.threads)
    corpus = load_corpus(base.corpus_bytes + HELDOUT_SPAN_BYTES)
    log = None if args.quick else (lambda m: print(m, flush=True))
    doc = {
        "format": FORMAT, "version": 1,
        "script": "validation/quality_sweep.py", "argv": list(argv if argv is not None else sys.argv[1:]),
        "corpus": f"python {sys.version.split()[0]} stdlib *.py sorted by relative path; training bytes "
                  f"[0, {base.corpus_bytes}), held-out windows evenly spaced over the next {HELDOUT_SPAN_BYTES} bytes",
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "dtype": "float32", "threads": base.threads,
        "reference": "loss_increase = held-out loss of the setting - dropless loss at the trained top-k, "
                     "same batches (paired); loss in nats per byte",
        "capacity": "C = ceil(cf x T x k' / E) copies per expert per forward of T = batch x seq_len tokens",
        "settings": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        doc["settings"].append(run_setting(name, cfg, corpus, eval_batches, log))
        args.out.write_text(json.dumps(doc, indent=1) + "\n")  # partial results survive an interrupt
    print(f"wrote {len(doc['settings'])} setting(s) to {args.out}")
    return _write_table(doc, args.table) if args.table else 0


def _write_table(doc: dict, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export_table(doc), indent=1) + "\n")
    print(f"wrote the quality table to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
