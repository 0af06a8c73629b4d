"""The real evaluator: memory model (moesim.compute), step model (moesim.step), routing, serving DES.

Nothing here re-derives a time or a byte count; it composes the models' outputs:
- memory: ``memory_footprint(kv_tokens=0)`` gives the weights and the KV bytes per token of the
  most loaded device; a batch of ``b`` sequences per device at context ``C`` adds
  ``b x tp x pp x C`` KV tokens (the footprint is linear in ``kv_tokens``), and fits when the total
  is within the engine's share of HBM (``serving_policy.serving_memory``: the stack's
  ``memory_fraction``, e.g. vLLM 0.9, SGLang 0.81 at 8 devices; the whole device when it states none);
- decode: the step model (``moesim.step.estimate``) at context ``C = prompt_len + output_len / 2``
  (the mean KV length over a request's decode), all batches of one deployment in one call (the
  layer model once per layer kind and batch, the schedule on arrays), through the evaluator's
  content-keyed ``PlanCache`` (moesim/planner/costs.py), under the overlap the serving policy picks
  per batch (``serving_policy.decode_steps``: with ``search.overlap = "auto"`` the faster of none
  and two micro-batches; the evaluation's ``detail`` names the decode and prefill modes, and the
  replica cost the DES runs uses the same). The layer model itself (routing
  max-load, GEMM and all-to-all models) is not affine in the batch (tile quantization,
  low-latency vs normal all-to-all, the max over ranks), so it is called at every batch rather
  than interpolated;
- prefill and continuous batching (co-located): the serving system of
  :mod:`moesim.planner.serving_policy`, the one the serving DES simulates: a per-rank token
  budget, prompts batched into a mixed iteration once every K iterations (K of most tokens/s
  within the TPOT and TTFT limits; TensorRT-LLM's scheduler: its trtllm-bench limits, K = L / S_rank,
  more sequences per rank than it sustains rejected as ``exceeds_engine_limits``), mixed
  iterations priced by the DES's own ``GridCost`` (so an eager prefill's host
  time and the decode attention of the co-scheduled sequences are in it); then
  TPOT = (T_mix + (K - 1) t_dec) / K, TTFT at the SLO percentile q = q x period + T_mix (at the
  q-quantile of a period's prompt tokens: serving_policy.estimate),
  tokens/s per replica = sequences / TPOT. The serving DES then checks the tails of the best
  candidates.
- capacity: the candidate's capacity factor and the scenario's overflow policy are part of its
  ``Deployment``, so the step model prices them (dropped copies cost no expert time, rerouted
  ones are priced where they land, the shared-expert backup is priced) and reports the drop,
  reroute and backup fractions of the routing engine; the drop fraction is the decode step's
  (serving) or the training micro-batch's, and the ranking limits it (moesim/planner/rank.py).
  quality: the predicted loss increase of those fractions (moesim/planner/quality_cost.py, on
  the evaluation with its band). A serving candidate over ``limits.max_drop_fraction``
  (``drops_too_many``) or ``limits.max_loss_increase`` (``loses_too_much_quality``) is rejected
  before its latencies are priced: it can never rank, and the replica cost is most of a
  candidate's price.
Bottleneck (planner vocabulary): the step model's largest component, mapped to compute / HBM
(compute when model FLOPs at peak fill at least half the step, else HBM), scale-up / scale-out
(all-to-all, TP and DP collectives: scale-out when that group -- EP, TP or all devices -- spans
more than one domain), imbalance
(expert time with rank imbalance >= 1.3), memory capacity (less than 10% of HBM left); a
co-located serving candidate whose prompts cannot keep up within its scheduler's token budget is
``token budget`` (moesim/planner/serving_policy.py ``prefill_bound``: every iteration is full, fewer
sequences decode than it holds; a larger --max-num-batched-tokens / --chunked-prefill-size, or
disaggregated prefill, is what raises its rate).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from moesim import units
from moesim.catalog import load_profile
from moesim.errors import MoesimError
from moesim.planner import serving_policy
from moesim.planner.costs import PlanCache
from moesim.planner.evaluation import Candidate, Evaluation, HardwareFacts, Verification
from moesim.planner.quality_cost import LossIncrease, PlanQuality, trained_top_k
from moesim.planner.scenario import scenario_model
from moesim.specs.serving_features import inflight_context_tokens

_COMM = {"all_to_all", "tp_cp_comm", "dp_comm"}


def _group_key(c: Candidate) -> tuple:
    """What a candidate shares with the other batches of its deployment (capacity factor included)."""
    return (c.hardware, c.devices, c.tp, c.pp, c.dp, c.ep, c.etp, c.attention_layout, c.redundant_experts, c.capacity_factor)


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
    """Step model + memory model for the sweep; serving DES for ``verify``. ``cache`` is this
    evaluator's content-keyed memo (moesim/planner/costs.py): pass one evaluator to several plans
    to share it, call ``cache.clear()`` to drop it."""

    name: str = "analytic step model"
    cache: PlanCache = field(default_factory=PlanCache, compare=False, repr=False)
    quality: PlanQuality = field(default_factory=PlanQuality, compare=False, repr=False)

    def hardware(self, name: str) -> HardwareFacts:
        p = load_profile(name)
        from moesim.prices import entry_from_profile

        return HardwareFacts(p.name, p.price.usd_per_device_hour, p.scale_up.domain_size,
                             p.hbm_bytes / units.GiB, price=entry_from_profile(p))

    @staticmethod
    def chunk_key(c: Candidate) -> int:
        """Sweep chunks keep one EP size together: the routing statistics the step model asks for
        (per EP size x tokens) are then computed once, in one worker."""
        return c.ep

    def evaluate(self, candidates: Sequence[Candidate], scenario) -> list[Evaluation]:
        model = scenario_model(scenario)
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(candidates):
            groups.setdefault(_group_key(c), []).append(i)
        out: list[Evaluation | None] = [None] * len(candidates)
        fn = self._serving_group if scenario.kind == "serving" else self._training_group
        trained_k = trained_top_k(scenario)
        for idx in groups.values():
            for i, ev in zip(idx, fn([candidates[i] for i in idx], scenario, model, trained_k)):
                out[i] = ev
        return out

    # ---- serving ----------------------------------------------------------------------------
    def _serving_group(self, cands: list[Candidate], scenario, model, trained_k) -> list[Evaluation]:
        cache = self.cache
        hw = load_profile(cands[0].hardware)
        w = scenario.workload
        dep = cache.deployment(cands[0], scenario, model)
        mem = serving_policy.serving_memory(cands[0], scenario, model, cache)  # the engine's share of HBM
        context = inflight_context_tokens(w)  # P + L // 2 for fixed lengths
        fitting = [c for c in cands if mem.fits(c.batch)]
        # decode step per batch under its overlap (serving_policy.decode_steps: the faster mode with auto)
        chosen = serving_policy.decode_steps(fitting, scenario, model, cache) if fitting else {}
        steps = {b: bd for b, (_mode, bd) in chosen.items()}
        quality = {b: self.quality.loss_increase(bd, model, trained_k) for b, bd in steps.items()}
        verdicts = {b: _quality_verdict(bd, quality[b], scenario) for b, bd in steps.items()}
        priced = [c for c in fitting if verdicts[c.batch] is None]
        try:  # the replica cost's iteration nodes, many at a time (same numbers as on demand)
            serving_policy.prefetch(priced, scenario, model, cache)
        except MoesimError:  # no KV room at the serving memory fraction: reported per candidate below
            pass
        results = []
        for c in cands:
            headroom = (mem.budget_bytes - mem.used_bytes(c.batch)) / units.GiB
            ev = Evaluation(candidate=c, memory_headroom_GiB=headroom)
            if not mem.fits(c.batch):
                results.append(ev.rejected("does_not_fit", mem.shortfall_reason(c.batch)))
                continue
            bd = steps[c.batch]
            routed = dict(step_time_s=bd.step_time_s, **_routing_fields(bd, quality[c.batch]))
            try:  # memoized per deployment content and decode overlap
                grid = serving_policy.replica_cost(c, scenario, model, cache)
            except MoesimError as err:  # no KV room at the serving memory fraction
                results.append(ev.rejected("does_not_fit", str(err)))
                continue
            if verdicts[c.batch] is not None:  # never ranked (moesim/planner/rank.py): latencies not priced
                results.append(replace(ev, **routed).rejected(*verdicts[c.batch]))
                continue
            over = serving_policy.engine_rejection(c, scenario, model, cache)
            if over is not None:  # more sequences than the engine's scheduler holds
                results.append(replace(ev, **routed).rejected("exceeds_engine_limits", over))
                continue
            limits = serving_policy.engine_limits(c, scenario, model, cache)
            mode = chosen[c.batch][0]
            est = serving_policy.choose(grid, c, scenario, _featured_decode_s(
                model, dep, mode, bd, c.batch, context, scenario, cache), limits)
            results.append(Evaluation(
                candidate=c, tokens_per_s=est.output_tokens_per_s,
                tpot_s=est.tpot_s, ttft_s=est.ttft_s, memory_headroom_GiB=headroom,
                bottleneck=("token budget" if est.prefill_bound
                            else bottleneck_name(bd, hw, c, headroom * units.GiB / mem.capacity_bytes)),
                **routed, decode_steps_per_prefill=est.steps,
                detail=serving_policy.overlap_detail(mode, serving_policy.prefill_overlap(c, scenario, model, cache)),
            ))
        return results

    # ---- training --------------------------------------------------------------------------
    def _training_group(self, cands: list[Candidate], scenario, model, trained_k) -> list[Evaluation]:
        from moesim.step import Training, estimate

        hw = load_profile(cands[0].hardware)
        w = scenario.workload
        results = []
        for c in cands:
            try:
                dep = self.cache.deployment(c, scenario, model)
                bd = estimate(model, dep, Training(w.global_batch, w.seq_len, c.batch, scenario.routing.skew),
                              check_memory=False, cache=self.cache.step).breakdown(0)
            except (MoesimError, ValueError) as err:
                results.append(Evaluation(candidate=c).rejected("invalid_layout", str(err)))
                continue
            headroom = bd.memory_capacity_GiB - bd.memory_GiB
            ev = Evaluation(candidate=c, memory_headroom_GiB=headroom)
            if not bd.memory_fits:
                results.append(ev.rejected("does_not_fit", f"short of memory by {-headroom:.1f} GiB per device"))
                continue
            results.append(Evaluation(
                candidate=c, tokens_per_s=bd.tokens_per_s_per_device * c.devices, step_time_s=bd.step_time_s,
                memory_headroom_GiB=headroom, mfu=bd.mfu,
                bottleneck=bottleneck_name(bd, hw, c, headroom / bd.memory_capacity_GiB),
                **_routing_fields(bd, self.quality.loss_increase(bd, model, trained_k, kind="training")),
            ))
        return results

    # ---- verification ----------------------------------------------------------------------
    def verify(self, evaluation: Evaluation, scenario) -> Verification | None:
        from moesim.planner.verify import verify_with_des

        return verify_with_des(evaluation, scenario, scenario_model(scenario), self.cache)


def _routing_fields(bd, loss: LossIncrease | None) -> dict:
    """The Evaluation's routing and quality fields of a step breakdown and its predicted loss."""
    return dict(drop_fraction=bd.drop_fraction, reroute_fraction=bd.reroute_fraction,
                backup_fraction=bd.backup_fraction, imbalance=bd.expert_imbalance,
                loss_increase=None if loss is None else loss.value,
                loss_increase_low=None if loss is None else loss.low,
                loss_increase_high=None if loss is None else loss.high)


