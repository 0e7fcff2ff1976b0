#!/usr/bin/env python3
"""Checks the layout rules of the native crate (docs/native-core.md, "Layers"):
no file in native/src over 500 lines, no module cycle, and every `crate::` use
going to a module of a lower layer, or to a module listed after it in its
own layer.

A module's uses are read from its text: `crate::NAME` paths (in `use` lines and
inline), and for kinds/*.rs also `super::` (kinds/mod.rs). Exits non-zero with
each broken rule."""
from __future__ import annotations

import re
import sys
from pathlib import Path

MAX_LINES = 500
# top to bottom; a module may use modules of any layer below its own, and
# modules listed after it in its own layer
LAYERS: list[list[str]] = [
    ["lib"],
    ["api_engine", "api_instance"],
    ["batch"],
    ["kinds"],
    ["load", "drive", "feed", "core_link", "component_link", "outpipe", "abi"],
    ["output", "host", "guest", "errors", "state", "engine", "sigs", "chunks", "fileio", "wit"],
]


def module_of(src: Path, f: Path) -> str:
    rel = f.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "native/src")
    rank: dict[str, tuple[int, int]] = {m: (i, j) for i, layer in enumerate(LAYERS) for j, m in enumerate(layer)}
    errors: list[str] = []
    uses: dict[str, set[str]] = {}
    for f in sorted(src.rglob("*.rs")):
        text = f.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            errors.append(f"{f}: {n} lines (at most {MAX_LINES})")
        mod = module_of(src, f)
        if mod not in rank:
            errors.append(f"{f}: module {mod} is in no layer of {Path(__file__).name}")
            continue
        body = text.split("#[cfg(test)]")[0]  # tests may reach anything
        found = set(re.findall(r"\bcrate::(\w+)", body))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", body):
            found |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        uses.setdefault(mod, set()).update(u for u in found if u != mod)
    for mod, deps in sorted(uses.items()):
        for d in sorted(deps):
            if d not in rank:
                continue  # an item of lib.rs (e.g. a constant), not a module
            if rank[d] <= rank[mod]:
                errors.append(f"{mod} uses {d}, which is not below it (layers in {Path(__file__).name})")
    # a cycle is a use that is not below: reported above; say it outright too
    seen: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if seen.get(m) == 1:
            errors.append("module cycle: " + " -> ".join(path[path.index(m):] + [m]))
            return
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for d in sorted(uses.get(m, ())):
            if d in uses:
                visit(d, path + [m])
        seen[m] = 2

    for m in sorted(uses):
        visit(m, [])
    for e in errors:
        print(f"check-native-layout: {e}", file=sys.stderr)
    if not errors:
        print(f"check-native-layout: {len(uses)} modules, none over {MAX_LINES} lines, layers kept, no cycle")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
