"""Provenance and error bands: what an answer rests on, and how far off it has been measured to be.

Each hardware profile says where its efficiencies come from, per part (``compute_origin``,
``comm_origin``): ``calibrated`` on measurements of that hardware, ``transferred`` from the same
silicon, or the generic ``prior`` (round values fitted to nothing). A profile whose parts are all
prior is *prior-only*; an answer on it is a guess dressed as a number, and is marked as one.

Error bands come from measurement, not from a constant: ``moesim validate FILE --write-bands
moesim/data/error_bands.json`` predicts every case of a measurement file twice, with the shipped
profiles and with their efficiencies reset to the generic prior, and stores per forecast kind the
number of cases, the median and the largest |relative error| of each (:func:`bands_from_reports`).
The band of a forecast kind is its out-of-sample entry when one exists, else the in-sample one
(said so). For a prior-only profile the band is widened by the measured ratio of the prior's
error to the shipped profiles' error (on the same kind, and pooled over the out-of-sample
component cases: GEMM, grouped GEMM, all-to-all), never below 1.

Which kind backs which forecast: a serving plan's TPOT, TTFT and throughput come from the step
model judged by the ``serving`` cases (tokens/s per device); a training plan's time and cost from
the ``training`` cases.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import median
from typing import Mapping

from moesim.errors import MoesimError
from moesim.prices import PriceBasis, PriceEntry

BANDS_SCHEMA = "moesim-error-bands/1"
LEVELS = ("calibrated", "transferred", "prior")  # best first
COMPONENT_KINDS = ("gemm", "grouped_gemm", "all_to_all")
FORECAST_KIND = {"serving": "serving", "training": "training"}  # plan kind -> validation kind


@dataclass(frozen=True)
class ProfileProvenance:
    """Where one hardware profile's efficiencies and price come from."""

    hardware: str
    compute_origin: str
    comm_origin: str
    origin: str
    price: PriceEntry

    @property
    def level(self) -> str:
        """The weaker part's origin: calibrated > transferred > prior."""
        return max(self.compute_origin, self.comm_origin, key=LEVELS.index)

    @property
    def prior_only(self) -> bool:
        return self.compute_origin == "prior" and self.comm_origin == "prior"

    def label(self) -> str:
        """``prior-only``, ``calibrated``, or ``compute transferred, comm calibrated``."""
        if self.prior_only:
            return "prior-only"
        if self.compute_origin == self.comm_origin:
            return self.compute_origin
        return f"compute {self.compute_origin}, comm {self.comm_origin}"

    def to_dict(self) -> dict:
        return {"hardware": self.hardware, "compute_origin": self.compute_origin,
                "comm_origin": self.comm_origin, "level": self.level, "prior_only": self.prior_only,
                "label": self.label(), "origin": self.origin, "price": self.price.to_dict()}


def profile_provenance(profile, price: PriceEntry | None = None, hardware: str | None = None) -> ProfileProvenance:
    """A profile's provenance; ``price`` is the entry the plan used (default: the profile's own);
    ``hardware`` the name the scenario gave it (a name or a TOML path; default the profile's name)."""
    from moesim.prices import entry_from_profile

    e = profile.efficiency
    return ProfileProvenance(hardware or profile.name, e.compute_origin, e.comm_origin, e.origin,
                             price or entry_from_profile(profile))


@dataclass(frozen=True)
class ErrorBand:
    """Measured |relative error| of one forecast kind: +-median is typical, +-max the worst seen."""

    kind: str
    n: int
    median_abs_rel_error: float
    max_abs_rel_error: float
    sample: str  # out-of-sample or in-sample
    source: str
    widened_by: float = 1.0  # > 1 for a prior-only profile

    def interval(self, value: float) -> tuple[float, float]:
        """``value`` +- the median error (the typical band)."""
        return value * (1 - self.median_abs_rel_error), value * (1 + self.median_abs_rel_error)

    def text(self) -> str:
        wide = f", widened x{self.widened_by:.2f} for a prior-only profile" if self.widened_by > 1 else ""
        return (f"{self.kind}: +-{self.median_abs_rel_error:.0%} typical, +-{self.max_abs_rel_error:.0%} worst "
                f"({self.sample}, n={self.n}, {self.source}{wide})")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- bands: generated from validation reports, read back ------------------------------------
