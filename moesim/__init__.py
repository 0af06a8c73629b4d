"""moesim: forecast the hardware a sparse Mixture-of-Experts model needs.

Three inputs kept apart (model spec, deployment, hardware profile), combined only at the top.
Data flows one way: specs -> routing -> compute + comm -> step / des -> planner -> cli.
"""
from moesim.catalog import list_models, list_profiles, load_model, load_profile
from moesim.errors import InfeasibleError, MoesimError, SpecError, UnknownNameError

__version__ = "0.1.0"

__all__ = [
    "InfeasibleError", "MoesimError", "SpecError", "UnknownNameError", "list_models",
    "list_profiles", "load_model", "load_profile",
]
