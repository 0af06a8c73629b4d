"""Predictors for the ``gemm`` and ``grouped_gemm`` case kinds (docs/cases.md).

Registered in ``moesim.validate.PREDICTORS``; ``moesim calibrate`` fits ``GEMM_FIT_PARAMS`` of a
profile on ``gemm`` cases (h800-sxm: the DeepGEMM FP8 rows of published-calibration.json).
"""
from __future__ import annotations

from moesim.compute.gemm import gemm_time
from moesim.compute.grouped import grouped_gemm_time
from moesim.specs import HardwareProfile
from moesim.validate import UnsupportedCase

# Five physical parameters (hardware.py ComputeEfficiency): steady-state math fraction, HBM
# fraction, launch overhead, per-SM operand load bandwidth, per-k-step pipeline overhead.
GEMM_FIT_PARAMS: tuple[str, ...] = (
    "compute.gemm_compute_fraction",
    "compute.gemm_memory_fraction",
    "compute.kernel_overhead_us",
    "compute.gemm_sm_load_GBps",
    "compute.gemm_kstep_overhead_ns",
)
GROUPED_GEMM_FIT_PARAMS: tuple[str, ...] = GEMM_FIT_PARAMS


def gemm_fit_params(cases, profile: HardwareProfile) -> tuple[str, ...]:
    """The GEMM parameters ``cases`` can identify on ``profile``: all five when some row is not
    compute-bound at the profile's current values; only ``gemm_compute_fraction`` when every row
    is (large square-ish GEMMs such as AMD's max-achievable-FLOPs shapes: their time is the math
    rate alone, and the HBM fraction, launch overhead, per-SM load and k-step terms would be fitted
    to noise). A row the predictor refuses counts as neither."""
    bounds = set()
    for c in cases:
        try:
            bounds.add(str(_gemm_estimate(c.inputs, profile).bound))
        except (UnsupportedCase, KeyError):
            continue
    return GEMM_FIT_PARAMS[:1] if bounds == {"compute"} else GEMM_FIT_PARAMS


def _metric(inputs: dict) -> None:
    metric = inputs.get("metric", "time_s")
    if metric != "time_s":
        raise UnsupportedCase(f"metric {metric!r} not modelled for GEMMs (only time_s)")


def _gemm_estimate(inputs: dict, hw: HardwareProfile):
    """The GemmEstimate of a ``gemm`` case's inputs (the predictor and the fit-parameter rule)."""
    _metric(inputs)
    return gemm_time(hw, inputs["m"], inputs["n"], inputs["k"], inputs["dtype"], inputs.get("out_dtype"))


def predict_gemm_case(inputs: dict, hw: HardwareProfile) -> float:
    """Predicted kernel time (s) of a ``gemm`` case: inputs m, n, k, dtype (out_dtype optional)."""
    return _gemm_estimate(inputs, hw).time_s


def predict_grouped_gemm_case(inputs: dict, hw: HardwareProfile) -> float:
    """Predicted kernel time (s) of a ``grouped_gemm`` case.

    inputs: m_per_group (a list, or an int with ``groups``), n, k, dtype, layout (contiguous,
    masked or token_tiled; default contiguous), capacity (masked only; default the largest group).
    """
    _metric(inputs)
    m_per_group = inputs["m_per_group"]
    if isinstance(m_per_group, int):
        groups = inputs.get("groups")
        if groups is None:
            raise UnsupportedCase("m_per_group is an int but 'groups' is not given")
        m_per_group = [m_per_group] * int(groups)
    est = grouped_gemm_time(
        hw, m_per_group, inputs["n"], inputs["k"], inputs["dtype"],
        layout=inputs.get("layout") or "contiguous", capacity=inputs.get("capacity"),
        out_dtype=inputs.get("out_dtype"),
    )
    return est.time_s