def prior_profile(profile):
    """``profile`` with its efficiencies reset to the generic prior (host issue time is a
    property of the software stack, moesim/data/stacks.toml, not of the profile)."""
    from moesim.specs.hardware import Efficiency

    return profile.with_efficiency(Efficiency())


def _errors(report, kind: str, ids: set | None = None) -> list[float]:
    return [abs(c.rel_error) for c in report.cases
            if c.kind == kind and c.status == "ok" and (ids is None or c.id in ids)]


def _priced(report) -> set:
    return {c.id for c in report.cases if c.status == "ok"}


def bands_from_reports(shipped, prior, sample: str, date: str) -> dict:
    """Band entries from two validation reports of the same case file: ``shipped`` (profiles as
    shipped) and ``prior`` (efficiencies reset to the generic prior). Pure; the command writes it.

    The prior figures are over the cases both reports priced (``prior_n``: a case the prior
    profile cannot price, e.g. one that no longer fits in memory, is left out of both sides),
    beside the shipped figures over the same cases (``paired_*``): the ratio of the two is like
    for like, where the kind's whole-sample median would compare different rows."""
    if sample not in ("out-of-sample", "in-sample"):
        raise MoesimError(f"--sample {sample!r}: allowed: out-of-sample, in-sample")
    both = _priced(shipped) & _priced(prior)
    entries = []
    for kind in sorted({c.kind for c in shipped.cases}):
        a, b, paired = _errors(shipped, kind), _errors(prior, kind, both), _errors(shipped, kind, both)
        if not a:
            continue
        entries.append({
            "kind": kind, "sample": sample, "source": shipped.source, "date": date, "n": len(a),
            "median_abs_rel_error": median(a), "max_abs_rel_error": max(a), "prior_n": len(b),
            "prior_median_abs_rel_error": median(b) if b else None,
            "prior_max_abs_rel_error": max(b) if b else None,
            "paired_median_abs_rel_error": median(paired) if paired else None,
            "paired_max_abs_rel_error": max(paired) if paired else None,
        })
    pooled_a = [e for k in COMPONENT_KINDS for e in _errors(shipped, k, both)]
    pooled_b = [e for k in COMPONENT_KINDS for e in _errors(prior, k, both)]
    widening = None
    if sample == "out-of-sample" and pooled_a and pooled_b:
        widening = {"source": shipped.source, "date": date, "n": len(pooled_a),
                    "median_abs_rel_error": median(pooled_a), "prior_median_abs_rel_error": median(pooled_b)}
    return {"entries": entries, "prior_widening": widening}


def merge_bands(old: Mapping | None, new: Mapping) -> dict:
    """``old`` bands file with ``new`` entries replacing those of the same kind, sample and source."""
    old = dict(old or {})
    keep = [e for e in old.get("entries", [])
            if not any((e["kind"], e["sample"], e["source"]) == (n["kind"], n["sample"], n["source"])
                       for n in new["entries"])]
    out = {"schema": BANDS_SCHEMA,
           "note": "generated by `moesim validate FILE --write-bands FILE --sample ...`; see moesim/provenance.py",
           "entries": sorted(keep + list(new["entries"]), key=lambda e: (e["kind"], e["sample"], e["source"])),
           "prior_widening": new.get("prior_widening") or old.get("prior_widening")}
    return out


