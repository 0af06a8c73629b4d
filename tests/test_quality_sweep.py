"""validation/quality_sweep.py and the shared-expert backup path of the reference MoE.

Hand cases are asserted exactly (integers) or to fp32 rounding (atol 1e-6 on O(1) outputs);
the quick sweep is a smoke run (tiny dims, 4 steps) checking the file's structure and the
identities every row must satisfy, not the values of a trained model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from moesim.quality.table import table_from_dict
from validation import quality_sweep as qs
from validation.torch_moe import MoEBlock, MoEConfig
from validation.torch_router import Router


def _router_with_logits(cfg: MoEConfig) -> Router:
    r = Router(cfg)
    with torch.no_grad():
        r.gate.weight.copy_(torch.eye(cfg.num_experts))
    return r


# 4 tokens, E = 4, top-1, cf 1: C = ceil(1 x 4 x 1 / 4) = 1; every token prefers expert 0.
LOGITS = torch.tensor([[5.0, 4, 0, 0], [5.0, 4, 0, 0], [5.0, 0, 4, 0], [5.0, 0, 0, 4]])


def test_shared_backup_hand_case():
    cfg = MoEConfig(hidden=4, expert_ffn=2, num_experts=4, top_k=1, num_shared_experts=1,
                    shared_expert_ffn=2, capacity_factor=1.0, overflow="shared")
    r = _router_with_logits(cfg)(LOGITS)
    assert r.expert_TK.flatten().tolist() == [0, -1, -1, -1]
    assert (r.dropped, r.rerouted, r.backed_up) == (0, 0, 3)
    # top-1 with normalised weights: each backed-up copy carries weight 1 to the shared expert
    assert_close(r.backup_weight_T, torch.tensor([0.0, 1.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    assert r.weight_TK[1:].abs().sum().item() == 0.0


def test_shared_backup_block_output_is_weighted_shared_expert():
    torch.manual_seed(0)
    base = MoEConfig(hidden=4, expert_ffn=3, num_experts=4, top_k=1, num_shared_experts=1,
                     shared_expert_ffn=3, capacity_factor=1.0)
    blocks = {pol: MoEBlock(MoEConfig(**{**base.__dict__, "overflow": pol}), impl="loop")
              for pol in ("drop", "shared")}
    for b in blocks.values():  # identical weights: the blocks differ only in the overflow policy
        b.load_state_dict(blocks["drop"].state_dict())
        with torch.no_grad():
            b.router.gate.weight.copy_(torch.eye(4))
    y_drop, y_shared = blocks["drop"](LOGITS), blocks["shared"](LOGITS)
    shared = blocks["drop"].shared(LOGITS)
    # hand derivation: token 0 is computed by expert 0 under both policies; tokens 1-3 are dropped
    # (output = shared(x)) or backed up with weight 1 (output = shared(x) + 1 x shared(x)).
    assert_close(y_shared[0], y_drop[0], atol=1e-6, rtol=0)
    assert_close(y_drop[1:], shared[1:], atol=1e-6, rtol=0)
    assert_close(y_shared[1:], 2 * shared[1:], atol=1e-6, rtol=0)


def test_shared_policy_needs_shared_experts():
    with pytest.raises(ValueError, match="overflow"):
        MoEConfig(hidden=4, expert_ffn=2, num_experts=4, top_k=1, capacity_factor=1.0, overflow="shared")


def test_eval_grid_covers_the_issue():
    keys = [s.key for s in qs.eval_settings(4)]
    assert keys[0] == "k4_dropless_drop"  # the reference comes first
    assert len(keys) == len(set(keys)) == 1 + 6 * 3 + 3 * 3
    assert {"k4_cf0.5_reroute", "k4_cf2_shared", "k1_dropless_drop", "k3_cf1.25_drop"} <= set(keys)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    assert qs.main(["--quick", "--out", str(out / "m.json"), "--table", str(out / "t.json")]) == 0
    return json.loads((out / "m.json").read_text()), json.loads((out / "t.json").read_text())


def test_quick_sweep_rows_are_consistent(quick):
    doc, table = quick
    assert doc["format"] == qs.FORMAT and len(doc["settings"]) == 5
    for st in doc["settings"]:
        rows = st["results"]
        assert rows[0]["loss_increase"] == 0.0 and rows[0]["drop_fraction"] == 0.0
        for r in rows:
            assert len(r["loss_per_batch"]) == 2
            assert np.isclose(r["loss"], np.mean(r["loss_per_batch"]), atol=1e-6)
            assert np.isclose(r["perplexity"], np.exp(r["loss"]), rtol=1e-12)
            total = r["drop_fraction"] + r["reroute_fraction"] + r["backup_fraction"]
            assert 0.0 <= total <= 1.0
            if r["capacity_factor"] is None:
                assert total == 0.0
            if r["overflow"] == "drop":
                assert r["reroute_fraction"] == r["backup_fraction"] == 0.0
            if r["overflow"] == "shared":
                assert r["drop_fraction"] == r["reroute_fraction"] == 0.0  # every overflow is backed up
    parsed = table_from_dict(table)
    assert len(parsed.points) == 5 * len(qs.eval_settings(qs.QUICK.top_k))
    assert set(parsed.policies) == {"drop", "reroute", "shared"}
    assert "proxy" in parsed.limits


def test_heldout_windows_are_outside_the_training_slice():
    cfg = qs.QUICK
    corpus = np.arange(cfg.corpus_bytes + 10_000, dtype=np.int64) % 251
    batches = qs.heldout_batches(corpus.astype(np.uint8), cfg, 3, span=10_000)
    assert len(batches) == 3 and batches[0].shape == (cfg.batch, cfg.seq_len + 1)
    with pytest.raises(ValueError, match="held-out"):
        qs.heldout_batches(corpus[:cfg.corpus_bytes + 100].astype(np.uint8), cfg, 3, span=10_000)


def test_table_from_the_committed_measurement_is_the_shipped_table(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "t.json"
    assert qs.main(["--table-from", str(repo / "validation/data/quality-cpu-tinymoe.json"), "--table", str(out)]) == 0
    shipped = json.loads((repo / "moesim/quality/data/quality-cpu-tinymoe.json").read_text())
    assert json.loads(out.read_text()) == shipped
