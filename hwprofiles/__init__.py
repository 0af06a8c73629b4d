"""Hardware profiles: one TOML file per accelerator (installed as ``moesim.hwprofiles``)."""
