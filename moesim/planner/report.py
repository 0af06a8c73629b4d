"""Rendering a plan for people: the ranked table, the answer, rejections; CSV and the Pareto plot."""
from __future__ import annotations

import csv
from pathlib import Path

from moesim.errors import MoesimError
from moesim.planner.plan import PlanResult, _row
from moesim.planner.quality_cost import LIMITS as QUALITY_LIMITS
from moesim.textfmt import seconds, table


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def _drops(ev) -> str:
    """Capacity factor and dropped share of routed copies ("-" dropless)."""
    cf = ev.candidate.capacity_factor
    return "-" if cf is None else f"cf {cf:g}: {ev.drop_fraction:.1%}"


def loss_text(ev) -> str:
    """Predicted loss increase (nats) with its band; "-" when not predicted, "0" when nothing overflows."""
    x = ev.loss_increase
    if x is None:
        return "-"
    if x == 0.0:
        return "0"
    return f"+{x:.4f} ({ev.loss_increase_low:.4f}-{ev.loss_increase_high:.4f})"


def _serving_rows(result: PlanResult, top: int, mark: frozenset = frozenset()):
    verified = {v.candidate.key(): v for v in result.verifications}
    frontier = {r.candidate.key() for r in result.frontier}
    for i, r in enumerate(result.ranked[:top], 1):
        ev, c = r.evaluation, r.candidate
        v = verified.get(c.key())
        tpot = _ms(v.tpot_p99_s) + "*" if v and v.tpot_p99_s is not None else _ms(ev.tpot_s)
        ttft = _ms(v.ttft_p99_s) + "*" if v and v.ttft_p99_s is not None else _ms(ev.ttft_s)
        yield (
            f"{i}{'f' if c.key() in frontier else ''}", c.hardware + ("!" if c.hardware in mark else ""),
            f"{r.replicas}x{c.devices}={r.total_devices}",
            r.nodes, c.layout(), c.batch, f"{ev.tokens_per_s / c.devices:,.0f}", tpot, ttft,
            "-" if ev.memory_headroom_GiB is None else f"{ev.memory_headroom_GiB:.1f}",
            f"{r.usd_per_hour:,.2f}", f"{r.usd_per_million_tokens:.3f}", _drops(ev), loss_text(ev), ev.bottleneck,
        )


def _training_rows(result: PlanResult, top: int, mark: frozenset = frozenset()):
    frontier = {r.candidate.key() for r in result.frontier}
    for i, r in enumerate(result.ranked[:top], 1):
        ev, c = r.evaluation, r.candidate
        yield (
            f"{i}{'f' if c.key() in frontier else ''}", c.hardware + ("!" if c.hardware in mark else ""),
            c.devices, r.nodes, c.layout(), c.batch,
            f"{ev.tokens_per_s / c.devices:,.0f}", f"{(ev.mfu or 0) * 100:.1f}", f"{r.days:.1f}",
            seconds(ev.step_time_s),
            "-" if ev.memory_headroom_GiB is None else f"{ev.memory_headroom_GiB:.1f}",
            f"{r.total_usd:,.0f}", _drops(ev), loss_text(ev), ev.bottleneck,
        )


def _per_hardware(result: PlanResult) -> str:
    """The cheapest feasible deployment of each candidate hardware (or that it has none)."""
    rows = []
    for hw in result.scenario.hardware:
        best = next((r for r in result.ranked if r.candidate.hardware == hw), None)
        if best is None:
            rows.append((hw, "-", "-", "-", "no feasible deployment"))
            continue
        c = best.candidate
        rows.append((hw, best.total_devices, f"{best.usd_per_hour:,.2f}", f"{best.usd_per_million_tokens:.3f}",
                     f"{c.layout()} batch {c.batch}, {best.evaluation.bottleneck}-bound"))
    return table(rows, ["hardware", "devices", "$/h", "$/M tok", "layout"])


def _answer_text(result: PlanResult) -> str:
    a, s = result.answer, result.scenario
    if a is None:
        return "no deployment meets the target"
    c = a.ranked.candidate
    label = "co-located answer" if getattr(result, "disaggregated", None) is not None else "answer"
    head = (f"{label}: {a.total_devices} x {c.hardware} ({a.replicas} replica(s) of {c.devices}, {c.layout()}, "
            f"batch {c.batch}/device), ${a.usd_per_hour:,.2f}/h")
    if s.kind == "training":
        r = a.ranked
        return head + f", {r.days:.1f} days, ${r.total_usd:,.0f} total, MFU {(r.evaluation.mfu or 0) * 100:.1f}%"
    head += f", ${a.usd_per_million_tokens:.3f}/M output tokens"
    if a.verified and a.devices_ci:
        v = a.verification
        if v.replicas is not None:
            lo, hi = v.replicas_ci or (v.replicas, v.replicas)
            rate = (f"SLO met at {v.max_request_rate_per_s:.2f} req/s per replica with {v.replicas} replica(s) "
                    f"(95% interval {lo}-{hi} replicas)")
        else:
            rate = f"{v.max_request_rate_per_s:.2f} req/s per replica (95% CI {v.rate_ci_low:.2f}-{v.rate_ci_high:.2f})"
        head += (f"\n  verified by the serving DES: {rate} -> devices {a.devices_ci[0]}-{a.devices_ci[1]}, "
                 f"${a.usd_per_hour_ci[0]:,.2f}-{a.usd_per_hour_ci[1]:,.2f}/h; p99 TTFT {_ms(v.ttft_p99_s)} ms, "
                 f"p99 TPOT {_ms(v.tpot_p99_s)} ms")
        for note in v.notes:
            head += f"\n  serving DES: {note}"
    else:
        head += "\n  (analytic estimate; not verified by the serving DES)"
    return head


