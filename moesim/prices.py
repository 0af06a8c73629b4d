"""One price basis per plan: which provider's list prices a comparison uses, stated, never mixed silently.

Every hardware profile's ``[price]`` is one provider's price for one device-hour, with its source,
date, ``provider`` and ``quality`` (``list`` from the provider's price page, ``secondary`` reported
by a third party, ``estimate`` computed from other prices). Grouped by provider these are the
built-in list-price tables (:func:`provider_tables`): RunPod for the NVIDIA GPUs, Google Cloud for
the TPUs, TensorWave for AMD, CoreWeave for GB200.

A plan compares cost, so its prices must come from one basis. A scenario's ``[prices]`` says which:

- ``basis = "runpod"``: every candidate priced from that provider's list; a candidate the provider
  does not list is refused unless ``mix`` names the provider it comes from (``mix = {tpu-v5p =
  "gcp"}``); the mix is then stated in every output;
- ``basis = "own"``: the user's ``usd_per_device_hour`` table for every candidate (with ``source``);
- no basis: allowed only while every candidate's list price comes from one provider; two
  providers are refused with the reason.

The user's ``usd_per_device_hour`` (and the older top-level ``prices_usd_per_device_hour``)
override single candidates under any basis; a price for a hardware name that is not a candidate
is an error, not ignored.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

from pydantic import Field, field_validator

from moesim.errors import MoesimError, SpecError
from moesim.specs.common import Spec

OWN = "own"


class PricesSpec(Spec):
    """A scenario's ``[prices]`` section: the basis prices are compared on."""

    basis: str | None = Field(
        None, description="a provider whose list prices every candidate uses (runpod, gcp, "
        "tensorwave, coreweave, ...), 'own' for your usd_per_device_hour table, or none (allowed "
        "only when all candidates' list prices come from one provider)"
    )
    mix: dict[str, str] = Field(
        default_factory=dict, description="hardware -> provider for candidates the basis does not "
        "list (an explicit, stated mix)"
    )
    usd_per_device_hour: dict[str, float] = Field(
        default_factory=dict, description="your own prices per candidate hardware (USD per device-hour)"
    )
    source: str = Field("", description="where your own prices come from (contract, quote)")
    as_of: str = Field("", description="date of your own prices, YYYY-MM or YYYY-MM-DD")

    @field_validator("usd_per_device_hour")
    @classmethod
    def _positive(cls, value):
        return positive_prices(value)


def positive_prices(value: dict) -> dict:
    """``value`` (hardware name -> USD per device-hour) when every price is a number above 0."""
    for name, price in value.items():
        if isinstance(price, bool) or not price > 0:
            raise SpecError(name, price, "allowed: a price above 0 in USD per device-hour")
    return value


@dataclass(frozen=True)
class PriceEntry:
    """One candidate's price per device-hour and where it comes from."""

    hardware: str
    usd_per_device_hour: float
    provider: str
    quality: str
    source: str
    as_of: str

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """``$4.59 runpod 2026-10-07`` (quality added unless it is a list price)."""
        q = "" if self.quality == "list" else f", {self.quality}"
        when = f" {self.as_of}" if self.as_of else ""
        return f"${self.usd_per_device_hour:,.2f} {self.provider}{when}{q}"


@dataclass(frozen=True)
class PriceBasis:
    """The prices one plan compares: the basis, each candidate's entry, and whether it is a mix."""

    basis: str
    entries: tuple[PriceEntry, ...]
    stated_mix: tuple[str, ...] = ()  # hardware priced off the basis by an explicit choice

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(sorted({e.provider for e in self.entries}))

    @property
    def mixed(self) -> bool:
        return len(self.providers) > 1

    def entry(self, hardware: str) -> PriceEntry:
        for e in self.entries:
            if e.hardware == hardware:
                return e
        raise MoesimError(f"no price for {hardware!r} in basis {self.basis}")

    def statement(self) -> str:
        """One line for people: the basis and every candidate priced off it (a stated mix)."""
        head = "price basis: " + ("own prices" if self.basis == OWN else f"{self.basis} list prices")
        off = [e for e in self.entries if e.provider != self.basis]
        est = [e.hardware for e in self.entries if e.provider == self.basis and e.quality == "estimate"]
        tail = f"; estimated (no public price): {', '.join(est)}" if est else ""
        if not off:
            return head + " for every candidate" + tail
        return head + "; stated mix: " + ", ".join(
            f"{e.hardware} from {'own prices' if e.provider == OWN else e.provider}"
            + ("" if e.quality in ("list", "user") else f" ({e.quality})") for e in off) + tail

    def to_dict(self) -> dict:
        return {"basis": self.basis, "mixed": self.mixed, "providers": list(self.providers),
                "stated_mix": list(self.stated_mix), "statement": self.statement(),
                "entries": [e.to_dict() for e in self.entries]}


