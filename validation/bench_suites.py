"""Shape tables of validation/bench.py: a calibration set and a disjoint evaluation set per device.

Entries are keyed by (kind, dtype):
- gemm: (m, n, k)
- grouped_gemm: (tokens T, experts E, top-k K, k = input width, n = output width)
- moe_layer: (name, MoEConfig keyword dims, tokens T)
- all_to_all: (ranks R, tokens per rank T, hidden D, top-k K, experts E)  [CPU/gloo only]

CPU sets are sized for 2 cores in fp32 (largest GEMM ~4 GFLOP); both suites together take about
2-3 minutes on this host. GPU sets use DeepSeek-V3-, Mixtral- and Qwen3-like dims (one rank's
view: full expert count, all tokens local) and fit a ~5-minute budget on one H200.
``--quick`` shrinks every shape (and keeps the first two per entry) so the code paths run in
seconds on a CPU (tests).
"""
from __future__ import annotations

DSV3 = dict(hidden=7168, expert_ffn=2048, num_experts=256, top_k=8, num_shared_experts=1, shared_expert_ffn=2048,
            router_scoring="sigmoid", n_groups=8, topk_groups=4)
MIXTRAL = dict(hidden=4096, expert_ffn=14336, num_experts=8, top_k=2)
QWEN3 = dict(hidden=2048, expert_ffn=768, num_experts=128, top_k=8)
QWEN2 = dict(hidden=3584, expert_ffn=2560, num_experts=64, top_k=8, num_shared_experts=1, shared_expert_ffn=20480)
OLMOE = dict(hidden=2048, expert_ffn=1024, num_experts=64, top_k=8)

TABLES = {
    ("cpu", "calib"): {
        ("gemm", "fp32"): [(128, 512, 512), (256, 1024, 256), (512, 512, 1024), (1024, 1024, 512),
                           (64, 2048, 1024), (2048, 256, 768), (768, 768, 768), (1024, 2048, 1024)],
        ("grouped_gemm", "fp32"): [(512, 8, 2, 256, 512), (1024, 16, 2, 256, 256), (2048, 32, 4, 128, 256),
                                   (256, 8, 1, 512, 512)],
        ("moe_layer", "fp32"): [
            ("mixtral-like", dict(hidden=256, expert_ffn=512, num_experts=8, top_k=2), 512),
            ("deepseek-like", dict(hidden=128, expert_ffn=256, num_experts=32, top_k=4, num_shared_experts=1,
                                   shared_expert_ffn=256), 1024),
            ("switch-like", dict(hidden=192, expert_ffn=384, num_experts=16, top_k=1), 768),
        ],
        ("all_to_all", "fp32"): [(2, 512, 256, 2, 8), (4, 256, 128, 2, 16), (2, 2048, 512, 4, 16)],
    },
    ("cpu", "eval"): {
        ("gemm", "fp32"): [(192, 640, 384), (384, 1536, 640), (896, 448, 1280), (1536, 1152, 384),
                           (96, 3072, 768), (1280, 1280, 896)],
        ("grouped_gemm", "fp32"): [(768, 12, 2, 192, 384), (1536, 24, 3, 160, 320), (384, 6, 1, 384, 768)],
        ("moe_layer", "fp32"): [
            ("mixtral-like", dict(hidden=160, expert_ffn=320, num_experts=12, top_k=2), 640),
            ("qwen-like", dict(hidden=96, expert_ffn=192, num_experts=24, top_k=3, num_shared_experts=1,
                               shared_expert_ffn=192), 1536),
            ("switch-like", dict(hidden=224, expert_ffn=448, num_experts=6, top_k=1), 448),
        ],
        ("all_to_all", "fp32"): [(2, 768, 192, 2, 8), (3, 384, 320, 3, 12), (4, 1024, 256, 2, 8)],
    },
    ("gpu", "calib"): {
        ("gemm", "bf16"): [(4096, 7168, 2048), (2048, 2048, 7168), (8192, 4096, 14336), (1024, 14336, 4096),
                           (256, 7168, 2048), (16384, 4096, 4096)],
        ("gemm", "fp8"): [(4096, 7168, 2048), (8192, 4096, 14336), (1024, 14336, 4096)],
        ("grouped_gemm", "bf16"): [(4096, 256, 8, 7168, 2048), (4096, 256, 8, 2048, 7168),
                                   (8192, 8, 2, 4096, 14336)],
        ("moe_layer", "bf16"): [("deepseek-v3-dims", DSV3, 4096), ("mixtral-8x7b-dims", MIXTRAL, 8192)],
    },
    ("gpu", "eval"): {
        ("gemm", "bf16"): [(3072, 2048, 768), (6144, 768, 2048), (512, 3584, 2560), (12288, 2560, 3584)],
        ("gemm", "fp8"): [(3072, 2048, 768), (12288, 2560, 3584)],
        ("grouped_gemm", "bf16"): [(8192, 128, 8, 2048, 768), (8192, 128, 8, 768, 2048), (6144, 64, 8, 3584, 2560)],
        ("moe_layer", "bf16"): [("qwen3-30b-a3b-dims", QWEN3, 8192), ("olmoe-dims", OLMOE, 6144),
                                ("qwen2-57b-dims", QWEN2, 4096)],
    },
}

