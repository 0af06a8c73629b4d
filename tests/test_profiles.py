"""Built-in hardware profiles: the catalog, the loader's refusals, and facts from the reference sheet.

Expected values are quoted from docs/reference/hardware-specs.md ("sheet s1" = its section 1, and so
on); each assertion names the section it comes from. Peaks are dense (sheet "Conventions").
"""
from __future__ import annotations

import copy
import re

import pytest

from moesim import catalog
from moesim.errors import MoesimError
from moesim.specs import HardwareProfile

EXPECTED_PROFILES = {
    "a100-sxm-80gb", "h100-sxm", "h800-sxm", "h200-sxm", "b200", "b300", "gb200", "gb300",
    "mi300x", "mi325x", "tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e", "cpu-host",
}
TPUS = {"tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e"}

# NVIDIA's sparse Hopper headlines (sheet s1 "Vendor headline": BF16 "1,979*", FP8 "3,958*"); a dense
# bf16 peak equal to one of them is the dense/sparse mix-up of sheet s5.
HOPPER_SPARSE_TFLOPS = {1979.0, 3958.0}
# Each device's own sparse BF16 figure (sheet s1: NVIDIA "dense = sparse / 2", AMD "2x with structured
# sparsity"); the profile's bf16 must be the dense half, never this.
SPARSE_BF16_TFLOPS = {
    "a100-sxm-80gb": 624.0, "h100-sxm": 1979.0, "h800-sxm": 1979.0, "h200-sxm": 1979.0,
    "b200": 4500.0, "b300": 4500.0, "gb200": 5000.0, "gb300": 5000.0,
    "mi300x": 2614.9, "mi325x": 2614.9,
}


def profile(name: str) -> HardwareProfile:
    return catalog.load_profile(name)


def h100_data() -> dict:
    """A fresh, valid profile dict (the h100-sxm TOML) to break one field at a time."""
    return copy.deepcopy(catalog.read_toml(catalog._profiles_dir() / "h100-sxm.toml"))


# ---- the catalog ------------------------------------------------------------------------------
def test_catalog_lists_exactly_the_built_in_profiles():
    names = catalog.list_profiles()
    assert len(names) == len(EXPECTED_PROFILES) == 15
    assert set(names) == EXPECTED_PROFILES


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_every_profile_loads_and_is_self_consistent(name):
    p = profile(name)
    assert p.name == name  # the file name is the profile name
    assert p.compute.peak_dense_tflops, "a profile needs at least one peak"
    # Conventions: both directions of the scale-up fabric are stored, bidirectional = 2 x one way.
    su = p.scale_up
    assert su.bandwidth_bidirectional_GBps == pytest.approx(2 * su.bandwidth_per_direction_GBps)
    assert su.domain_size <= su.max_domain_size
    assert p.price.usd_per_device_hour > 0
    assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", p.price.as_of), p.price.as_of
    assert "PLACEHOLDER" not in p.price.sources.get("usd_per_device_hour", "")
    # Efficiency is the generic prior or a calibration that says on what it was fitted.
    assert p.efficiency.origin.strip()


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_every_reference_key_is_cited(name):
    """A reference nobody cites is stale; every key in [references] appears in a source or the notes."""
    p = profile(name)
    cited = [p.notes]
    for section in (p.compute, p.memory, p.scale_up, p.scale_out, p.ici, p.price):
        if section is not None:
            cited.extend(section.sources.values())
    text = "\n".join(cited)
    for key in p.references:
        assert key in text, f"{name}: reference {key} is cited nowhere"


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_tpus_and_only_tpus_have_ici(name):
    p = profile(name)
    if name in TPUS:
        assert p.kind == "tpu" and p.ici is not None
        assert p.scale_up.topology == "torus"
        assert p.compute.compute_unit_kind == "mxu"
    else:
        assert p.ici is None


# ---- the loader refuses nonsense, naming the field ------------------------------------------
def test_loader_rejects_a_number_without_a_source():
    data = h100_data()
    del data["memory"]["sources"]["hbm_GB"]
    with pytest.raises(MoesimError, match=r"memory.hbm_GB = 80.0: every number needs a source"):
        catalog.build(HardwareProfile, data)


@pytest.mark.parametrize(
    ("section", "field"),
    [("memory", "hbm_bandwidth_GBps"), ("scale_up", "bandwidth_per_direction_GBps"),
     ("scale_out", "nic_Gbps_per_device")],
)
def test_loader_rejects_a_negative_bandwidth(section, field):
    data = h100_data()
    data[section][field] = -450
    with pytest.raises(MoesimError, match=rf"{section}\.{field} = -450"):
        catalog.build(HardwareProfile, data)


