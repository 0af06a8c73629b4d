"""CLI command groups; each module has ``register(subparsers)`` (see moesim/cli.py)."""