def _target_text(s) -> str:
    if s.kind == "training":
        w = s.workload
        return (f"train {s.model} on {w.tokens_to_train:.3g} tokens within {w.deadline_days:g} days "
                f"(seq {w.seq_len}, global batch {w.global_batch}, {w.dtype})")
    w, slo = s.workload, s.slo
    lim = ", ".join(x for x in (
        f"p{slo.percentile:g} TPOT <= {slo.tpot_s * 1e3:g} ms" if slo.tpot_s else "",
        f"p{slo.percentile:g} TTFT <= {slo.ttft_s * 1e3:g} ms" if slo.ttft_s else "",
        f"p{slo.percentile:g} end-to-end <= {slo.e2e_s:g} s" if slo.e2e_s else "") if x)
    return (f"serve {s.model} at {s.target_output_tokens_per_s:,.0f} output tok/s ({w.prompt_len} in / "
            f"{w.output_len} out, {w.dtype}), {lim}")


def render(result: PlanResult, top: int = 10, provenance=None) -> str:
    """The text report: target, ranked table, answer, frontier, rejections by reason; with
    ``provenance`` (moesim.provenance.Provenance) prior-only hardware is marked ``!`` and the
    answer is followed by its price basis, profile origins and error band."""
    s = result.scenario
    mark = frozenset(provenance.prior_only) if provenance is not None else frozenset()
    lines = [f"{s.name}: {_target_text(s)}",
             f"searched {result.space_size} configurations over {', '.join(s.hardware)} "
             f"({result.evaluated} evaluated by {result.evaluator}, "
             f"{result.timings_s.get('configs_per_s', 0):,.0f}/s)", ""]
    if result.ranked:
        if s.kind == "serving":
            headers = ["#", "hardware", "devices", "nodes", "parallelism", "batch", "out tok/s/dev",
                       "TPOT ms", "TTFT ms", "headroom GiB", "$/h", "$/M tok", "drops", "loss +nats", "bottleneck"]
            lines.append(table(list(_serving_rows(result, top, mark)), headers))
            lines.append("(f = on the cost-latency Pareto frontier; * = p99 from the serving DES, "
                         "else analytic estimate)")
        else:
            headers = ["#", "hardware", "devices", "nodes", "parallelism", "micro-batch", "tok/s/dev",
                       "MFU %", "days", "step", "headroom GiB", "total $", "drops", "loss +nats", "bottleneck"]
            lines.append(table(list(_training_rows(result, top, mark)), headers))
            lines.append("(f = on the cost-time Pareto frontier)")
        lines.append(f"(loss +nats: {QUALITY_LIMITS})")
        lines += ["", _answer_text(result)]
        if provenance is not None:
            lines += ["  " + line for line in provenance.lines()]
        lines += ["", "best per hardware:", _per_hardware(result)]
        if result.failed is not None:
            lines += ["", f"warning: {result.failed.count} candidates failed with an error and are not ranked, so a "
                          f"cheaper deployment may be missing; e.g. {result.failed.example}"]
    elif result.closest is not None:
        ev = result.closest.evaluation
        lines.append(f"no deployment meets the target; closest: {ev.candidate.key()}: {ev.detail}")
    if result.rejected:
        lines += ["", "rejected configurations by reason:"]
        lines.append(table([(g.count, g.reason, g.example) for g in result.rejected],
                           ["count", "reason", "closest example"]))
    from moesim.planner.disagg_report import render_modes

    modes = render_modes(result)
    return "\n".join(lines) + (("\n" + modes) if modes else "")