def _quality_verdict(bd, loss: LossIncrease | None, scenario) -> tuple[str, str] | None:
    """(reason, detail) when a decode step breaks the scenario's quality limits (the judge's rule,
    moesim/planner/rank.py ``quality_rejection``), else None."""
    from moesim.planner.rank import quality_rejection

    ev = Evaluation(candidate=None, **_routing_fields(bd, loss))
    bad = quality_rejection(ev, scenario)
    return None if bad is None else (bad.evaluation.reason, bad.evaluation.detail)


def _featured_decode_s(model, dep, overlap: str, bd, batch: int, context: int, scenario, cache: PlanCache) -> float:
    """The decode iteration per emitted token under speculative decoding (moesim/planner/pool_cost.py
    ``featured``) on the candidate's own deployment (its capacity priced) under the decode
    ``overlap`` chosen at its batch; the plain step without it."""
    spec = scenario.features.speculative
    if spec is None:
        return bd.step_time_s
    from moesim.planner.pool_cost import speculative_step_s
    from moesim.step import Decode, estimate

    skew = scenario.routing.skew
    dep = dep if overlap == dep.overlap else dep.with_(overlap=overlap)

    def step(b, ctx) -> float:
        ctx = int(ctx)
        if b == batch and ctx == context:
            return bd.step_time_s
        return cache.get(cache.key(model, dep, "decode one", float(b), ctx, skew), lambda: float(estimate(
            model, dep, Decode(b, ctx, skew), check_memory=False, cache=cache.step).step_time_s[0]))

    return speculative_step_s(spec, model, step, batch, context) / spec.tokens_per_step
