"""validation/train_router.py (--quick): the sweep runs, writes one trace per setting in the
documented format, moesim's trace reader reads it, the record is consistent with itself, and
examples/plot_routing_traces.py draws a PNG per setting.
"""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from moesim.routing.trace import load_trace
from validation import train_router as tr

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_traces(tmp_path_factory):
    out = tmp_path_factory.mktemp("traces")
    assert tr.main(["--quick", "--sweep", "--out", str(out)]) == 0
    return out


def test_sweep_has_twelve_distinct_settings():
    names = [c.name for c in tr.sweep_configs(tr.TrainConfig())]
    assert len(names) == len(set(names)) == 12  # aux {0,1e-3,1e-2} x z {off,on} x noise {off,on}
    assert "e32k2_aux0.01_z1_noise1" in names


def test_corpus_is_the_stdlib_in_fixed_order():
    a, b = tr.load_corpus(50_000), tr.load_corpus(50_000)
    assert a.dtype == np.uint8 and len(a) == 50_000 and np.array_equal(a, b)
    files = tr.stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(files) > 100
    assert a[:64].tobytes() == files[0].read_bytes()[:64]


def test_quick_sweep_writes_consistent_traces(quick_traces):
    cfg = tr.QUICK
    paths = sorted(quick_traces.glob("*.npz"))
    assert len(paths) == 12
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            counts = z["counts_SLE"]
            choices = z["choices_CLTK"]
            steps_C = z["choice_steps_C"]
            meta = json.loads(str(z["meta"]))
        S, L, E = counts.shape
        assert (S, L, E) == (cfg.steps, cfg.num_layers, cfg.num_experts)
        # every step routes T x K copies in each layer (dropless training)
        assert np.all(counts.sum(-1) == cfg.batch * cfg.seq_len * cfg.top_k)
        assert choices.shape == (len(steps_C), L, cfg.sample_tokens, cfg.top_k)
        assert choices.min() >= 0 and choices.max() < E
        assert np.all(np.sort(choices, -1)[..., 1:] != np.sort(choices, -1)[..., :-1])  # distinct experts
        assert meta["config"]["num_experts"] == E and meta["name"] == path.stem


def test_trace_read_by_moesim_routing(quick_traces):
    path = quick_traces / "e8k2_aux0.01_z1_noise1.npz"
    trace = load_trace(path, num_experts=8, top_k=2)
    with np.load(path) as z:
        assert np.array_equal(trace.counts_SE, z["counts_SLE"][:, 0])


def test_same_seed_same_trace(tmp_path):
    cfg = tr.QUICK
    corpus = tr.load_corpus(cfg.corpus_bytes)
    a = tr.train(cfg, corpus, None, log=None)
    b = tr.train(cfg, corpus, None, log=None)
    assert np.array_equal(a["counts_SLE"], b["counts_SLE"])
    assert np.array_equal(a["choices_CLTK"], b["choices_CLTK"])


def test_plot_script_writes_one_png_per_setting(quick_traces, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_routing_traces", REPO / "examples" / "plot_routing_traces.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import shutil

    two = tmp_path / "in"
    two.mkdir()
    for name in ("e8k2_aux0_z0_noise0.npz", "e8k2_aux0.01_z1_noise1.npz"):  # two settings keep it fast
        shutil.copy(quick_traces / name, two / name)
    assert mod.main([str(two), str(tmp_path / "png")]) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
    # imbalance of a hand case: loads [3, 1] -> max/mean = 3/2
    assert mod.imbalance_SL(np.array([[[3, 1]]]))[0, 0] == 1.5
    # drops of a hand case: loads [6, 1, 1] (8 copies, E 3), cf 1.0 -> C = ceil(8/3) = 3: 3 of 8 over
    assert mod.drop_fraction_SL(np.array([[[6, 1, 1]]]), 1.0)[0, 0] == 3 / 8