def entry_from_profile(profile) -> PriceEntry:
    """A profile's own ``[price]`` as a PriceEntry."""
    p = profile.price
    return PriceEntry(profile.name, p.usd_per_device_hour, p.provider, p.quality,
                      p.sources.get("usd_per_device_hour", p.sources.get("*", "")), p.as_of)


def provider_tables(profiles) -> dict[str, tuple[PriceEntry, ...]]:
    """The built-in list-price tables: every profile's price grouped by provider."""
    out: dict[str, list[PriceEntry]] = {}
    for prof in profiles:
        e = entry_from_profile(prof)
        out.setdefault(e.provider, []).append(e)
    return {k: tuple(sorted(v, key=lambda e: e.hardware)) for k, v in sorted(out.items())}


def _check_names(field: str, names, candidates: tuple[str, ...], known) -> None:
    for name in names:
        if name not in candidates and name not in known:
            raise SpecError(f"prices.{field}.{name}", name,
                            f"not a candidate hardware of this scenario ({', '.join(candidates)}) "
                            f"nor a known profile")


def resolve(spec: PricesSpec, listed: Mapping[str, PriceEntry],
            overrides: Mapping[str, float] | None = None, known=()) -> PriceBasis:
    """The price basis of a plan over the candidates in ``listed`` (hardware -> its list price).

    ``overrides``: the scenario's older ``prices_usd_per_device_hour`` (same meaning as
    ``spec.usd_per_device_hour``); ``known``: other real profile names, whose prices may stand in
    the scenario while a what-if drops them from the candidates. Raises naming the field when a
    price names an unknown hardware, a candidate is missing from the basis, or two providers meet
    without a stated basis.
    """
    listed = {hw: e if e.hardware == hw else replace(e, hardware=hw) for hw, e in listed.items()}
    candidates = tuple(listed)
    own = {**dict(overrides or {}), **spec.usd_per_device_hour}
    _check_names("usd_per_device_hour", own, candidates, known)
    _check_names("mix", spec.mix, candidates, known)
    own = {hw: v for hw, v in own.items() if hw in listed}
    mix = {hw: v for hw, v in spec.mix.items() if hw in listed}
    spec = spec.model_copy(update={"mix": mix})
    for hw, provider in spec.mix.items():
        if listed[hw].provider != provider:
            raise SpecError(f"prices.mix.{hw}", provider,
                            f"{hw}'s built-in price is {listed[hw].provider}'s ({listed[hw].label()}); "
                            f"give your own prices.usd_per_device_hour.{hw} for another provider")
    if spec.basis == OWN:
        missing = [hw for hw in candidates if hw not in own]
        if missing:
            raise SpecError("prices.usd_per_device_hour", sorted(own),
                            f"basis 'own' needs a price for every candidate; missing: {', '.join(missing)}")
    user_source = spec.source or "the scenario's own prices"
    entries, stated = [], []
    for hw in candidates:
        if hw in own:
            entries.append(PriceEntry(hw, float(own[hw]), OWN, "user", user_source, spec.as_of))
            continue
        e = listed[hw]
        if spec.basis is not None and spec.basis != OWN and e.provider != spec.basis:
            if hw not in spec.mix:
                raise SpecError("prices.basis", spec.basis,
                                f"{hw} has no {spec.basis} price (its built-in price is {e.label()}): "
                                f"state the mix with prices.mix.{hw} = \"{e.provider}\", give your own "
                                f"prices.usd_per_device_hour.{hw}, or drop {hw} from the candidates")
            stated.append(hw)
        entries.append(e)
    if spec.basis is None:
        return _unstated(entries, own)
    return PriceBasis(spec.basis, tuple(entries), tuple(stated))


def _unstated(entries: list[PriceEntry], own: Mapping[str, float]) -> PriceBasis:
    """No basis given: one provider among the built-in prices is fine, two are refused."""
    providers: dict[str, list[str]] = {}
    for e in entries:
        if e.hardware not in own:
            providers.setdefault(e.provider, []).append(e.hardware)
    if len(providers) > 1:
        who = "; ".join(f"{p}: {', '.join(hws)}" for p, hws in sorted(providers.items()))
        first = max(providers, key=lambda p: (len(providers[p]), p))
        raise SpecError("prices.basis", None,
                        f"the candidates' built-in prices come from {len(providers)} providers ({who}), "
                        f"so their costs are not comparable; choose one basis, e.g. [prices] basis = "
                        f"\"{first}\" with prices.mix for hardware it does not list, or basis = \"own\" "
                        f"with your prices.usd_per_device_hour")
    if own and providers:
        basis = next(iter(providers))
        return PriceBasis(basis, tuple(entries), tuple(sorted(own)))
    basis = next(iter(providers)) if providers else OWN
    return PriceBasis(basis, tuple(entries))


def apply(basis: PriceBasis, facts: Mapping) -> dict:
    """``facts`` (hardware -> planner HardwareFacts) with each price replaced by the basis's."""
    return {hw: replace(f, usd_per_device_hour=basis.entry(hw).usd_per_device_hour) for hw, f in facts.items()}
