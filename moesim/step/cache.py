"""``StepCache``: the step model's memo, an object the caller owns, sees and clears.

Everything it holds is keyed by the *content* of the specs that decide the value: a SHA-256 of
the model spec and ``Deployment.content_key`` (the whole deployment, hardware profile content
included; for layer setups ``Deployment.layer_key``, the same less the schedule fields no layer
reads; the routing-free part of the layer ops, ``Deployment.routing_free_key``, also less the
capacity fields), plus the phase and the routing skew. A profile recalibrated in-process is another key,
never a stale hit. Values: the ``LayerSetup`` of each (model, deployment, phase, skew)
(which memoizes its ``layer_ops`` per layer kind, tokens and context) and the memory footprint
of each (model, deployment) at zero KV tokens. There is no module-level cache in moesim.step.
"""
from __future__ import annotations

import hashlib

from moesim.specs import ModelSpec
from moesim.specs.deployment import Deployment


def model_key(model: ModelSpec) -> str:
    """SHA-256 of a model spec's JSON."""
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()


class StepCache:
    """Layer setups and memory footprints of the deployments a caller prices (module doc)."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._models: dict[int, tuple[ModelSpec, str]] = {}
        self._values: dict[tuple, object] = {}

    def key(self, model: ModelSpec, deployment: Deployment, *parts) -> tuple:
        """The content key of ``(model, deployment, *parts)``."""
        hit = self._models.get(id(model))
        if hit is None or hit[0] is not model:  # NOTE: by identity only while this cache holds the object
            hit = self._models[id(model)] = (model, model_key(model))
        return (hit[1], deployment.content_key) + parts

    def get(self, key: tuple, make):
        """The value under ``key``, made by ``make()`` on a miss."""
        if key not in self._values:
            if len(self._values) >= self.max_entries:
                self._values.clear()
            self._values[key] = make()
        return self._values[key]

    def setup(self, model: ModelSpec, deployment: Deployment, phase: str, skew: str):
        """The ``LayerSetup``, shared by deployments that differ only in their schedule
        (``Deployment.layer_key``): the layer model does not read those fields."""
        from moesim.step.layer import make_setup

        mkey = self.key(model, deployment)[0]
        shared = self.get((mkey, deployment.routing_free_key, "routing-free ops", phase), dict)
        key = (mkey, deployment.layer_key, "setup", phase, skew)
        return self.get(key, lambda: make_setup(model, deployment, phase, skew, shared))

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        self._values.clear()
        self._models.clear()