def test_loader_rejects_an_unknown_dtype():
    data = h100_data()
    data["compute"]["peak_dense_tflops"]["fp7"] = 100.0
    with pytest.raises(MoesimError, match=r"compute.peak_dense_tflops = 'fp7': allowed dtypes"):
        catalog.build(HardwareProfile, data)


def test_loader_rejects_an_unknown_top_level_key():
    data = h100_data()
    data["colour"] = "green"
    with pytest.raises(MoesimError, match=r"colour = 'green': Extra inputs are not permitted"):
        catalog.build(HardwareProfile, data)


def test_loader_rejects_a_tpu_without_ici():
    data = copy.deepcopy(catalog.read_toml(catalog._profiles_dir() / "tpu-v5p.toml"))
    del data["ici"]
    with pytest.raises(MoesimError, match="ici"):
        catalog.build(HardwareProfile, data)


def test_unknown_profile_name_suggests_close_names():
    with pytest.raises(MoesimError, match="h100-sxm"):
        catalog.load_profile("h100-sxn")


# ---- facts from the reference sheet ----------------------------------------------------------
def test_hopper_dense_peaks():
    # sheet s1: H100 SXM dense BF16 989.4, FP8 1,978.9 (product page prints sparse 1,979* / 3,958*).
    h100 = profile("h100-sxm")
    assert h100.compute.peak_dense_tflops["bf16"] == pytest.approx(989.4, rel=1e-6)
    assert h100.compute.peak_dense_tflops["fp8"] == pytest.approx(1978.9, rel=1e-6)
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12, rel=1e-6)  # SI accessor, FLOP/s
    # sheet s1: H200 compute identical to H100 SXM; H800 third-party tables copy the H100 figures.
    for name in ("h200-sxm", "h800-sxm"):
        assert profile(name).compute.peak_dense_tflops["bf16"] == pytest.approx(989.4, rel=1e-6)


def test_h800_sm_count_from_deepseek_report():
    # DeepSeek-V3 report s3.5.1: "20 out of the 132 SMs available in the H800 GPU".
    assert profile("h800-sxm").compute.compute_units == 132


def test_nvlink4_per_direction_is_half_the_bidirectional_figure():
    # sheet Conventions and s3: NVLink 4 = 900 GB/s bidirectional per GPU, 450 GB/s per direction.
    for name in ("h100-sxm", "h200-sxm"):
        su = profile(name).scale_up
        assert su.bandwidth_bidirectional_GBps == 900
        assert su.bandwidth_per_direction_GBps == 450 == su.bandwidth_bidirectional_GBps / 2
    # sheet s3: H800 NVLink restricted to 400 GB/s bidirectional, 200 per direction (C).
    assert profile("h800-sxm").scale_up.bandwidth_per_direction_GBps == 200


def test_blackwell_power_points_are_not_mixed():
    # sheet s1: HGX B200 (1,000 W) 2,250 / 4,500 / 9,000 dense; GB200 NVL72 (~1,200 W) 2,500 / 5,000 / 10,000.
    b200, gb200 = profile("b200").compute.peak_dense_tflops, profile("gb200").compute.peak_dense_tflops
    assert (b200["bf16"], b200["fp8"], b200["fp4"]) == (2250, 4500, 9000)
    assert (gb200["bf16"], gb200["fp8"], gb200["fp4"]) == (2500, 5000, 10000)


def test_blackwell_ultra_fp4_is_not_halved():
    # sheet s1: GB300 FP4 20 | 15 PF sparse | dense (4:3, never halve): dense 15,000, not 10,000.
    assert profile("gb300").compute.peak_dense_tflops["fp4"] == 15000
    # sheet s1: B300 dense FP4 is 13,500 (108 PF / 8, every 8-GPU total) or 14,000 (datasheet per-GPU
    # row); the profile records 13,500. Halving the 18 PF sparse figure would give 9,000.
    b300 = profile("b300")
    assert b300.compute.peak_dense_tflops["fp4"] == 13500
    assert "13,500" in b300.compute.sources["peak_dense_tflops"]
    # sheet s1: FP8 and BF16 did not change from Blackwell to Blackwell Ultra.
    assert b300.compute.peak_dense_tflops["fp8"] == profile("b200").compute.peak_dense_tflops["fp8"]
    assert profile("gb300").compute.peak_dense_tflops["bf16"] == 2500


def test_nvl72_domains():
    # sheet s3: 72 GPUs per NVL72; NVLink domains up to 576 GPUs (N-MC) for GB200 and GB300.
    for name in ("gb200", "gb300"):
        su = profile(name).scale_up
        assert (su.domain_size, su.max_domain_size) == (72, 576)
        assert su.topology == "switch"
    # sheet s4: GB300 and HGX B300 move to 800 Gb/s ConnectX-8 per GPU; B200/GB200 have 400.
    assert profile("gb300").scale_out.nic_Gbps_per_device == 800
    assert profile("b300").scale_out.nic_Gbps_per_device == 800
    assert profile("gb200").scale_out.nic_Gbps_per_device == 400


