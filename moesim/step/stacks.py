"""The named software stacks (moesim/data/stacks.toml) and their resolution per phase.

``Deployment.stack`` is a stack name or an explicit ``SoftwareStack``. A name is looked up in
the table, read once from the package (``stack_table``); ``auto`` is the production default of
each phase: ``train`` -> ``megatron`` (eager Megatron-Core / TE), ``prefill`` and ``decode`` ->
``sglang`` (eager prefill, CUDA-graph decode) (``AUTO``; other modules rely on these names).
A ``host_op_us`` or ``device_fraction`` given as ``"<stack>.<phase>"`` is that entry's value
(``megatron-cudagraph`` issues its uncaptured experts at ``megatron.train``'s rate and runs the
same kernels at its device fraction).

Fit parameters are named ``"<stack>.<phase>.host_op_us"`` (the entries marked ``fit = true``),
``"<stack>.<phase>.device_fraction"`` (``fit_fraction = true``), ``"<stack>.<phase>.expert_fraction"``
(``fit_expert = true``) and ``"<stack>.<phase>.host_seq_us"`` (``fit_seq = true``), listed by ``fit_params``;
``with_values`` returns a table with some of them set, which the fits of moesim/calibrate.py pass
to the case predictors. ``device_fraction(stack, phase)`` is the fraction the step model divides
every compute operation's time by (moesim/step/layer.py ``layer_ops``, training.py, estimate.py);
``expert_fraction(stack, phase)`` the further fraction of the routed experts' grouped GEMMs
(moesim/step/layer.py ``at_device_fraction``).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from moesim.errors import SpecError
from moesim.specs.software_stack import (MAX_HOST_SEQ_US, STACK_NAMES, STACK_PHASES, TRTLLM_STACKS, PhaseHost,
                                         SoftwareStack)

PARAM_FIELDS: tuple[str, ...] = ("host_op_us", "device_fraction", "expert_fraction", "host_seq_us")
# the parameters that are fractions in (0, 1] (fitted within [fraction_min, 1]: moesim/calibrate.py)
FRACTION_FIELDS: tuple[str, ...] = ("device_fraction", "expert_fraction")

# phase -> the stack ``auto`` resolves to
AUTO: dict[str, str] = {"train": "megatron", "prefill": "sglang", "decode": "sglang"}


@dataclass(frozen=True)
class StackTable:
    """Stack name -> ``SoftwareStack`` (every name of ``STACK_NAMES`` but ``auto``)."""

    stacks: dict[str, SoftwareStack]

    def get(self, name: str) -> SoftwareStack:
        if name not in self.stacks:
            raise SpecError("stack", name, f"one of {', '.join(STACK_NAMES)}")
        return self.stacks[name]

    def name_of(self, stack: str | SoftwareStack, phase: str) -> str:
        """The table name ``stack`` resolves to in ``phase`` (``auto`` per ``AUTO``)."""
        if isinstance(stack, SoftwareStack):
            return stack.name
        return AUTO[phase] if stack == "auto" else stack

    def explicit(self, stack: str | SoftwareStack, phase: str) -> SoftwareStack:
        """``stack`` as a ``SoftwareStack`` with every number explicit for ``phase`` resolved."""
        if isinstance(stack, SoftwareStack):
            return stack
        return self.get(self.name_of(stack, phase))

    def phase(self, stack: str | SoftwareStack, phase: str) -> PhaseHost:
        """The ``PhaseHost`` of ``stack`` in ``phase``, with a referenced ``host_op_us`` and
        ``device_fraction`` resolved."""
        ph = self.explicit(stack, phase).phase(phase)
        for fld in PARAM_FIELDS:
            seen = {f"{self.name_of(stack, phase)}.{phase}"}
            while isinstance(getattr(ph, fld), str):
                ref = getattr(ph, fld)
                if ref in seen:
                    raise SpecError("stack", ref, f"{fld} references form a cycle")
                seen.add(ref)
                name, _, ref_phase = ref.partition(".")
                ph = ph.model_copy(update={fld: getattr(self.get(name).phase(ref_phase), fld)})
        return ph

    def inline(self, stack: str | SoftwareStack, phase: str) -> SoftwareStack:
        """``stack`` as resolved in ``phase`` (``auto`` per ``AUTO``), every phase's referenced
        ``host_op_us`` replaced by this table's number: what a ``Deployment`` carries when the
        table's values (a fit's trial values) must reach the step model."""
        s = self.explicit(stack, phase)
        name = self.name_of(stack, phase)
        return s.model_copy(update={p: (self.phase(name, p) if not isinstance(stack, SoftwareStack)
                                        else self.phase(stack, p)) for p in STACK_PHASES})

    def with_values(self, values: dict[str, float], fitted: str | None = None) -> "StackTable":
        """A copy with ``"<stack>.<phase>.<host_op_us|device_fraction>"`` values set (and
        ``fitted`` noted on them); a device_fraction outside (0, 1] is a SpecError naming it."""
        out = dict(self.stacks)
        for path, value in values.items():
            name, phase = split_param(path)
            fld = param_field(path)
            if fld in FRACTION_FIELDS and not 0.0 < float(value) <= 1.0:
                raise SpecError(path, value, "a fraction in (0, 1]")
            if fld == "host_seq_us" and not 0.0 <= float(value) <= MAX_HOST_SEQ_US:
                raise SpecError(path, value, f"host us per sequence per iteration in [0, {MAX_HOST_SEQ_US:g}]")
            s = out[name]
            ph = s.phase(phase).model_copy(update={fld: float(value)})
            update = {phase: ph} if fitted is None else {phase: ph, "fitted": fitted}
            out[name] = s.model_copy(update=update)
        return StackTable(out)

    def entry_of(self, stack: str | SoftwareStack, phase: str, fld: str = "host_op_us") -> str | None:
        """``"<stack>.<phase>"`` whose ``fld`` (``host_op_us``: the rate of ``stack``'s eager
        operators; ``device_fraction``) applies to ``phase`` (references followed); for
        host_op_us None when the phase issues none (captured ``all``)."""
        name = self.name_of(stack, phase)
        ph = self.get(name).phase(phase)
        if fld == "host_op_us" and ph.captured == "all":
            return None
        entry = f"{name}.{phase}"
        while isinstance(getattr(ph, fld), str):
            entry = getattr(ph, fld)
            ref, _, ref_phase = entry.partition(".")
            ph = self.get(ref).phase(ref_phase)
        return entry

    def value(self, path: str) -> float:
        name, phase = split_param(path)
        return float(getattr(self.phase(name, phase), param_field(path)))


def split_param(path: str) -> tuple[str, str]:
    """``"<stack>.<phase>.<host_op_us|device_fraction>"`` -> (stack, phase); SpecError naming
    the parameter."""
    parts = path.rsplit(".", 2)
    if (len(parts) != 3 or parts[2] not in PARAM_FIELDS or parts[0] not in STACK_NAMES
            or parts[1] not in STACK_PHASES):
        raise SpecError("stack parameter", path, "<stack>.<phase>.host_op_us, <stack>.<phase>.device_fraction, "
                                                 "<stack>.<phase>.expert_fraction or <stack>.<phase>.host_seq_us "
                                                 "with a stack of the table")
    return parts[0], parts[1]


def param_field(path: str) -> str:
    """The field a stack parameter sets (one of ``PARAM_FIELDS``)."""
    split_param(path)
    return path.rsplit(".", 1)[1]


def parse_table(data: dict) -> StackTable:
    """A ``StackTable`` from the TOML's mapping; every name of ``STACK_NAMES`` but auto present.

    Compatibility: a table written before the TensorRT-LLM split (one ``trtllm`` row, fitted on
    the v0.17 TensorRT-engine rows) gets that row as ``trtllm-engine`` too; rows without the
    per-sequence keys (``host_seq_us``, ``loop``) load with their defaults (0 us, synchronous)."""
    if "trtllm" in data and "trtllm-engine" not in data:
        data = {**data, "trtllm-engine": data["trtllm"]}
    missing = set(STACK_NAMES) - {"auto"} - set(data)
    if missing:
        raise SpecError("stacks table", sorted(missing), "every stack name needs a row")
    return StackTable({name: SoftwareStack.model_validate({"name": name, **row}) for name, row in data.items()})


@cache
def stack_table() -> StackTable:
    """The shipped table, moesim/data/stacks.toml (read once)."""
    text = resources.files("moesim").joinpath("data", "stacks.toml").read_text(encoding="utf-8")
    return parse_table(tomllib.loads(text))


def fit_params(table: StackTable | None = None) -> tuple[str, ...]:
    """The fitted parameters of the table, in table order: every ``fit = true`` phase as
    ``<stack>.<phase>.host_op_us``, every ``fit_fraction = true`` one as
    ``<stack>.<phase>.device_fraction``, every ``fit_expert = true`` one as
    ``<stack>.<phase>.expert_fraction``, every ``fit_seq = true`` one as ``<stack>.<phase>.host_seq_us``."""
    table = table or stack_table()
    out = []
    for n, s in table.stacks.items():
        for p in STACK_PHASES:
            ph = s.phase(p)
            if ph.fit:
                out.append(f"{n}.{p}.host_op_us")
            if ph.fit_fraction:
                out.append(f"{n}.{p}.device_fraction")
            if ph.fit_expert:
                out.append(f"{n}.{p}.expert_fraction")
            if ph.fit_seq:
                out.append(f"{n}.{p}.host_seq_us")
    return tuple(out)


def pooled_params(table: StackTable | None = None) -> tuple[str, ...]:
    """The pooled device fractions of the table (``pool_fraction = true``), as
    ``<stack>.<phase>.device_fraction``: set by moesim/calibrate.py ``pool_fractions`` from the
    fitted ones, never fitted on rows of their own."""
    table = table or stack_table()
    return tuple(f"{n}.{p}.device_fraction" for n, s in table.stacks.items() for p in STACK_PHASES
                 if s.phase(p).pool_fraction)


@dataclass(frozen=True)
class FractionOrigin:
    """Where a stack's device fraction in one phase comes from: ``origin`` ``fitted`` (on whole
    sources), ``pooled`` (the fitted engines' median), ``prior`` (1.0 unless the entry states
    another), or ``stated`` (an explicit ``SoftwareStack``); ``entry``: the table entry whose number
    it is (``"<stack>.<phase>"``; None for a stated stack)."""

    stack: str
    phase: str
    fraction: float
    origin: str
    entry: str | None

    def text(self, entry: bool = True) -> str:
        """``<stack>: device fraction F (origin[, as <entry>])``; ``entry`` False: without the entry."""
        via = (f", as {self.entry}" if entry and self.entry and self.entry != f"{self.stack}.{self.phase}"
               else "")
        return f"{self.stack}: device fraction {self.fraction:.4g} ({self.origin}{via})"


def fraction_origin(stack: str | SoftwareStack, phase: str, table: StackTable | None = None) -> FractionOrigin:
    """The ``FractionOrigin`` of ``stack`` (a name, ``auto`` resolved, or an explicit stack) in
    ``phase``, from ``table`` (default: the shipped one)."""
    t = table or stack_table()
    name, fraction = t.name_of(stack, phase), float(t.phase(stack, phase).device_fraction)
    if not isinstance(stack, str):
        return FractionOrigin(name, phase, fraction, "stated", None)
    entry = t.entry_of(stack, phase, "device_fraction")
    ref, ref_phase = entry.split(".", 1)
    ph = t.get(ref).phase(ref_phase)
    origin = "fitted" if ph.fit_fraction else "pooled" if ph.pool_fraction else "prior"
    return FractionOrigin(name, phase, fraction, origin, entry)


def resolve(stack: str | SoftwareStack, phase: str) -> PhaseHost:
    """The ``PhaseHost`` of a deployment's ``stack`` in ``phase`` (the shipped table for names)."""
    return stack_table().phase(stack, phase)