@dataclass(frozen=True)
class Bands:
    """The bands file, read: pick a kind's band for a profile level."""

    data: Mapping

    def entry(self, kind: str) -> Mapping | None:
        """The kind's out-of-sample entry, else its in-sample one (largest n first)."""
        found = [e for e in self.data.get("entries", []) if e["kind"] == kind]
        found.sort(key=lambda e: (e["sample"] != "out-of-sample", -e["n"]))
        return found[0] if found else None

    def prior_factor(self, kind: str) -> float:
        """How much wider a prior-only profile's band is: the measured prior/shipped error ratio."""
        ratios = [1.0]
        e = self.entry(kind)
        shipped = (e or {}).get("paired_median_abs_rel_error", (e or {}).get("median_abs_rel_error"))
        if e and e.get("prior_median_abs_rel_error") and shipped:  # like for like: the same cases
            ratios.append(e["prior_median_abs_rel_error"] / shipped)
        w = self.data.get("prior_widening")
        if w and w["median_abs_rel_error"] > 0:
            ratios.append(w["prior_median_abs_rel_error"] / w["median_abs_rel_error"])
        return max(ratios)

    def band(self, kind: str, prior_only: bool = False) -> ErrorBand | None:
        e = self.entry(kind)
        if e is None:
            return None
        f = self.prior_factor(kind) if prior_only else 1.0
        return ErrorBand(kind, e["n"], e["median_abs_rel_error"] * f, e["max_abs_rel_error"] * f,
                         e["sample"], e["source"], f)


# ---- a plan's provenance --------------------------------------------------------------------
@dataclass(frozen=True)
class Provenance:
    """What a plan's numbers rest on: each candidate hardware's origin and price, the price basis,
    and the error band of the answer's forecast kind on the answer's hardware."""

    profiles: tuple[ProfileProvenance, ...]
    price_basis: PriceBasis
    forecast_kind: str
    answer_hardware: str | None
    answer_band: ErrorBand | None
    bands: tuple[ErrorBand, ...]  # every kind in the bands file, unwidened (for the report)
    answer_usd_per_hour: float | None = None
    # the software stack's device fraction per phase the plan prices (moesim/step/stacks.py
    # FractionOrigin: fitted, pooled, prior or stated)
    stack_fractions: tuple = ()

    def cost_range(self) -> tuple[float, float]:
        """The answer's cost if per-device throughput is off by +-median error: devices scale as
        1/throughput, so cost / (1 + e) .. cost / (1 - e) (before rounding to whole replicas)."""
        e = self.answer_band.median_abs_rel_error
        return self.answer_usd_per_hour / (1 + e), self.answer_usd_per_hour / (1 - e)

    def of(self, hardware: str) -> ProfileProvenance:
        for p in self.profiles:
            if p.hardware == hardware:
                return p
        raise MoesimError(f"no provenance for {hardware!r}")

    @property
    def prior_only(self) -> tuple[str, ...]:
        return tuple(p.hardware for p in self.profiles if p.prior_only)

    def lines(self) -> list[str]:
        """The text block printed under a plan's answer."""
        out = [self.price_basis.statement()]
        if self.answer_hardware is not None:
            a = self.of(self.answer_hardware)
            warn = " (a GUESS: no measurement of this hardware or its silicon backs these efficiencies)" \
                if a.prior_only else ""
            out.append(f"answer's profile {a.hardware}: efficiencies {a.label()}{warn}; price {a.price.label()}")
            if self.answer_band is not None:
                out.append(f"error band ({self.forecast_kind} forecasts): {self.answer_band.text()}")
                if self.answer_usd_per_hour is not None and self.answer_band.median_abs_rel_error < 1:
                    lo, hi = self.cost_range()
                    out.append(f"cost if throughput per device is off by the typical error: "
                               f"${lo:,.2f}-{hi:,.2f}/h (answer ${self.answer_usd_per_hour:,.2f}/h)")
            else:
                out.append(f"error band: no {self.forecast_kind} measurements in the bands file")
        if self.stack_fractions:
            first = self.stack_fractions[0]
            phases = " and ".join(fo.phase for fo in self.stack_fractions)
            if all((fo.stack, fo.fraction, fo.origin) == (first.stack, first.fraction, first.origin)
                   for fo in self.stack_fractions):
                out.append(f"software stack {first.text(entry=False)} in {phases}")
            else:
                out.append("software stack: " + "; ".join(f"{fo.phase} {fo.text()}" for fo in self.stack_fractions))
        out.append("profiles: " + "; ".join(f"{p.hardware} {p.label()}, {p.price.label()}" for p in self.profiles))
        if self.prior_only:
            out.append(f"! = prior-only profile ({', '.join(self.prior_only)}): efficiencies not fitted "
                       f"to any measurement; its band is widened")
        return out

    def summary(self) -> str:
        """One line: the answer's profile origin, its price and band, and the price basis."""
        if self.answer_hardware is None:
            return self.price_basis.statement()
        a = self.of(self.answer_hardware)
        band = (f", band +-{self.answer_band.median_abs_rel_error:.0%} ({self.answer_band.sample})"
                if self.answer_band else "")
        return f"answer on {a.hardware}: {a.label()}, {a.price.label()}{band}; {self.price_basis.statement()}"

    def to_dict(self) -> dict:
        return {"price_basis": self.price_basis.to_dict(), "forecast_kind": self.forecast_kind,
                "answer_hardware": self.answer_hardware,
                "answer_band": self.answer_band.to_dict() if self.answer_band else None,
                "answer_usd_per_hour_band": (list(self.cost_range()) if self.answer_band is not None
                                             and self.answer_usd_per_hour is not None
                                             and self.answer_band.median_abs_rel_error < 1 else None),
                "prior_only": list(self.prior_only),
                "stack_fractions": [asdict(fo) for fo in self.stack_fractions],
                "profiles": [p.to_dict() for p in self.profiles], "bands": [b.to_dict() for b in self.bands]}