def test_amd_peaks_and_full_mesh():
    # sheet s1: MI300X dense BF16 1,307.4, FP8 2,614.9 (ROCm table); s2: 304 CUs, 192 GB, 5.3 TB/s.
    mi = profile("mi300x")
    assert mi.compute.peak_dense_tflops["bf16"] == pytest.approx(1307.4, rel=1e-6)
    assert mi.compute.peak_dense_tflops["fp8"] == pytest.approx(2614.9, rel=1e-6)
    assert (mi.compute.compute_units, mi.compute.compute_unit_kind) == (304, "cu")
    assert (mi.memory.hbm_GB, mi.memory.hbm_bandwidth_GBps) == (192, 5300)
    # sheet s3: 8 GPUs fully connected by 7 Infinity Fabric links each.
    for name in ("mi300x", "mi325x"):
        su = profile(name).scale_up
        assert (su.topology, su.links_per_device, su.domain_size) == ("full_mesh", 7, 8)
    # sheet s2: MI325X ships with 256 GB.
    assert profile("mi325x").memory.hbm_GB == 256


def test_tpu_facts():
    # sheet s2: v5p 95 GB HBM2e at 2,765 GB/s; s1: bf16 459, FP8 row = 459 (same rate).
    v5p = profile("tpu-v5p")
    assert v5p.memory.hbm_GB == 95
    assert v5p.memory.hbm_bandwidth_GBps == 2765
    assert v5p.compute.peak_dense_tflops == {"bf16": 459.0, "fp8": 459.0}
    # sheet s3: v5p 3D torus, largest single slice 6,144 chips, 4 chips per host (s4).
    assert (v5p.ici.torus_dims, v5p.ici.max_slice_chips, v5p.ici.chips_per_host) == (3, 6144, 4)
    # sheet s2: v4 is 32 GiB (stored as decimal GB).
    assert profile("tpu-v4").hbm_bytes == pytest.approx(32 * 2**30, rel=1e-12)
    # sheet s1: bf16 peaks 275 / 197 / 918 TFLOPS.
    for name, bf16 in (("tpu-v4", 275), ("tpu-v5e", 197), ("tpu-v6e", 918)):
        assert profile(name).compute.peak_dense_tflops["bf16"] == bf16
    # sheet s3: v5e and v6e are 2D tori of 256 chips, 8 chips per host.
    for name in ("tpu-v5e", "tpu-v6e"):
        ici = profile(name).ici
        assert (ici.torus_dims, ici.links_per_chip, ici.max_slice_chips, ici.chips_per_host) == (2, 4, 256, 8)
    # MXUs per chip: v4 2 TensorCores x 4 = 8, v5e 4, v5p 8, v6e 2 (sheet s2).
    mxus = {n: profile(n).compute.compute_units for n in sorted(TPUS)}
    assert mxus == {"tpu-v4": 8, "tpu-v5e": 4, "tpu-v5p": 8, "tpu-v6e": 2}


def test_scale_out_where_the_sheet_has_it():
    # sheet s4: v5e 2 x 100 Gb/s per 8-chip host = 25 Gb/s per chip (C); v5p 50 Gb/s DCN per chip.
    assert profile("tpu-v5e").scale_out.nic_Gbps_per_device == 25
    assert profile("tpu-v5p").scale_out.nic_Gbps_per_device == 50
    # sheet s4: unconfirmed for TPU v4, TPU v6e and MI325X: no [scale_out] rather than a guess.
    for name in ("tpu-v4", "tpu-v6e", "mi325x"):
        assert profile(name).scale_out is None


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_bf16_is_dense_and_below_fp8(name):
    peaks = profile(name).compute.peak_dense_tflops
    if "bf16" in peaks and "fp8" in peaks:
        if name == "tpu-v5p":
            # sheet s1 note: Google's v5p doc prints FP8 = 459 = BF16; no separate FP8 speed-up.
            assert peaks["fp8"] == peaks["bf16"]
        else:
            assert peaks["bf16"] < peaks["fp8"]
    if "bf16" in peaks:
        assert peaks["bf16"] not in HOPPER_SPARSE_TFLOPS
        if name in SPARSE_BF16_TFLOPS:
            assert peaks["bf16"] == pytest.approx(SPARSE_BF16_TFLOPS[name] / 2, rel=1e-3)


def test_cpu_host_is_measured():
    p = profile("cpu-host")
    assert (p.vendor, p.kind) == ("cpu", "cpu")
    assert p.scale_up.topology == "switch"
    assert p.scale_up.domain_size == p.scale_up.max_domain_size == 4
    assert p.compute.compute_units == 2
    for section in (p.compute, p.memory):
        for field, source in section.sources.items():
            assert "measure_host.py" in source or "/proc/meminfo" in source, (field, source)


