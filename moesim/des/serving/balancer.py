"""Load balancers: which replica of a pool gets the next request.

``round_robin``: replicas in turn. ``least_loaded``: the replica with the fewest outstanding
requests (queued + in flight), ties to the lowest index. Each balancer instance owns its state
(one per pool per simulation; nothing global).
"""
from __future__ import annotations

from typing import Literal

BalancerName = Literal["round_robin", "least_loaded"]


class RoundRobin:
    def __init__(self):
        self._next = 0

    def pick(self, replicas: list):
        r = replicas[self._next % len(replicas)]
        self._next += 1
        return r


class LeastLoaded:
    def pick(self, replicas: list):
        return min(replicas, key=lambda r: (r.outstanding, r.index))


BALANCERS = {"round_robin": RoundRobin, "least_loaded": LeastLoaded}


def make_balancer(name: BalancerName):
    """A fresh balancer by name; an unknown name raises SpecError."""
    if name not in BALANCERS:
        from moesim.errors import SpecError

        raise SpecError("balancer", name, f"allowed: {', '.join(BALANCERS)}")
    return BALANCERS[name]()
