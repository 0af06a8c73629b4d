"""Cluster: how many devices of which profile, grouped into scale-up domains."""
from __future__ import annotations

from pydantic import Field, model_validator

from moesim.errors import SpecError
from moesim.specs.common import Spec
from moesim.specs.hardware import HardwareProfile


class Cluster(Spec):
    """``devices`` accelerators of profile ``hardware``, ``devices_per_domain`` per scale-up domain.

    A scale-up domain is the NVLink/NVSwitch node (8 on HGX), the NVL72 rack (72), the AMD
    8-GPU platform, or a TPU slice; domains talk over the scale-out network (NICs / DCN).
    ``devices_per_domain`` = None means the profile's usual domain size.
    """

    hardware: str = Field(description="hardware profile name")
    devices: int = Field(gt=0)
    devices_per_domain: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _divides(self):
        dpd = self.devices_per_domain
        if dpd is not None and self.devices > dpd and self.devices % dpd:
            raise SpecError("devices", self.devices, f"allowed: a multiple of devices_per_domain = {dpd} "
                            "(or at most one domain)")
        return self

    def domain_size(self, profile: HardwareProfile) -> int:
        """Devices per scale-up domain actually used (never more than ``devices``)."""
        dpd = self.devices_per_domain or profile.scale_up.domain_size
        return min(dpd, self.devices)

    def domains(self, profile: HardwareProfile) -> int:
        """Number of scale-up domains (nodes)."""
        return -(-self.devices // self.domain_size(profile))


def rack_aligned_domain(devices: int, domain: int, ep: int = 1) -> int:
    """Devices per scale-up domain that ``devices`` use on ``domain``-device domains.

    ``domain`` itself when the job fills whole domains or fits in one. Otherwise the last domain
    would be partial (256 GPUs on 72-GPU NVL72 racks), which is a real deployment: it is modelled
    as ``devices / d`` equal domains of the largest ``d`` <= ``domain`` that divides ``devices``
    and keeps every EP group inside one domain (``d`` a multiple of ``ep``, or a divisor of it
    no smaller than ``min(ep, domain)``) when such a ``d`` exists, else the largest divisor
    (256 on NVL72 at EP 32 -> 4 domains of 64, as a rack-aligned launcher places the job)."""
    if devices <= domain or devices % domain == 0:
        return domain
    fits = [d for d in range(domain, 0, -1) if devices % d == 0]
    aligned = [d for d in fits if d % ep == 0 or ep % d == 0 and d >= min(ep, domain)]
    return (aligned or fits)[0]


def partial_domain_note(devices: int, domain: int, ep: int = 1) -> str | None:
    """The assumption ``rack_aligned_domain`` makes, in words; None when the domains are whole."""
    chosen = rack_aligned_domain(devices, domain, ep)
    if chosen == domain:
        return None
    return (f"{devices} devices on {domain}-device domains: the last domain is partial; "
            f"modelled as {devices // chosen} domains of {chosen}")


def check_cluster(cluster: Cluster, profile: HardwareProfile) -> None:
    """Raise SpecError when ``cluster`` asks for more than ``profile`` supports."""
    if cluster.hardware != profile.name:
        raise SpecError("cluster.hardware", cluster.hardware, f"profile given is {profile.name!r}")
    dpd = cluster.devices_per_domain or profile.scale_up.domain_size
    if dpd > profile.scale_up.max_domain_size:
        raise SpecError(
            "cluster.devices_per_domain",
            dpd,
            f"{profile.name} supports scale-up domains of at most {profile.scale_up.max_domain_size} devices",
        )
    if cluster.devices > dpd and cluster.devices % dpd:
        raise SpecError(
            "cluster.devices", cluster.devices, f"must be a multiple of the domain size {dpd}"
        )