def test_measure_host_script_runs_small():
    """The script that produced cpu-host's numbers still runs (tiny sizes; values not judged)."""
    from validation.measure_host import measure

    result = measure(n=64, mib=1, repeats=1)
    assert result["summary"]["peak_tflops"]["fp32"] > 0
    assert result["summary"]["memory_bandwidth_GBps"] == pytest.approx(
        2 * result["summary"]["copy_rate_GBps"]
    )  # STREAM convention counts read + write, the copy rate counts bytes moved once


# ---- usable memory: the driver's total, where a source gives it ------------------------------
DRIVER_MIB = {"h100-sxm": 81559, "h800-sxm": 81559, "a100-sxm-80gb": 81920, "h200-sxm": 143771,
              "b200": 183359, "mi300x": 196592, "mi325x": 262144,
              "gb200": 189471}  # C: B200's driver-to-printed ratio on GB200's 186 GB (same GPU)


def test_gb200_usable_memory_is_b200s_ratio_on_its_printed_capacity():
    # the transfer, to the MiB: 186 GB x 183,359 MiB / 180 GB = 189,471.0 MiB, more than B200's
    assert profile("gb200").memory.runtime_MiB == round(186 * 183359 / 180)
    assert profile("gb200").hbm_bytes > profile("b200").hbm_bytes


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_usable_memory_is_the_driver_total_else_the_printed_capacity(name):
    """hardware-specs.md s2a: nvidia-smi / rocm-smi totals are 6.8-7.4% above the printed decimal GB
    on every part that has one (the GB vs GiB convention plus reserved stacks); the rest keep the
    printed figure."""
    p = profile(name)
    if name in DRIVER_MIB:
        assert p.memory.runtime_MiB == DRIVER_MIB[name]
        assert p.hbm_bytes == DRIVER_MIB[name] * 2**20
        assert 1.06 < p.hbm_bytes / (p.memory.hbm_GB * 1e9) < 1.08
    else:
        assert p.memory.runtime_MiB is None
        assert p.hbm_bytes == p.memory.hbm_GB * 1e9


def test_memory_model_allocates_from_the_driver_total():
    from moesim.compute.memory import memory_footprint
    from moesim.catalog import load_model
    from moesim.specs import Parallelism

    model, hw = load_model("deepseek-v3"), profile("h200-sxm")
    fp = memory_footprint(model, hw, Parallelism(tp=1, dp=8, ep=8, attention_layout="dp"), mode="serve",
                          weight_dtype="fp8", kv_dtype="fp8", kv_tokens=0)
    assert fp.capacity_bytes == pytest.approx(143771 * 2**20)


def test_loader_rejects_a_driver_total_without_a_source():
    data = h100_data()
    del data["memory"]["sources"]["runtime_MiB"]
    with pytest.raises(MoesimError, match=r"memory.runtime_MiB = 81559.0: every number needs a source"):
        catalog.build(HardwareProfile, data)


@pytest.mark.parametrize("mib", [40960, 120000])
def test_loader_rejects_a_driver_total_of_another_part(mib):
    """A40 GB total on an 80 GB profile (0.54x) or 1.57x: another part's figure, named with the range."""
    data = h100_data()
    data["memory"]["runtime_MiB"] = mib
    with pytest.raises(MoesimError, match=r"memory.runtime_MiB = \d+\.0: allowed: 0.9 to 1.15 x the printed hbm_GB"):
        catalog.build(HardwareProfile, data)


@pytest.mark.parametrize("section, key, bad, expected", [
    ("memory", "runtime_MiB", 50000, r"memory\.runtime_MiB: allowed: 0\.9 to 1\.15 x the printed hbm_GB"),
    ("scale_up", "domain_size", 800, r"scale_up\.domain_size: allowed: at most max_domain_size"),
    ("compute", "peak_dense_tflops", {"bf16": -3.0}, r"compute\.peak_dense_tflops\.bf16: allowed: a positive number"),
])
def test_a_profile_file_names_the_field_and_the_range_without_quoting_it(tmp_path, section, key, bad, expected):
    """A file loaded by path: the error names the field and what is allowed (the validator's
    rule, not pydantic's 'invalid value'), and never quotes the file's value."""
    data = h100_data()
    data[section][key] = bad
    path = tmp_path / "mine.toml"
    catalog.write_toml(data, path)
    with pytest.raises(MoesimError, match=expected) as err:
        catalog.load_profile(str(path))
    text = str(err.value)
    assert "not shown" not in text and "\n" not in text
    message = text.replace(str(path), "")  # the temporary path may hold any digits
    assert str(bad if not isinstance(bad, dict) else "-3") not in message
