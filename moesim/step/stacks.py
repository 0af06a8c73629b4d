"""The named software stacks (moesim/data/stacks.toml) and their resolution per phase.

``Deployment.stack`` is a stack name or an explicit ``SoftwareStack``. A name is looked up in
the table, read once from the package (``stack_table``); ``auto`` is the production default of
each phase: ``train`` -> ``megatron`` (eager Megatron-Core / TE), ``prefill`` and ``decode`` ->
``sglang`` (eager prefill, CUDA-graph decode) (``AUTO``; other modules rely on these names).
A ``host_op_us`` given as ``"<stack>.<phase>"`` is that entry's value (``megatron-cudagraph``
issues its uncaptured experts at ``megatron.train``'s rate).

Fit parameters are named ``"<stack>.<phase>.host_op_us"`` (``FIT_PARAMS``: the rows marked
``fit = true``); ``with_values`` returns a table with some of them set, which the fits of
moesim/calibrate.py pass to the case predictors.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from moesim.errors import SpecError
from moesim.specs.software_stack import STACK_NAMES, STACK_PHASES, PhaseHost, SoftwareStack

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
        """The ``PhaseHost`` of ``stack`` in ``phase``, with a referenced ``host_op_us`` resolved."""
        ph = self.explicit(stack, phase).phase(phase)
        seen = {f"{self.name_of(stack, phase)}.{phase}"}
        while isinstance(ph.host_op_us, str):
            ref = ph.host_op_us
            if ref in seen:
                raise SpecError("stack", ref, "host_op_us references form a cycle")
            seen.add(ref)
            name, _, ref_phase = ref.partition(".")
            ph = ph.model_copy(update={"host_op_us": self.get(name).phase(ref_phase).host_op_us})
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
        """A copy with ``"<stack>.<phase>.host_op_us"`` values set (and ``fitted`` noted on them)."""
        out = dict(self.stacks)
        for path, value in values.items():
            name, phase = split_param(path)
            s = out[name]
            ph = s.phase(phase).model_copy(update={"host_op_us": float(value)})
            update = {phase: ph} if fitted is None else {phase: ph, "fitted": fitted}
            out[name] = s.model_copy(update=update)
        return StackTable(out)

    def entry_of(self, stack: str | SoftwareStack, phase: str) -> str | None:
        """``"<stack>.<phase>"`` whose ``host_op_us`` prices ``stack``'s eager operators in
        ``phase`` (references followed); None when the phase issues none (captured ``all``)."""
        name = self.name_of(stack, phase)
        ph = self.get(name).phase(phase)
        if ph.captured == "all":
            return None
        entry = f"{name}.{phase}"
        while isinstance(ph.host_op_us, str):
            entry = ph.host_op_us
            ref, _, ref_phase = entry.partition(".")
            ph = self.get(ref).phase(ref_phase)
        return entry

    def value(self, path: str) -> float:
        name, phase = split_param(path)
        return float(self.phase(name, phase).host_op_us)


def split_param(path: str) -> tuple[str, str]:
    """``"<stack>.<phase>.host_op_us"`` -> (stack, phase); SpecError naming the parameter."""
    parts = path.rsplit(".", 2)
    if len(parts) != 3 or parts[2] != "host_op_us" or parts[0] not in STACK_NAMES or parts[1] not in STACK_PHASES:
        raise SpecError("stack parameter", path, "<stack>.<phase>.host_op_us with a stack of the table")
    return parts[0], parts[1]


def parse_table(data: dict) -> StackTable:
    """A ``StackTable`` from the TOML's mapping; every name of ``STACK_NAMES`` but auto present."""
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
    """The fitted parameters of the table: every ``fit = true`` phase, as ``<stack>.<phase>.host_op_us``."""
    table = table or stack_table()
    return tuple(f"{n}.{p}.host_op_us" for n, s in table.stacks.items() for p in STACK_PHASES if s.phase(p).fit)


def resolve(stack: str | SoftwareStack, phase: str) -> PhaseHost:
    """The ``PhaseHost`` of a deployment's ``stack`` in ``phase`` (the shipped table for names)."""
    return stack_table().phase(stack, phase)
