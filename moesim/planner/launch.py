"""Launch settings for a plan's answer: the command lines a user types for SGLang or vLLM.

Written against these engine versions (flag names checked in their sources, not guessed):
- SGLang 0.5 (``python/sglang/srt/server_args.py``: ``--tp-size``, ``--dp-size``,
  ``--enable-dp-attention``, ``--ep-size``, ``--moe-a2a-backend deepep``,
  ``--ep-num-redundant-experts``, ``--chunked-prefill-size``, ``--max-running-requests``,
  ``--num-continuous-decode-steps``, ``--mem-fraction-static``, ``--enable-two-batch-overlap``,
  ``--speculative-algorithm/-num-steps/-eagle-topk/-num-draft-tokens``, ``--disaggregation-mode``,
  ``--disaggregation-transfer-backend``, ``--nnodes/--node-rank/--dist-init-addr``) and its PD
  router (``python -m sglang_router.launch_router --pd-disaggregation --prefill URL --decode URL``).
  With DP attention SGLang divides ``--chunked-prefill-size`` by ``--dp-size``, so the flag is
  the per-rank budget times the DP size (moesim/planner/serving_policy.py).
- vLLM 0.12 (``vllm serve``; docs.vllm.ai v0.12.0 "Expert Parallel Deployment":
  ``--tensor-parallel-size``, ``--data-parallel-size``, ``--data-parallel-size-local``,
  ``--data-parallel-address``, ``--data-parallel-rpc-port``, ``--data-parallel-start-rank``,
  ``--enable-expert-parallel``, ``--all2all-backend``, ``--enable-eplb``, ``--eplb-config``
  with ``num_redundant_experts``, ``--max-num-batched-tokens`` and ``--max-num-seqs`` per DP
  engine, ``--gpu-memory-utilization``, ``--speculative-config`` with ``deepseek_mtp``,
  ``--kv-transfer-config`` with the ``NixlConnector``).
Values come from the plan (layout, budgets, sequence limits, prefill batching K, speculative
depth, two-batch overlap where the plan's decode step (prefill pools: prefill pass) runs two
micro-batches, memory fraction = the engine share of device memory the plan sized the KV cache
with: the scenario stack's, by engine size, ``moesim/step/stacks.py`` ``serving_memory_fraction``,
0.9 where the stack states none); hosts are assumed to carry
min(scale-up domain, 8) GPUs (``nnodes``). ``$MODEL_PATH``, ``$HEAD`` and ``$PREFILL``/``$DECODE``
addresses are left for the user. GPU answers only: a TPU answer is refused (one line).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from moesim.errors import MoesimError

ENGINES = {"sglang": "SGLang 0.5", "vllm": "vLLM 0.12"}


@dataclass(frozen=True)
class Role:
    """What one engine instance runs: layout, budgets and limits (engine-neutral)."""

    name: str  # colocated | prefill | decode
    hardware: str
    replicas: int
    devices: int
    tp: int
    ep: int
    redundant_experts: int
    token_budget_per_rank: int
    max_seqs_per_rank: int
    decode_steps_per_prefill: int = 1
    two_batch_overlap: bool = True

    @property
    def dp(self) -> int:
        return self.devices // self.tp


@dataclass(frozen=True)
class LaunchSettings:
    """The command lines of one engine for an answer, with the engine version they were written for."""

    engine: str
    version: str
    mode: str
    commands: tuple[tuple[str, int, str], ...]  # (role, replicas, command line)
    notes: tuple[str, ...] = ()

    def text(self) -> str:
        out = [f"# {self.version} launch settings ({self.mode}); one command per engine replica"]
        out += [f"# {n}" for n in self.notes]
        for role, reps, cmd in self.commands:
            out += [f"# {role}: {reps} replica(s)" if reps else f"# {role}", cmd]
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "version": self.version, "mode": self.mode, "notes": list(self.notes),
                "commands": [{"role": r, "replicas": n, "command": c} for r, n, c in self.commands]}


def _nvidia(role: Role) -> bool:
    """DeepEP (SGLang ``--moe-a2a-backend deepep``, vLLM ``deepep_*``) runs on NVIDIA GPUs only."""
    from moesim.catalog import load_profile

    return load_profile(role.hardware).vendor == "nvidia"


def _hosts(role: Role) -> tuple[int, int]:
    from moesim.catalog import load_profile

    hw = load_profile(role.hardware)
    if hw.kind != "gpu":
        raise MoesimError(f"--emit: SGLang/vLLM launch settings are for GPUs; the answer runs on {hw.name} "
                          f"({hw.kind})")
    per = min(hw.scale_up.domain_size, 8, role.devices)
    return math.ceil(role.devices / per), per


def memory_fraction(role: Role, scenario) -> float:
    """The share of device memory the plan sized this role's KV cache with (moesim/des/serving/
    deployment.py ``kv_capacity_tokens``): the scenario stack's engine share over the role's
    devices, 0.9 where the stack states none (``engine_memory_fraction``)."""
    from moesim.des.serving.deployment import engine_memory_fraction

    return engine_memory_fraction(getattr(scenario, "stack", "auto"), role.devices)


def sglang(role: Role, scenario) -> str:
    nodes, _ = _hosts(role)
    a = ["python -m sglang.launch_server --model-path $MODEL_PATH --trust-remote-code", f"--tp-size {role.devices}"]
    if role.dp > 1:
        a += [f"--dp-size {role.dp}", "--enable-dp-attention"]
    if role.ep > 1:
        a += [f"--ep-size {role.ep}"] + (["--moe-a2a-backend deepep"] if _nvidia(role) else [])
        if role.redundant_experts:
            a.append(f"--ep-num-redundant-experts {role.redundant_experts}")
    a += [f"--chunked-prefill-size {role.token_budget_per_rank * role.dp}",
          f"--max-running-requests {role.max_seqs_per_rank * role.dp}", f"--mem-fraction-static {memory_fraction(role, scenario):g}"]
    if role.decode_steps_per_prefill > 1:
        a.append(f"--num-continuous-decode-steps {role.decode_steps_per_prefill}")
    if role.two_batch_overlap and role.ep > 1 and _nvidia(role):
        a.append("--enable-two-batch-overlap")
    if scenario.workload.kv_dtype == "fp8":
        a.append("--kv-cache-dtype fp8_e4m3")
    spec = scenario.features.speculative
    if spec is not None and role.name != "prefill":
        a += ["--speculative-algorithm EAGLE", f"--speculative-num-steps {spec.draft_tokens}",
              "--speculative-eagle-topk 1", f"--speculative-num-draft-tokens {spec.draft_tokens + 1}"]
    if role.name in ("prefill", "decode"):
        a += [f"--disaggregation-mode {role.name}", "--disaggregation-transfer-backend mooncake"]
    if nodes > 1:
        a += [f"--nnodes {nodes}", "--node-rank $NODE_RANK", "--dist-init-addr $HEAD:5000"]
    return " \\\n    ".join(a)


def vllm(role: Role, scenario) -> str:
    nodes, per = _hosts(role)
    a = ["vllm serve $MODEL_PATH --trust-remote-code", f"--tensor-parallel-size {role.tp}"]
    if role.dp > 1:
        a.append(f"--data-parallel-size {role.dp}")
        if nodes > 1:
            a += [f"--data-parallel-size-local {per // role.tp}", "--data-parallel-address $HEAD",
                  "--data-parallel-rpc-port 13345", f"--data-parallel-start-rank $((NODE_RANK * {per // role.tp}))"]
    if role.ep > 1:
        backend = "deepep_high_throughput" if role.name == "prefill" else "deepep_low_latency"
        a += ["--enable-expert-parallel"] + ([f"--all2all-backend {backend}"] if _nvidia(role) else [])
        if role.redundant_experts:
            a += ["--enable-eplb", "--eplb-config '" + json.dumps({"num_redundant_experts": role.redundant_experts}) + "'"]
    a += [f"--max-num-batched-tokens {role.token_budget_per_rank}", f"--max-num-seqs {role.max_seqs_per_rank}",
          f"--gpu-memory-utilization {memory_fraction(role, scenario):g}"]
    if scenario.workload.kv_dtype == "fp8":
        a.append("--kv-cache-dtype fp8")
    spec = scenario.features.speculative
    if spec is not None and role.name != "prefill":
        method = "deepseek_mtp" if spec.method == "mtp" else "draft_model"
        a.append("--speculative-config '" + json.dumps({"method": method, "num_speculative_tokens": spec.draft_tokens})
                 + "'")
    if role.name in ("prefill", "decode"):
        a.append("--kv-transfer-config '" + json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}) + "'")
    return " \\\n    ".join(a)


_WRITERS = {"sglang": sglang, "vllm": vllm}


def roles(result) -> tuple[str, tuple[Role, ...]]:
    """The winning mode of ``result`` (a PlanResult) and its engine roles."""
    from moesim.planner import serving_policy

    sc = result.scenario
    if sc.kind != "serving":
        raise MoesimError("--emit: launch settings are for serving plans")
    winner = result.modes.winner if result.modes is not None else "colocated"
    if winner == "disaggregated":
        d = result.disaggregated
        p, q = d.answer.prefill, d.answer.decode
        v = d.verification
        rp, rd = (v.prefill_replicas, v.decode_replicas) if v is not None and v.met else (p.replicas, q.replicas)
        seqs = serving_policy.SEQ_HEADROOM * q.batch
        from moesim.planner.costs import PlanCache
        from moesim.planner.scenario import scenario_model

        p_mode = serving_policy.prefill_overlap(p.layout.candidate(), sc, scenario_model(sc), PlanCache())
        pre = Role("prefill", p.layout.hardware, rp, p.layout.devices, p.layout.tp, p.layout.ep,
                   p.layout.redundant_experts, p.batch, max(1, p.batch // max(1, sc.workload.prompt_len)) + 1,
                   two_batch_overlap=p_mode == "two_microbatch")
        dec = Role("decode", q.layout.hardware, rd, q.layout.devices, q.layout.tp, q.layout.ep,
                   q.layout.redundant_experts, max(seqs * q.layout.tp, serving_policy.PER_RANK_TOKEN_BUDGET),
                   seqs * q.layout.tp, two_batch_overlap=(q.overlap or "two_microbatch") == "two_microbatch")
        return winner, (pre, dec)
    a = result.answer
    if a is None:
        raise MoesimError("--emit: the plan has no answer to emit")
    from moesim.planner.costs import PlanCache
    from moesim.planner.scenario import scenario_model

    c = a.ranked.candidate
    sched = serving_policy.des_scheduler(c, sc, scenario_model(sc), PlanCache(),
                                         a.ranked.evaluation.decode_steps_per_prefill or 1)
    ranks = serving_policy.attention_ranks(c)
    modes = serving_policy.overlaps_of(a.ranked.evaluation.detail)
    return winner, (Role("colocated", c.hardware, a.replicas, c.devices, c.tp, c.ep, c.redundant_experts,
                         sched.token_budget // ranks, max(1, sched.max_seqs // ranks),
                         sched.decode_steps_per_prefill, two_batch_overlap=_tbo(modes, sc)),)


def _tbo(modes: dict, scenario) -> bool:
    """SGLang's one ``--enable-two-batch-overlap`` switch for a co-located replica whose plan chose
    ``modes`` (decode / prefill overlap: serving_policy): on when the decode step runs two
    micro-batches (the phase that sets TPOT), else off; without modes, the scenario's setting."""
    if "decode" in modes:
        return modes["decode"] == "two_microbatch"
    return getattr(scenario.search, "overlap", "auto") != "none"


def launch_settings(result, engine: str) -> LaunchSettings:
    """The ``engine`` command lines for ``result``'s answer (module docstring)."""
    if engine not in _WRITERS:
        raise MoesimError(f"--emit {engine!r}: allowed engines are {', '.join(_WRITERS)}")
    mode, rs = roles(result)
    cmds = tuple((r.name, r.replicas, _WRITERS[engine](r, result.scenario)) for r in rs)
    notes = ["set MODEL_PATH to the checkpoint of " + result.scenario.model,
             "multi-node replicas: run the command on every host with NODE_RANK = 0.. and HEAD = the first host"]
    if mode == "disaggregated":
        router = ("python -m sglang_router.launch_router --pd-disaggregation --prefill $PREFILL_URL "
                  "--decode $DECODE_URL --host 0.0.0.0 --port 8000" if engine == "sglang" else
                  "# route with a NIXL-aware proxy (vLLM's disaggregated-serving proxy or llm-d)")
        cmds += (("router", 0, router),)
        notes.append("one --prefill / --decode URL per replica for the router")
    return LaunchSettings(engine, ENGINES[engine], mode, cmds, tuple(notes))
