#!/usr/bin/env python3
"""The import graph among a crate's top-level modules, and any circle in it.

    python3 scripts/module_cycles.py coordinator/src

A module `m` depends on `n` when a file of `m` (m.rs or m/…) names `crate::n` (in a `use` or
a path). Prints each module's dependencies, then the circles (strongly connected components of
more than one module); exits 1 if there is one.
"""
import re
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "coordinator/src")
modules = {}
for path in sorted(root.rglob("*.rs")):
    rel = path.relative_to(root)
    if rel.name in ("lib.rs", "main.rs") and len(rel.parts) == 1:
        continue
    top = rel.parts[0].removesuffix(".rs")
    text = path.read_text()
    # Leave comments out: doc links name modules without depending on them.
    code = "\n".join(line.split("//")[0] for line in text.splitlines())
    deps = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code))
    # `use crate::{a, b::c}` groups.
    for group in re.findall(r"use crate::\{([^}]*)\}", code, re.S):
        deps |= {part.strip().split("::")[0] for part in group.split(",") if part.strip()}
    modules.setdefault(top, set()).update(d for d in deps if d != top)

names = sorted(modules)
for m in names:
    print(f"{m}: {', '.join(sorted(d for d in modules[m] if d in modules))}")

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in modules.get(v, ()):
        if w not in modules:
            continue
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(comp)


for m in names:
    if m not in index:
        visit(m)
circles = [sorted(c) for c in sccs if len(c) > 1]
for c in circles:
    print("circle:", " <-> ".join(c))
if not circles:
    print("no circle")
sys.exit(1 if circles else 0)
