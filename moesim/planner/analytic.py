"""The real evaluator: memory model (moesim.compute), step model (moesim.step), routing, serving DES.

Nothing here re-derives a time or a byte count; it composes the models' outputs:
- memory: ``memory_footprint(kv_tokens=0)`` gives the weights and the KV bytes per token of the
  most loaded device; a batch of ``b`` sequences per device at context ``C`` adds
  ``b x tp x pp x C`` KV tokens (the footprint is linear in ``kv_tokens``), and fits when the total
  is within HBM (the memory model's own rule);
- decode: ``decode_iteration``'s numbers at context ``C = prompt_len + output_len / 2`` (the mean
  KV length over a request's decode), once per (hardware, layout, batch), memoized in the process
  (:class:`_StepCosts`). All batches of a layout are priced in one call of
  ``moesim.step.vectorized.LayoutIterations`` (layout checked and ``LayerSetup`` built once, one
  layer-model call per layer kind and batch, the schedule on arrays; equal to the scalar calls to
  rounding, tests/test_planner_layout_iterations.py). What remains per (layout, batch) is the
  layer model itself (routing max-load, GEMM and all-to-all models: ~1 ms per layer kind and token
  count), which is not affine in the batch (tile quantization, low-latency vs normal all-to-all,
  the max over ranks), so it is called at every batch rather than interpolated;
- prefill and continuous batching (co-located): the serving system of
  :mod:`moesim.planner.serving_policy`, the one the serving DES simulates: a per-rank token
  budget, prompts batched into a mixed iteration once every K iterations (K chosen to meet the
  TPOT limit), mixed iterations priced by the DES's own ``GridCost`` (so an eager prefill's host
  time and the decode attention of the co-scheduled sequences are in it); then
  TPOT = (T_mix + (K - 1) t_dec) / K, TTFT at the SLO percentile q = q x period + T_mix,
  tokens/s per replica = sequences / TPOT. The serving DES then checks the tails of the best
  candidates.
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
from dataclasses import dataclass
from typing import Sequence

from moesim import units
from moesim.catalog import load_profile
from moesim.errors import MoesimError
from moesim.planner import serving_policy
from moesim.planner.evaluation import Candidate, Evaluation, HardwareFacts, Verification
from moesim.planner.scenario import overlap_mode, scenario_model
from moesim.specs import Cluster
from moesim.specs.serving_features import inflight_context_tokens

_COMM = {"all_to_all", "tp_cp_comm", "dp_comm"}


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
        from moesim.prices import entry_from_profile

        return HardwareFacts(p.name, p.price.usd_per_device_hour, p.scale_up.domain_size,
                             p.memory.hbm_GB * units.GB / units.GiB, price=entry_from_profile(p))

    @staticmethod
    def chunk_key(c: Candidate) -> int:
        """Sweep chunks keep one EP size together: the routing statistics the step model asks for
        (per EP size x tokens) are then computed once, in one worker."""
        return c.ep

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

    # ---- serving ----------------------------------------------------------------------------
    def _serving_layout(self, lay: _Layout, cands: list[Candidate], scenario, model) -> list[Evaluation]:
        from moesim.compute.memory import memory_footprint

        hw = load_profile(lay.hardware)
        w = scenario.workload
        par = cands[0].parallelism()
        base = memory_footprint(model, hw, par, mode="serve", weight_dtype=w.dtype, kv_dtype=w.kv_dtype)
        context = inflight_context_tokens(w)  # P + L // 2 for fixed lengths
        kv_seq = lay.tp * lay.pp * context * base.kv_bytes_per_token
        costs = _StepCosts(model, hw, par, lay, scenario)
        fitting = [c for c in cands if base.total_bytes + c.batch * kv_seq <= base.capacity_bytes]
        costs.decode_many(sorted({c.batch for c in fitting}), context)
        try:  # the replica cost's iteration nodes, many at a time (same numbers as on demand)
            serving_policy.prefetch(fitting, scenario, model)
        except MoesimError:  # no KV room at the serving memory fraction: reported per candidate below
            pass
        grid = None
        results = []
        for c in cands:
            total = base.total_bytes + c.batch * kv_seq
            headroom = (base.capacity_bytes - total) / units.GiB
            ev = Evaluation(candidate=c, memory_headroom_GiB=headroom)
            if total > base.capacity_bytes:
                results.append(ev.rejected("does_not_fit", f"short of memory by {-headroom:.1f} GiB per device "
                                           f"(weights {base.weight_bytes / units.GiB:.1f} GiB + KV of batch {c.batch})"))
                continue
            bd = costs.decode(c.batch, context)
            try:
                grid = grid or serving_policy.replica_cost(c, scenario, model)
            except MoesimError as err:  # no KV room at the serving memory fraction
                results.append(ev.rejected("does_not_fit", str(err)))
                continue
            est = serving_policy.choose(grid, c, scenario, _featured_decode_s(costs, c.batch, context, bd, scenario))
            results.append(Evaluation(
                candidate=c, tokens_per_s=est.output_tokens_per_s, step_time_s=bd.step_time_s,
                tpot_s=est.tpot_s, ttft_s=est.ttft_s, memory_headroom_GiB=headroom,
                bottleneck=bottleneck_name(bd, hw, c, headroom * units.GiB / base.capacity_bytes),
                drop_fraction=self._drops(model, c, hw, scenario), imbalance=bd.expert_imbalance,
                decode_steps_per_prefill=est.steps,
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


def _featured_decode_s(costs, batch: int, context: int, bd, scenario) -> float:
    """The decode iteration per emitted token under speculative decoding (moesim/planner/pool_cost.py
    ``featured``); the plain step without it."""
    spec = scenario.features.speculative
    if spec is None:
        return bd.step_time_s
    from moesim.planner.pool_cost import speculative_step_s

    step = speculative_step_s(spec, costs.model, lambda b, ctx: costs.decode(b, int(ctx)).step_time_s, batch, context)
    return step / spec.tokens_per_step


class _StepCosts:
    """The step model's decode and prefill iterations of one (hardware, layout), memoized in this
    process by everything they depend on (model, hardware, layout, dtypes, overlap, routing skew,
    batch, context or prompt length): another layout group, chunk or plan (what-if, compare,
    pilot) with the same inputs reuses them. The numbers are ``decode_iteration`` /
    ``prefill_iteration``'s own (the planner never re-derives a time)."""

    def __init__(self, model, hw, par, lay: _Layout, scenario):
        w = scenario.workload
        self.model, self.hw, self.par, self.lay, self.scenario = model, hw, par, lay, scenario
        self.cluster = Cluster(hardware=hw.name, devices=lay.devices)
        routing = scenario.routing.model_copy(update={"capacity_factor": None, "drift": 0.0})
        self.kw = dict(dtype=w.dtype, kv_dtype=w.kv_dtype, routing=routing, overlap=overlap_mode(scenario, model),
                       check_memory=False)
        self.key = (_model_key(model), hw.name, lay, w.dtype, w.kv_dtype, self.kw["overlap"], routing.model_dump_json())

    def decode(self, batch: int, context: int):
        from moesim.step import decode_iteration

        key = self.key + ("decode", batch, context)
        if key not in _MEMO:
            _remember(key, decode_iteration(self.model, self.hw, self.cluster, self.par, batch_per_device=batch,
                                            context=context, **self.kw))
        return _MEMO[key]

    def decode_many(self, batches, context: int) -> None:
        """Memoize ``decode`` at every batch at once: ``vectorized.decode_breakdowns`` (one layer-model
        call per layer kind and batch, the schedule on arrays; equal to ``decode_iteration``)."""
        todo = [b for b in batches if self.key + ("decode", b, context) not in _MEMO]
        if not todo:
            return
        lay = self.lay  # any candidate of the layout (batch and capacity factor are not in the key)
        c = Candidate(lay.hardware, lay.devices, lay.tp, lay.pp, lay.dp, lay.ep, lay.attention_layout,
                      redundant_experts=lay.redundant_experts)
        it = serving_policy.layout_iterations(c, self.scenario, self.model, self.kw["routing"])
        for b, bd in zip(todo, it.decode(todo, context)):
            _remember(self.key + ("decode", b, context), bd)

    def prefill(self, prompt_len: int) -> float:
        from moesim.step import prefill_iteration

        key = self.key + ("prefill", prompt_len)
        if key not in _MEMO:
            _remember(key, prefill_iteration(self.model, self.hw, self.cluster, self.par, prompt_len=prompt_len,
                                             prompts_per_device=1, **self.kw).step_time_s)
        return _MEMO[key]


