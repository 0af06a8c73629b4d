"""Pipeline layouts: which decoder layers, MTP modules, embedding and LM head each pipeline rank
holds.

A layout string is Megatron-Core's ``--pipeline-model-parallel-layout`` (docs: "Custom Pipeline
Model Parallel Layout"): the pp x vpp virtual stages in order, split by ``|``; ``E`` the
embedding, ``t`` a transformer decoder layer, ``m`` an MTP module, ``L`` the loss (the LM head);
``x*n`` repeats a symbol and ``(...)*n`` a group, separators included; commas and spaces are
only for reading; empty stages are allowed (``E||t|L``). Virtual stage i runs on pipeline rank
i mod pp (its chunk i // pp). Examples: DeepSeek-V3 on PP 16 x VPP 2 ``Et*3|(tt|)*29,m|L`` (the
Megatron-Core docs), on PP 8 x VPP 4 ``Et|(tt|)*30L`` (the Megatron-Core GB200 guide).

Without a layout the decoder layers split by ceiling over the pp ranks, the embedding on the
first, the LM head and the MTP modules on the last (``pipeline_stages``); the Megatron-Bridge
DeepSeek-V3 recipes' own maps for PP x VPP (4, 1), (8, 1), (16, 1), (8, 2) and (4, 4) place the
layers the same way.

Where a layout puts MTP modules on another rank than the loss, the module (its layer and
eh_proj) runs there and its extra LM-head pass runs with the loss: Megatron-Core computes every
depth's logits in the output layer of the last stage.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from moesim.errors import SpecError

SYMBOLS = frozenset("EtmL")
_GROUP = re.compile(r"\(([^()]*)\)\*(\d+)")
_SYMBOL = re.compile(r"([EtmL])\*(\d+)")


@dataclass(frozen=True)
class RankStage:
    """What one pipeline rank holds, over all its virtual stages."""

    layers: tuple[int, ...]     # decoder layer indices, in model order
    mtp: int = 0                # MTP modules (their transformer layers and eh_proj)
    embedding: bool = False
    head: bool = False          # the LM head (the loss), and the MTP modules' head passes


def virtual_stages(layout: str) -> tuple[str, ...]:
    """The virtual stages of a layout string, each a string of ``E t m L`` symbols; SpecError
    naming ``pipeline_layout`` for anything else."""
    if not isinstance(layout, str) or not layout.strip():
        raise SpecError("pipeline_layout", layout, "a Megatron layout string such as 'Et|(tt|)*30L'")
    text = layout.replace(",", "").replace(" ", "")
    while True:
        expanded = _GROUP.sub(lambda g: g.group(1) * int(g.group(2)), text)
        if expanded == text:
            break
        text = expanded
    text = _SYMBOL.sub(lambda g: g.group(1) * int(g.group(2)), text)
    stages = tuple(text.split("|"))
    bad = set("".join(stages)) - SYMBOLS
    if bad:
        raise SpecError("pipeline_layout", layout, f"symbols E, t, m, L, '|', '*n' and '(...)*n' only "
                                                  f"(unexpected {''.join(sorted(bad))!r})")
    return stages


def pipeline_stages(num_layers: int, pp: int, vpp: int = 1, mtp: int = 0,
                    layout: str | None = None) -> tuple[RankStage, ...]:
    """What each of the ``pp`` ranks holds (module docstring). With a ``layout`` its virtual
    stages must number pp x vpp, hold exactly ``num_layers`` decoder layers, one embedding, one
    loss and ``mtp`` MTP modules; SpecError naming ``pipeline_layout`` otherwise."""
    if layout is None:
        per = math.ceil(num_layers / pp)
        return tuple(RankStage(tuple(range(s * per, min(num_layers, (s + 1) * per))), mtp if s == pp - 1 else 0,
                               s == 0, s == pp - 1) for s in range(pp))
    stages = virtual_stages(layout)
    counts = {s: sum(st.count(s) for st in stages) for s in "EtmL"}
    for why, bad in ((f"{len(stages)} stages for pp x vpp = {pp} x {vpp} = {pp * vpp}", len(stages) != pp * vpp),
                     (f"{counts['t']} decoder layers 't' for the model's {num_layers}", counts["t"] != num_layers),
                     (f"{counts['m']} MTP modules 'm' for the {mtp} trained", counts["m"] != mtp),
                     (f"{counts['E']} embeddings 'E' and {counts['L']} losses 'L' (one each)",
                      counts["E"] != 1 or counts["L"] != 1)):
        if bad:
            raise SpecError("pipeline_layout", layout, why)
    ranks: list[dict] = [dict(layers=[], mtp=0, embedding=False, head=False) for _ in range(pp)]
    next_layer = 0
    for i, st in enumerate(stages):
        r = ranks[i % pp]
        n = st.count("t")
        r["layers"].extend(range(next_layer, next_layer + n))
        next_layer += n
        r["mtp"] += st.count("m")
        r["embedding"] |= "E" in st
        r["head"] |= "L" in st
    return tuple(RankStage(tuple(sorted(r["layers"])), r["mtp"], r["embedding"], r["head"]) for r in ranks)
