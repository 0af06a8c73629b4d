"""Megatron pipeline layouts (moesim/specs/pipeline_layout.py): the layout string expands to the
pp x vpp virtual stages, virtual stage i runs on rank i mod pp, and the training step and the
memory model price what each rank holds. Checked against the rank map of Megatron-Core's own
documentation, against the ceil split (a layout that spells it out prices identically, rel
1e-12: the same arithmetic), and through the case and CLI entry points."""
from __future__ import annotations

import pytest
from numpy.testing import assert_allclose

from moesim.catalog import load_model, load_profile
from moesim.cli import run
from moesim.compute.memory import stage_params
from moesim.errors import SpecError
from moesim.specs import Deployment
from moesim.specs.parallel import Parallelism
from moesim.specs.pipeline_layout import pipeline_stages, virtual_stages
from moesim.step import Training, estimate
from moesim.step.estimate import stage_layers

B200 = load_profile("b200")
DSV3 = load_model("deepseek-v3")      # 61 decoder layers, 1 MTP module
QWEN = load_model("qwen3-30b-a3b")    # 48 MoE layers, no MTP
LLAMA405 = load_model("llama3.1-405b")  # 126 dense layers


def test_megatron_docs_rank_map():
    """Megatron-Core's "Custom Pipeline Model Parallel Layout" page: DeepSeek-V3 on PP16 x VPP2 as
    'Et*3|(tt|)*29,m|L' -> rank 0 embedding + 3 + 2 decoders, ranks 1-13 2 + 2, rank 14 2 + mtp,
    rank 15 2 + loss (its table, by hand)."""
    stages = virtual_stages("Et*3|(tt|)*29,m|L")
    assert len(stages) == 32 and stages[0] == "Ettt" and stages[30] == "m" and stages[31] == "L"
    ranks = pipeline_stages(61, 16, 2, 1, "Et*3|(tt|)*29,m|L")
    assert ranks[0].embedding and len(ranks[0].layers) == 5 and ranks[0].layers[:3] == (0, 1, 2)
    assert all(len(r.layers) == 4 and r.mtp == 0 and not r.head for r in ranks[1:14])
    assert len(ranks[14].layers) == 2 and ranks[14].mtp == 1 and not ranks[14].head
    assert len(ranks[15].layers) == 2 and ranks[15].head and ranks[15].mtp == 0
    assert sorted(i for r in ranks for i in r.layers) == list(range(61))
    # rank 1 holds virtual stages 1 and 17: decoders 3-4 and 35-36
    assert ranks[1].layers == (3, 4, 35, 36)
    assert virtual_stages("E||t|L") == ("E", "", "t", "L")          # empty stages are allowed


def test_no_layout_is_the_ceil_split():
    for model in (DSV3, QWEN):
        for pp in (1, 2, 4, 8, 16):
            ranks = pipeline_stages(model.num_layers, pp, 1, 1)
            assert [r.layers for r in ranks] == [tuple(x) for x in stage_layers(model, pp)]
            assert ranks[0].embedding and ranks[-1].head and ranks[-1].mtp == 1
            assert sum(r.mtp for r in ranks) == 1 and sum(r.head for r in ranks) == 1


@pytest.mark.parametrize("layout, why", [
    ("Et|(tt|)*30L", "MTP modules"),           # DeepSeek-V3 with its MTP module trained: no 'm'
    ("Et|(tt|)*29t|mL", "decoder layers"),      # 60 decoder layers for 61
    ("Et|(tt|)*30mL|", "stages"),               # 33 stages for 8 x 4
    ("t|(tt|)*30mL", "embeddings"),             # no embedding
    ("Et|(tt|)*30mX", "symbols"),
])
def test_layouts_that_do_not_fit_are_refused_naming_the_field(layout, why):
    with pytest.raises(SpecError, match=why) as err:
        pipeline_stages(61, 8, 4, 1, layout)
    assert err.value.field == "pipeline_layout"


def _step(dep: Deployment, model=DSV3, work=Training(256, 4096, 1)) -> float:
    return float(estimate(model, dep, work, check_memory=False).step_time_s[0])


def test_a_layout_that_spells_out_the_ceil_split_prices_the_same():
    """DeepSeek-V3 on PP 16: the Megatron-Bridge (16, 1) map [E + 4t] + [4t] x 14 + [t + m + L] is
    the ceil split with the MTP module and head on the last rank."""
    par = dict(hardware=B200, devices=128, devices_per_domain=8, pp=16, dp=8, ep=8, dtype="fp8", stack="megatron")
    plain = Deployment(**par)
    mapped = Deployment(**par, pipeline_layout="Et*4|(t*4|)*14tmL")
    assert_allclose(_step(mapped), _step(plain), rtol=1e-12)
    assert stage_params(DSV3, plain.parallelism, 1) == stage_params(DSV3, mapped.parallelism, 1, "Et*4|(t*4|)*14tmL")


