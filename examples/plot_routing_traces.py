"""Plot recorded routing traces: one PNG per setting (expert-load histogram, imbalance over steps).

    python examples/plot_routing_traces.py validation/data/traces OUT_DIR

Reads every ``*.npz`` written by validation/train_router.py (format in
validation/data/traces/README.md). Left panel: share of routed copies per expert over the last
quarter of training, experts sorted by load, one line per layer (uniform = 1/E dashed). Right
panel: imbalance = max / mean expert load per step and layer (1 = perfectly balanced).
Then prints a markdown table, one row per setting, over the last quarter of training: final
loss, mean imbalance (max/mean, averaged over layers) and the drop fraction a capacity factor
would cause: drops = sum_e max(0, c_e - C) / sum_e c_e with C = ceil(cf x T x K / E)
(the ``drop`` policy of validation/torch_router.py applied to the recorded per-step counts).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def imbalance_SL(counts_SLE: np.ndarray) -> np.ndarray:
    """max / mean expert load per step and layer (float64, S x L)."""
    c = counts_SLE.astype(np.float64)
    return c.max(axis=-1) / np.maximum(c.mean(axis=-1), 1e-12)


def drop_fraction_SL(counts_SLE: np.ndarray, capacity_factor: float) -> np.ndarray:
    """Fraction of routed copies over capacity C = ceil(cf x copies / E) per step and layer."""
    c = counts_SLE.astype(np.float64)
    copies_SL = c.sum(axis=-1)
    cap_SL = np.ceil(capacity_factor * copies_SL / c.shape[-1])
    return np.maximum(c - cap_SL[..., None], 0.0).sum(axis=-1) / copies_SL


def summary_row(path: Path) -> str:
    """Markdown row: setting, final-quarter loss, imbalance, drops at cf 1.0 / 1.25 / 1.5."""
    with np.load(path, allow_pickle=False) as z:
        counts_SLE, loss_S = z["counts_SLE"], z["loss_S"]
    S = counts_SLE.shape[0]
    tail = slice(S - max(1, S // 4), S)
    imb = imbalance_SL(counts_SLE)[tail].mean()
    drops = [100 * drop_fraction_SL(counts_SLE[tail], cf).mean() for cf in (1.0, 1.25, 1.5)]
    return f"| {path.stem} | {loss_S[tail].mean():.3f} | {imb:.2f} | " + " | ".join(f"{d:.1f}%" for d in drops) + " |"


def plot_trace(path: Path, out_dir: Path) -> tuple[Path, list[float]]:
    """Write ``<out_dir>/<trace name>.png``; return it and the final-quarter imbalance per layer."""
    with np.load(path, allow_pickle=False) as z:
        counts_SLE = z["counts_SLE"]
        meta = json.loads(str(z["meta"]))
    S, L, E = counts_SLE.shape
    tail = counts_SLE[S - max(1, S // 4):]
    imb_SL = imbalance_SL(counts_SLE)
    fig, (ax_hist, ax_imb) = plt.subplots(1, 2, figsize=(11, 4))
    for layer in range(L):
        share_E = tail[:, layer].sum(0) / tail[:, layer].sum()
        ax_hist.plot(np.arange(E), np.sort(share_E)[::-1], marker=".", label=f"layer {layer}")
        ax_imb.plot(np.arange(S), imb_SL[:, layer], lw=0.8, label=f"layer {layer}")
    ax_hist.axhline(1.0 / E, color="k", ls="--", lw=0.8, label="uniform")
    ax_hist.set(xlabel="expert (sorted by load)", ylabel="share of routed copies",
                title=f"expert load, last {len(tail)} of {S} steps")
    ax_imb.set(xlabel="training step", ylabel="max / mean expert load", title="imbalance over training")
    ax_hist.legend(fontsize=8)
    ax_imb.legend(fontsize=8)
    fig.suptitle(meta.get("name", path.stem))
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{path.stem}.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out, [round(float(v), 3) for v in imb_SL[S - max(1, S // 4):].mean(axis=0)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    traces, out_dir = Path(argv[0]), Path(argv[1])
    paths = sorted(traces.glob("*.npz"))
    if not paths:
        print(f"no *.npz traces in {traces}", file=sys.stderr)
        return 2
    for path in paths:
        out, final = plot_trace(path, out_dir)
        print(f"{path.stem}: final-quarter imbalance per layer {final} -> {out}")
    print("\n| setting | loss (nats/byte) | imbalance max/mean | drops cf 1.0 | cf 1.25 | cf 1.5 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in paths:
        print(summary_row(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