_MEMO: dict = {}
_MEMO_MAX = 200_000
_MODEL_KEYS: dict[int, tuple] = {}


def _remember(key, value) -> None:
    if len(_MEMO) >= _MEMO_MAX:  # NOTE: a crude bound; sweeps this large stream to disk anyway
        _MEMO.clear()
    _MEMO[key] = value


def _model_key(model) -> str:
    """The model's full JSON (ModelSpec is frozen: cache it by identity while the object lives)."""
    hit = _MODEL_KEYS.get(id(model))
    if hit is None or hit[0] is not model:
        hit = _MODEL_KEYS[id(model)] = (model, model.model_dump_json())
    return hit[1]


@functools.lru_cache(maxsize=4096)
def _drop_fraction(E, k, tokens, ep, per_node, skew, cf, overflow, redundant, groups, topk_groups, samples) -> float:
    """Expected dropped share of token copies: the routing engine's public ``route`` (analytic when
    it has that popularity, else Monte Carlo); cached here and by ``route`` per distinct input."""
    from moesim.routing.api import route

    kw = dict(ep=ep, ranks_per_node=per_node, skew=skew, capacity_factor=cf, overflow=overflow,
              placement="load_aware" if redundant else "contiguous", redundant_experts=redundant,
              n_groups=groups, topk_groups=topk_groups)
    try:
        return float(route(E, k, tokens, engine="analytic", **kw).drop_fraction)
    except (TypeError, NotImplementedError, MoesimError):
        return float(route(E, k, tokens, engine="montecarlo", samples=samples, seed=0, **kw).drop_fraction)