def provenance_columns(prov, hardware: str, bands=None) -> dict:
    """The provenance columns of a row on ``hardware`` (CSV and JSON rows of plan, whatif,
    compare, pilot): the profile's efficiency origin, its price's provider, quality and date
    (``moesim.provenance.candidate_columns``), the plan's price basis, and the error band of the
    plan's forecast kind for that profile (widened when it is prior-only), in percent."""
    from moesim.catalog import read_error_bands
    from moesim.provenance import Bands, candidate_columns

    p = prov.of(hardware)
    if hardware == prov.answer_hardware:
        band = prov.answer_band
    else:
        band = (bands or Bands(read_error_bands())).band(prov.forecast_kind, prior_only=p.prior_only)
    return {**candidate_columns(prov, hardware), "price_basis": prov.price_basis.basis,
            "error_band_kind": prov.forecast_kind,
            "error_band_typical_pct": None if band is None else band.median_abs_rel_error * 100,
            "error_band_worst_pct": None if band is None else band.max_abs_rel_error * 100,
            "error_band_sample": None if band is None else band.sample,
            "error_band_widened_by": None if band is None else band.widened_by}


def candidate_rows(result: PlanResult, provenance=None, top: int | None = None) -> list[dict]:
    """The ranked candidates as flat rows (the --json ``candidates`` fields; with ``provenance``
    each row's :func:`provenance_columns` too)."""
    ranked = result.ranked if top is None else result.ranked[:top]
    rows = [_row(r) for r in ranked]
    if provenance is None:
        return rows
    from moesim.catalog import read_error_bands
    from moesim.provenance import Bands

    bands = Bands(read_error_bands())
    cols = {hw: provenance_columns(provenance, hw, bands) for hw in {row["hardware"] for row in rows}}
    return [{**row, **cols[row["hardware"]]} for row in rows]


def write_rows(rows: list[dict], path: str | Path, flag: str = "--csv") -> str:
    """``rows`` (dicts with the same keys, in order) as one CSV file; no rows: an empty file.
    The one CSV writer of the planner commands (plan, whatif, compare, pilot)."""
    try:
        with open(path, "w", newline="") as fh:
            if not rows:
                fh.write("")
                return str(path)
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    except OSError as err:
        raise MoesimError(f"{flag} {path}: {err.strerror}") from None
    return str(path)


def write_csv(result: PlanResult, path: str | Path, provenance=None) -> str:
    """Every ranked candidate as one CSV row (:func:`candidate_rows`)."""
    return write_rows(candidate_rows(result, provenance), path)


def sides_rows(sides) -> list[dict]:
    """Every ranked candidate of each side of a what-if or comparison, ``side`` first:
    ``sides`` is ``[(name, PlanResult, Provenance), ...]``."""
    return [{"side": name, **row} for name, result, prov in sides for row in candidate_rows(result, prov)]


def pilot_rows(pilot, provenance) -> list[dict]:
    """One row per pilot stage: its load, size and cost, each watched metric's expected value, band,
    gate and rollback threshold (unit in the column name), and the answer's provenance columns."""
    unit = {"s": "_s", "tok/s": "_tok_per_s", "fraction": "", "ratio": ""}
    prov = provenance_columns(provenance, pilot.hardware)
    rows = []
    for i, s in enumerate(pilot.stages, 1):
        row = {"stage": i, "share_pct": s.share * 100, "hardware": pilot.hardware, "replicas": s.replicas,
               "devices": s.devices, "request_rate_per_replica_per_s": s.request_rate_per_replica,
               "offered_output_tokens_per_s": s.offered_output_tokens_per_s, "min_duration_s": s.min_duration_s,
               "usd_per_hour": s.usd_per_hour}
        for w in s.watches:
            name = _slug(w.metric)
            name += "" if "per_s" in name else unit.get(w.unit, "_" + _slug(w.unit))
            row.update({f"{name}_expected": w.expected, f"{name}_band_low": w.band_low,
                        f"{name}_band_high": w.band_high, f"{name}_gate": w.gate_value,
                        f"{name}_rollback": w.rollback_value})
        rows.append({**row, **prov})
    return rows


def _slug(text: str) -> str:
    """``p99 TPOT`` -> ``p99_tpot``; ``drop fraction (quality proxy)`` -> ``drop_fraction``."""
    import re

    text = text.split("(")[0].strip().lower().replace("/", " per ")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def plot_pareto(result: PlanResult, path: str | Path) -> str:
    """Cost ($/h) against latency (TPOT, or days when training), the frontier marked."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - optional extra
        raise MoesimError("--plot needs matplotlib (pip install moesim[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    serving = result.scenario.kind == "serving"
    scale, label = (1e3, "TPOT (ms, analytic)") if serving else (1 / 86400, "time to train (days)")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for hw in result.scenario.hardware:
        pts = [r for r in result.ranked if r.candidate.hardware == hw]
        if pts:
            ax.scatter([r.latency_s * scale for r in pts], [r.usd_per_hour for r in pts], s=12, alpha=0.6, label=hw)
    f = result.frontier
    ax.plot([r.latency_s * scale for r in f], [r.usd_per_hour for r in f], "k-o", ms=4, lw=1.2, label="Pareto frontier")
    ax.set_xlabel(label)
    ax.set_ylabel("cost to meet the target ($/h)")
    ax.set_title(result.scenario.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise MoesimError(f"--plot {path}: {err.strerror}") from None
    finally:
        plt.close(fig)
    return str(path)
