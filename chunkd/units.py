"""Parsing of human sizes ("4MiB") and durations ("250ms")."""
from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3,
    "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUM_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zµ]*)\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "4MiB", "512k", "0"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"4MiB\", got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as \"4MiB\", got {type(value).__name__}")
    m = _NUM_UNIT.match(value)
    if not m:
        raise ValueError(f"cannot read {value!r} as a size (examples: \"4MiB\", \"512KiB\", 1048576)")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {value!r} (use B, KiB, MiB, GiB, KB, MB, GB)")
    result = float(number) * _SIZE_UNITS[unit]
    if result != int(result):
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(result)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "5s", "250ms", "1m"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"5s\", got a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"5s\", got {type(value).__name__}")
    m = _NUM_UNIT.match(value)
    if not m:
        raise ValueError(f"cannot read {value!r} as a duration (examples: \"5s\", \"250ms\")")
    number, unit = m.group(1), m.group(2).lower()
    if unit == "":
        unit = "s"
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {m.group(2)!r} in {value!r} (use ms, s, m, h, d)")
    return float(number) * _DURATION_UNITS[unit]


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"