def test_an_uneven_layout_paces_the_pipeline_by_its_fullest_rank():
    """Qwen3-30B on PP 2: 'Et*24|t*24L' is the even split; 'Et*30|t*18L' puts 30 layers on rank 0.
    No MTP and one layer kind: rank 0's micro-batch time is 30 / 24 of the even split's layer
    time, so the step (m + pp - 1 slots of the critical rank, plus the fixed optimizer and DP
    terms) grows, and the LM head no longer paces (it sits on the lighter rank)."""
    par = dict(hardware=B200, devices=16, devices_per_domain=8, pp=2, dp=8, ep=8, stack="megatron")
    work = Training(256, 4096, 1)
    even = Deployment(**par, pipeline_layout="Et*24|t*24L")
    uneven = Deployment(**par, pipeline_layout="Et*30|t*18L")
    assert _step(even, QWEN, work) == _step(Deployment(**par), QWEN, work)
    b = estimate(QWEN, uneven, work, check_memory=False).breakdown()
    assert b.embedding_head_s == 0.0 and _step(uneven, QWEN, work) > 1.15 * _step(even, QWEN, work)


def test_memory_follows_the_layout():
    par = Parallelism(tp=1, pp=2, dp=4, ep=4)
    even, uneven = stage_params(QWEN, par, 0, "Et*24|t*24L"), stage_params(QWEN, par, 0, "Et*30|t*18L")
    layer = (even[0][1]) / 24                      # routed-expert params per layer on a rank
    assert_allclose(uneven[0][1], 30 * layer, rtol=1e-12)
    assert_allclose(uneven[1][1], 18 * layer, rtol=1e-12)


def test_cases_and_cli_read_the_layout(capsys):
    from moesim.cases import parse_cases
    from moesim.validate import validate

    inputs = {"model": "deepseek-v3", "devices": 256, "devices_per_node": 64, "tp": 1, "pp": 8, "vpp": 4,
              "ep": 32, "global_batch": 2048, "seq_len": 4096, "micro_batch": 1, "dtype": "fp8",
              "mtp_depth": 0, "framework": "Megatron-Core"}

    def case(**kw):
        (c,) = validate(parse_cases({"schema": "moesim-cases/1", "cases": [
            {"id": "c", "kind": "training", "hardware": "gb200", "inputs": {**inputs, **kw},
             "measured": {"metric": "tokens_per_s_per_device", "value": 1000.0}}]})).cases
        return c

    stated = case(pipeline_layout="Et|(tt|)*30L")
    assert stated.status == "ok" and "pipeline_layout" not in dict(stated.ignored_inputs)
    bad = case(pipeline_layout="Et|(tt|)*29t|L")
    assert bad.status != "ok" and "pipeline_layout" in bad.reason
    args = ["step", "--model", "deepseek-v3", "--hw", "gb200", "--devices", "256", "--devices-per-node", "64",
            "--pp", "8", "--vpp", "4", "--ep", "32", "--phase", "train", "--global-batch", "2048",
            "--seq-len", "4096", "--dtype", "fp8", "--no-memory-check"]
    assert run(args + ["--mtp-layers", "0", "--pipeline-layout", "Et|(tt|)*30L"]) == 0
    capsys.readouterr()
    assert run(args + ["--pipeline-layout", "Et|(tt|)*30L"]) == 2      # the MTP module has no 'm'
    err = capsys.readouterr().err
    assert "pipeline_layout" in err and len(err.strip().splitlines()) == 1


def test_a_stated_layout_may_leave_stages_without_decoder_layers():
    # Llama 3.1 405B at PP 16 x VPP 8 = 128 virtual stages over 126 layers: refused on the even
    # split, run with the recipe's layout (embedding and loss each in one stage's place)
    work = Training(global_batch=64, seq_len=8192, micro_batch=1)
    base = dict(hardware=load_profile("gb200"), devices=256, tp=4, pp=16, vpp=8, dp=4, devices_per_domain=64)
    with pytest.raises(SpecError, match="pp x vpp"):
        estimate(LLAMA405, Deployment(**base), work, check_memory=False)
    dep = Deployment(**base, pipeline_layout="E|(t|)*126L")
    b = estimate(LLAMA405, dep, work, check_memory=False).breakdown(0)
    assert b.step_time_s > 0
    with pytest.raises(SpecError, match="pipeline_layout"):  # a layout that does not fill 16 x 8 is still refused
        estimate(LLAMA405, Deployment(**base, pipeline_layout="E|(t|)*125L"), work, check_memory=False)