def device_fraction(stack: str | SoftwareStack, phase: str) -> float:
    """The achievable device fraction of ``stack`` in ``phase`` (moesim/specs/software_stack.py):
    every compute operation of the step takes its kernel-model time / this (communication not)."""
    return float(resolve(stack, phase).device_fraction)


def expert_fraction(stack: str | SoftwareStack, phase: str) -> float:
    """The achievable fraction of the grouped-GEMM kernel model that ``stack``'s routed-expert
    GEMMs reach in ``phase``, on top of ``device_fraction`` (moesim/specs/software_stack.py)."""
    return float(resolve(stack, phase).expert_fraction)


def serving_stack(stack: str | SoftwareStack) -> SoftwareStack:
    """The ``SoftwareStack`` whose engine settings a serving replica of ``stack`` runs under (a
    name resolves as its decode phase: ``auto`` -> sglang)."""
    return stack if isinstance(stack, SoftwareStack) else stack_table().explicit(stack, "decode")


def serving_memory_fraction(stack: str | SoftwareStack, devices: int) -> float | None:
    """The share of each device's memory a serving engine of ``stack`` takes for weights and KV
    cache on a replica of ``devices`` devices (``SoftwareStack.serving_memory_fraction``: vLLM's
    gpu_memory_utilization, SGLang's mem_fraction_static by engine size); None when the stack
    states none."""
    return serving_stack(stack).serving_memory_fraction(devices)


def is_trtllm(stack: str | SoftwareStack | None) -> bool:
    """Whether ``stack`` (a name or an explicit ``SoftwareStack``) runs TensorRT-LLM: either of
    ``TRTLLM_STACKS`` (the PyTorch backend ``trtllm`` or the TensorRT engines ``trtllm-engine``),
    whose scheduler and trtllm-bench limits the planner applies (moesim/planner/serving_policy.py
    ``engine``)."""
    name = stack.name if isinstance(stack, SoftwareStack) else stack
    return name in TRTLLM_STACKS
