"""The real evaluator: memory model (moesim.compute), step model (moesim.step), routing, serving DES.

Nothing here re-derives a time or a byte count; it composes the models' outputs:
- memory: ``memory_footprint(kv_tokens=0)`` gives the weights and the KV bytes per token of the
  most loaded device; a batch of ``b`` sequences per device at context ``C`` adds
  ``b x tp x pp x C`` KV tokens (the footprint is linear in ``kv_tokens``), and fits when the total
  is within HBM (the memory model's own rule);
- decode: ``decode_iteration`` (or the vectorized ``decode_grid`` when the step package has it)
  at context ``C = prompt_len + output_len / 2`` (the mean KV length over a request's decode);
- prefill: ``prefill_iteration`` of one prompt per device, ``t_pf``;
- continuous batching (co-located prefill and decode): in one request lifetime a device runs
  ``output_len`` decode iterations and admits ``b`` new prompts, so
  cycle = output_len x t_dec + b x t_pf;  tokens/s per device = b x output_len / cycle;
  mean TPOT = cycle / output_len;  TTFT (no queueing) = t_pf + t_dec.
  The serving DES then checks the tails of the best candidates.
- drops: the routing engine's drop fraction at the candidate's capacity factor (the step model
  itself runs dropless, so a capacity factor changes the drop fraction, not the time: a
  conservative time).
Bottleneck (planner vocabulary): the step model's largest component, mapped to compute / HBM
(compute when model FLOPs at peak fill at least half the step, else HBM), scale-up / scale-out
(all-to-all, TP and DP collectives: scale-out when that group -- EP, TP or all devices -- spans
more than one domain), imbalance
(expert time with rank imbalance >= 1.3), memory capacity (less than 10% of HBM left).
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Sequence

from moesim import units
from moesim.catalog import load_profile
from moesim.errors import MoesimError
from moesim.planner.evaluation import Candidate, Evaluation, HardwareFacts, Verification
from moesim.planner.scenario import overlap_mode, scenario_model
from moesim.specs import Cluster

_COMM = {"all_to_all", "tp_cp_comm", "dp_comm"}


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@dataclass(frozen=True)
class _Layout:
    """What a candidate shares with the other batches and capacity factors of its layout."""

    hardware: str
    devices: int
    tp: int
    pp: int
    dp: int
    ep: int
    attention_layout: str
    redundant_experts: int

    @classmethod
    def of(cls, c: Candidate) -> "_Layout":
        return cls(c.hardware, c.devices, c.tp, c.pp, c.dp, c.ep, c.attention_layout, c.redundant_experts)


def bottleneck_name(bd, hw, c: Candidate, headroom_frac: float) -> str:
    """Map a StepBreakdown's largest component to the planner's vocabulary (module docstring)."""
    name = bd.bottleneck
    if headroom_frac < 0.10:
        return "memory capacity"
    if name in _COMM:
        group = {"all_to_all": c.ep, "tp_cp_comm": c.tp}.get(name, c.devices)
        return "scale-out" if group > hw.scale_up.domain_size else "scale-up"
    if name == "experts" and bd.expert_imbalance >= 1.3:
        return "imbalance"
    if name == "pipeline_bubble":
        return "latency"
    at_peak = bd.model_flops_per_step_per_device / bd.peak_flops if bd.peak_flops else 0.0
    return "compute" if at_peak >= 0.5 * bd.step_time_s else "HBM"


@dataclass(frozen=True)
class AnalyticEvaluator:
    """Step model + memory model for the sweep; serving DES for ``verify``."""

    name: str = "analytic step model"
    drop_samples: int = 8

    def hardware(self, name: str) -> HardwareFacts:
        p = load_profile(name)
        return HardwareFacts(p.name, p.price.usd_per_device_hour, p.scale_up.domain_size,
                             p.memory.hbm_GB * units.GB / units.GiB)

    def evaluate(self, candidates: Sequence[Candidate], scenario) -> list[Evaluation]:
        model = scenario_model(scenario)
        groups: dict[_Layout, list[int]] = {}
        for i, c in enumerate(candidates):
            groups.setdefault(_Layout.of(c), []).append(i)
        out: list[Evaluation | None] = [None] * len(candidates)
        for layout, idx in groups.items():
            fn = self._serving_layout if scenario.kind == "serving" else self._training_layout
            for i, ev in zip(idx, fn(layout, [candidates[i] for i in idx], scenario, model)):
                out[i] = ev
        return out

    # ---- serving ---------------------------------------------------------------------------
    def _serving_layout(self, lay: _Layout, cands: list[Candidate], scenario, model) -> list[Evaluation]:
        from moesim.compute.memory import memory_footprint
        from moesim.step import decode_iteration, prefill_iteration

        hw = load_profile(lay.hardware)
        w = scenario.workload
        par = cands[0].parallelism()
        cluster = Cluster(hardware=hw.name, devices=lay.devices)
        routing = scenario.routing.model_copy(update={"capacity_factor": None, "drift": 0.0})
        kw = dict(dtype=w.dtype, kv_dtype=w.kv_dtype, routing=routing, overlap=overlap_mode(scenario, model))
        base = memory_footprint(model, hw, par, mode="serve", weight_dtype=w.dtype, kv_dtype=w.kv_dtype)
        context = w.prompt_len + w.output_len // 2
        kv_seq = lay.tp * lay.pp * context * base.kv_bytes_per_token
        t_pf = None
        decode_cache: dict[int, object] = {}
        results = []
        for c in cands:
            total = base.total_bytes + c.batch * kv_seq
            headroom = (base.capacity_bytes - total) / units.GiB
            ev = Evaluation(candidate=c, memory_headroom_GiB=headroom)
            if total > base.capacity_bytes:
                results.append(ev.rejected("does_not_fit", f"short of memory by {-headroom:.1f} GiB per device "
                                           f"(weights {base.weight_bytes / units.GiB:.1f} GiB + KV of batch {c.batch})"))
                continue
            if t_pf is None:
                t_pf = prefill_iteration(model, hw, cluster, par, prompt_len=w.prompt_len, prompts_per_device=1,
                                         check_memory=False, **kw).step_time_s
            if c.batch not in decode_cache:
                decode_cache[c.batch] = decode_iteration(model, hw, cluster, par, batch_per_device=c.batch,
                                                         context=context, check_memory=False, **kw)
            bd = decode_cache[c.batch]
            cycle = w.output_len * bd.step_time_s + c.batch * t_pf
            per_dev = c.batch * w.output_len / cycle / lay.pp
            results.append(Evaluation(
                candidate=c, tokens_per_s=per_dev * lay.devices, step_time_s=bd.step_time_s,
                tpot_s=cycle / w.output_len, ttft_s=t_pf + bd.step_time_s, memory_headroom_GiB=headroom,
                bottleneck=bottleneck_name(bd, hw, c, headroom * units.GiB / base.capacity_bytes),
                drop_fraction=self._drops(model, c, hw, scenario), imbalance=bd.expert_imbalance,
            ))
        return results

    def _drops(self, model, c: Candidate, hw, scenario) -> float:
        if model.moe is None or c.capacity_factor is None:
            return 0.0
        tokens = c.batch * c.devices // c.pp
        r = scenario.routing
        return _drop_fraction(model.moe.num_experts, model.moe.top_k, max(tokens, 1), c.ep,
                              min(hw.scale_up.domain_size, c.ep), r.skew, c.capacity_factor, r.overflow,
                              c.redundant_experts, model.moe.n_groups, model.moe.topk_groups, self.drop_samples)

    # ---- training --------------------------------------------------------------------------
    def _training_layout(self, lay: _Layout, cands: list[Candidate], scenario, model) -> list[Evaluation]:
        from moesim.step import training_step

        hw = load_profile(lay.hardware)
        w = scenario.workload
        cluster = Cluster(hardware=hw.name, devices=lay.devices)
        routing = scenario.routing.model_copy(update={"capacity_factor": None, "drift": 0.0})
        results = []
        for c in cands:
            try:
                bd = training_step(model, hw, cluster, c.parallelism(), global_batch=w.global_batch,
                                   seq_len=w.seq_len, micro_batch=c.batch, dtype=w.dtype,
                                   recompute=w.recompute, routing=routing,
                                   distributed_optimizer=w.distributed_optimizer, check_memory=False)
            except MoesimError as err:
                results.append(Evaluation(candidate=c).rejected("invalid_layout", str(err)))
                continue
            headroom = bd.memory_capacity_GiB - bd.memory_GiB
            ev = Evaluation(candidate=c, memory_headroom_GiB=headroom)
            if not bd.memory_fits:
                results.append(ev.rejected("does_not_fit", f"short of memory by {-headroom:.1f} GiB per device"))
                continue
            results.append(Evaluation(
                candidate=c, tokens_per_s=bd.tokens_per_s_per_device * lay.devices, step_time_s=bd.step_time_s,
                memory_headroom_GiB=headroom, mfu=bd.mfu, imbalance=bd.expert_imbalance,
                bottleneck=bottleneck_name(bd, hw, c, headroom / bd.memory_capacity_GiB),
                drop_fraction=self._drops(model, c, hw, scenario),
            ))
        return results

    # ---- verification ----------------------------------------------------------------------
    def verify(self, evaluation: Evaluation, scenario) -> Verification | None:
        from moesim.planner.verify import verify_with_des

        return verify_with_des(evaluation, scenario, scenario_model(scenario))


@functools.lru_cache(maxsize=4096)
def _drop_fraction(E, k, tokens, ep, per_node, skew, cf, overflow, redundant, groups, topk_groups, samples) -> float:
    """Expected dropped share of token copies: the routing engine (analytic when it has one, else Monte Carlo)."""
    from moesim.routing.problem import build_problem

    problem = build_problem(E, k, tokens, ep=ep, ranks_per_node=per_node, skew=skew, capacity_factor=cf,
                            overflow=overflow, redundant_experts=redundant,
                            placement="load_aware" if redundant else "contiguous",
                            n_groups=groups, topk_groups=topk_groups)
    analytic = _optional("moesim.routing.analytic")
    if analytic is not None and hasattr(analytic, "run_analytic"):
        try:
            return float(analytic.run_analytic(problem).drop_fraction)
        except (TypeError, NotImplementedError, MoesimError):
            pass
    from moesim.routing.montecarlo import run_montecarlo

    return float(run_montecarlo(problem, samples=samples, seed=0).drop_fraction)
