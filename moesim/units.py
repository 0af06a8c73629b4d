"""Unit constants. Spec files carry units in their key names; they are converted to SI once, here.

Bytes, seconds, FLOP and FLOP/s inside the library. Vendors print memory in decimal GB and
bandwidth in decimal GB/s (hardware-specs.md, "Conventions"); NICs in Gb/s (bits).
"""
from __future__ import annotations

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 2.0**10
MiB = 2.0**20
GiB = 2.0**30
TiB = 2.0**40

TFLOPS = 1e12
PFLOPS = 1e15

GBps = 1e9  # bytes per second
Gbps = 1e9 / 8.0  # bits per second -> bytes per second

us = 1e-6
ms = 1e-3
MHz = 1e6

HOUR_s = 3600.0
DAY_s = 86400.0
