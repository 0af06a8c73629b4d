"""The search space: every deployment the planner considers, and the layouts it sets aside.

Serving (one replica of ``n`` devices): for each pipeline size ``pp`` dividing ``n``,
- attention layout ``dp`` (DP attention): ``tp = 1``, ``dp = ep = n / pp``;
- attention layout ``tp``: ``tp`` in the scenario's list, ``dp = n / (pp x tp)``, ``ep = tp x dp``
  (experts spread over every non-pipeline rank, as serving engines do); ``tp = 1`` is the same
  deployment as the ``dp`` layout and is skipped when both layouts are searched;
- ``moe_layouts`` says how the MoE layers use those ranks: "ep" spreads the experts over them
  (``ep = n / pp``, as above); "tp" shards every expert over all of them (``etp = n / pp``,
  ``ep = 1``), as vLLM and SGLang run MoE layers without expert parallelism enabled.
Dense models get ``ep = 1``. EP sizes that do not divide the routed experts get the fewest
redundant expert slots that make them divide (EPLB-style), never a refusal.
Training: ``devices = tp x pp x dp`` and ``ep`` dividing ``tp x dp``, ``global_batch`` divisible by
``dp x micro_batch``.
A layout the model cannot run (heads not divisible by TP, more stages than layers) is counted under
``invalid_layout`` with the first reason, not evaluated.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from moesim.errors import MoesimError
from moesim.planner.evaluation import Candidate
from moesim.specs import ModelSpec, Parallelism, check_parallelism
from moesim.specs.parallel import smallest_redundancy


@dataclass(frozen=True)
class Space:
    """Candidates to evaluate plus the layouts rejected before evaluation (reason -> count)."""

    candidates: tuple[Candidate, ...]
    invalid: dict[str, int] = field(default_factory=dict)
    invalid_examples: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.candidates) + sum(self.invalid.values())


def _layout_error(model: ModelSpec, par: Parallelism) -> str | None:
    try:
        check_parallelism(model, par)
    except MoesimError as err:
        return str(err)
    return None


def _redundancy(model: ModelSpec, ep: int) -> int:
    return smallest_redundancy(model.moe.num_experts, ep) if model.moe is not None and ep > 1 else 0


def serving_layouts(model: ModelSpec, n: int, search) -> Iterable[tuple[int, int, int, int, str, int]]:
    """``(tp, pp, dp, ep, attention_layout, etp)`` for one replica of ``n`` devices."""
    moe = model.moe is not None
    moe_layouts = getattr(search, "moe_layouts", ("ep",)) if moe else ("ep",)
    for pp in search.pp:
        if n % pp:
            continue
        ranks = n // pp
        attention = []  # (tp, layout) of the attention
        if "dp" in search.attention_layouts:
            attention.append((1, "dp"))
        if "tp" in search.attention_layouts:
            attention += [(tp, "tp") for tp in search.tp
                          if not ranks % tp and not (tp == 1 and "dp" in search.attention_layouts)]
        for tp, att in attention:
            if "ep" in moe_layouts:
                yield tp, pp, ranks // tp, ranks if moe else 1, att, 1
            if "tp" in moe_layouts and ranks > 1:
                yield tp, pp, ranks // tp, 1, att, ranks


@dataclass
class _Collect:
    """Candidates and rejected layouts gathered while a space is enumerated."""

    cands: list = field(default_factory=list)
    invalid: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def space(self) -> Space:
        return Space(tuple(self.cands), dict(self.invalid), self.examples)


def _add_layout(out: _Collect, model: ModelSpec, hw: str, n: int, layout: tuple[int, int, int, int, str, int],
                batches, cfs) -> None:
    """Candidates of one (tp, pp, dp, ep, attention_layout, etp) on ``n`` devices of ``hw``, or
    the reason it is set aside."""
    tp, pp, dp, ep, att, etp = layout
    par = Parallelism(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, attention_layout=att,
                      redundant_experts=_redundancy(model, ep))
    err = _layout_error(model, par)
    if err:
        out.invalid["invalid_layout"] += len(batches) * len(cfs)
        out.examples.setdefault("invalid_layout", f"{hw} {n} devices TP{tp} PP{pp}: {err}")
        return
    for b in batches:
        for cf in cfs:
            out.cands.append(Candidate(hw, n, tp, pp, dp, ep, att, b, cf, par.redundant_experts, etp))


def serving_space(scenario, model: ModelSpec) -> Space:
    """Every one-replica serving deployment of ``scenario`` (hardware x devices x layout x batch x CF)."""
    s = scenario.search
    cfs = scenario.capacity_factors if model.moe is not None else (None,)
    out = _Collect()
    for hw in scenario.hardware:
        for n in s.devices_per_replica:
            if n > scenario.max_devices:
                continue
            for layout in serving_layouts(model, n, s):
                _add_layout(out, model, hw, n, layout, s.batch_per_device, cfs)
    return out.space()


def training_space(scenario, model: ModelSpec) -> Space:
    """Every training deployment of ``scenario`` (hardware x devices x TP x PP x EP x micro-batch x CF)."""
    s, w = scenario.search, scenario.workload
    cfs = scenario.capacity_factors if model.moe is not None else (None,)
    eps = s.ep if model.moe is not None else (1,)
    out = _Collect()
    for hw in scenario.hardware:
        for n in s.devices:
            if n > scenario.max_devices:
                continue
            for tp in s.tp:
                for pp in s.pp:
                    if n % (tp * pp):
                        continue
                    dp = n // (tp * pp)
                    mbs = tuple(m for m in s.micro_batch if w.global_batch % (dp * m) == 0)
                    for ep in eps:
                        if (tp * dp) % ep or not mbs:
                            continue
                        _add_layout(out, model, hw, n, (tp, pp, dp, ep, "tp", 1), mbs, cfs)
    return out.space()