def plan_provenance(scenario, profiles: Mapping, basis: PriceBasis, bands: Bands,
                    answer_hardware: str | None, answer_usd_per_hour: float | None = None) -> Provenance:
    """The provenance of a plan over ``profiles`` (hardware -> HardwareProfile) priced on ``basis``."""
    provs = tuple(profile_provenance(profiles[hw], basis.entry(hw), hw) for hw in scenario.hardware)
    kind = FORECAST_KIND[scenario.kind]
    band = None
    if answer_hardware is not None:
        prior = next(p for p in provs if p.hardware == answer_hardware).prior_only
        band = bands.band(kind, prior_only=prior)
    kinds = sorted({e["kind"] for e in bands.data.get("entries", [])})
    from moesim.step.stacks import fraction_origin

    phases = ("train",) if scenario.kind == "training" else ("prefill", "decode")
    fractions = tuple(fraction_origin(getattr(scenario, "stack", "auto"), ph) for ph in phases)
    return Provenance(provs, basis, kind, answer_hardware, band,
                      tuple(b for b in (bands.band(k) for k in kinds) if b is not None), answer_usd_per_hour,
                      fractions)


def for_plan(result) -> Provenance:
    """The provenance of a PlanResult: its candidates' profiles (catalog), the scenario's price
    basis and the shipped error bands (``moesim/data/error_bands.json``)."""
    from moesim.catalog import list_profiles, load_profile, read_error_bands
    from moesim.prices import entry_from_profile, resolve

    s = result.scenario
    profiles = {hw: load_profile(hw) for hw in s.hardware}
    basis = resolve(s.prices, {hw: entry_from_profile(p) for hw, p in profiles.items()},
                    s.prices_usd_per_device_hour, known=list_profiles())
    a = result.answer
    return plan_provenance(s, profiles, basis, Bands(read_error_bands()),
                           a.ranked.candidate.hardware if a else None, a.usd_per_hour if a else None)


def candidate_columns(prov: Provenance, hardware: str) -> dict:
    """The provenance columns of one candidate row (JSON ``candidates`` and CSV)."""
    p = prov.of(hardware)
    return {"efficiency_origin": p.label(), "prior_only": p.prior_only, "price_provider": p.price.provider,
            "price_quality": p.price.quality, "price_as_of": p.price.as_of}