HARDWARE_BY_GPU = {"NVIDIA H200": "h200-sxm", "NVIDIA H100 80GB HBM3": "h100-sxm", "NVIDIA B200": "b200"}


def default_hardware(device: str) -> str:
    """Profile name for the case files: cpu-host on CPU; a known GPU name, else 'gpu-unknown'."""
    if device == "cpu":
        return "cpu-host"
    import torch
    return HARDWARE_BY_GPU.get(torch.cuda.get_device_name(0), "gpu-unknown")


def _shrink(kind, spec, f=64):
    small = lambda v: max(16, v // f)  # noqa: E731
    if kind == "gemm":
        return tuple(max(16, v // 16) for v in spec)
    if kind == "grouped_gemm":
        T, E, K, k, n = spec
        return (max(64, T // f), min(E, 16), min(K, 4), small(k), small(n))
    if kind == "moe_layer":
        name, dims, T = spec
        dims = dict(dims, hidden=small(dims["hidden"]), expert_ffn=small(dims["expert_ffn"]),
                    num_experts=min(dims["num_experts"], 16), top_k=min(dims["top_k"], 4))
        if dims.get("shared_expert_ffn"):
            dims["shared_expert_ffn"] = small(dims["shared_expert_ffn"])
        return (name, dims, max(64, T // f))
    R, T, D, K, E = spec
    return (2, 32, 16, K, E)


def table(profile: str, suite: str, quick: bool = False) -> dict:
    """The (kind, dtype) -> specs table of one profile and suite; ``quick`` shrinks it."""
    full = TABLES[(profile, suite)]
    if not quick:
        return full
    keep = {"all_to_all": 1, "moe_layer": 1}
    shrunk = {key: [_shrink(key[0], s) for s in specs[: keep.get(key[0], 2)]] for key, specs in full.items()}
    return {key: [s for i, s in enumerate(specs) if s not in specs[:i]] for key, specs in shrunk.items()}


def description(profile: str, suite: str, quick: bool, hardware: str, rounds: int = 1, reps: int = 1) -> str:
    role = {"calib": "calibration set (fit a profile on it)",
            "eval": "evaluation set (judge a profile fitted on the calibration set; shapes disjoint from it)"}[suite]
    text = (f"validation/bench.py {profile} {suite}: {role} on {hardware}. GEMM, grouped GEMM (real per-expert "
            "counts from a random router), MoE block forward and forward+backward")
    if profile == "cpu":
        text += (", gloo all-to-all between 2-4 local processes (1 torch thread each). fp32. The host has 2 cores "
                 f"shared with other jobs, so every case is the median of {rounds} x {reps} samples taken in {rounds} "
                 "rounds that alternate calib and eval entries (spread in the notes; a sample of a short call "
                 "averages back-to-back calls). Compute cases run on ONE torch thread "
                 "(inputs.cpu_threads): with 2 threads on this busy host OpenMP barriers stall behind other jobs "
                 "(a 128x512x512 GEMM measured 1.7-42 GFLOP/s with 2 threads vs 90 with 1).")
    else:
        text += " (bf16; fp8 GEMM via torch._scaled_mm). CUDA-event timing, medians."
    return text + (" QUICK MODE: tiny shapes, for tests only." if quick else "")
