"""Compare two JSON result files leaf by leaf, ignoring timings and the environment.

Usage: .venv/bin/python benchmarks/compare_results.py BEFORE.json AFTER.json [--rel TOL]

Used to show a refactoring changed no result (docs/architecture.md); any two
results.json (benchmark) or benchmarks/results/*.json files of the same kind compare.

Walks both documents recursively (objects by key, arrays by index) and reports every
leaf whose value differs, every key or index present on one side only, and every type
mismatch. Prints the number of compared leaves and of differing ones; exits 1 if any
differ. Floats are compared exactly (NaN equals NaN); ``--rel TOL`` (optional) also
prints, for each differing float, whether it is within relative tolerance TOL.

Ignore rules (a path is skipped, with everything below it, when ANY of its keys matches):

1. the key contains ``wall_s``            (wall_s, train_wall_s: wall-clock times);
2. the key contains ``time_ms``           (place_time_ms, mean_place_time_ms);
3. the key contains ``place_time``        (place_time_ms spelled otherwise);
4. the key ends in ``_s``                 (other timings in seconds, e.g.
                                           inference_100x8_s, inference_1000x128_s);
5. the key is ``environment``             (host, versions: not results);
6. the key is ``command``                 (the command line: the after run omits the
                                           --config that now defaults to the packaged file);
7. the key is ``plots``                   (plot file paths; the PNGs are compared apart).

Nothing else is ignored: costs, placements (device_of), rankings, speedups, MAPEs,
configs, histories (except their wall_s) are all compared.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

IGNORED_EXACT = {"environment", "command", "plots"}
IGNORED_CONTAINS = ("wall_s", "time_ms", "place_time")


def ignored(key: str) -> bool:
    return key in IGNORED_EXACT or any(p in key for p in IGNORED_CONTAINS) or key.endswith("_s")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def walk(a: Any, b: Any, path: str, out: list[tuple[str, Any, Any]], counter: list[int]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if ignored(str(key)):
                continue
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                counter[0] += 1
                out.append((sub, a.get(key, "<missing>"), b.get(key, "<missing>")))
            else:
                walk(a[key], b[key], sub, out, counter)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = f"{path}[{i}]"
            if i >= len(a) or i >= len(b):
                counter[0] += 1
                left = a[i] if i < len(a) else "<missing>"
                right = b[i] if i < len(b) else "<missing>"
                out.append((sub, left, right))
            else:
                walk(a[i], b[i], sub, out, counter)
    else:
        counter[0] += 1
        if not same(a, b):
            out.append((path, a, b))


def main() -> int:
    args = sys.argv[1:]
    rel = None
    if "--rel" in args:
        i = args.index("--rel")
        rel = float(args[i + 1])
        del args[i : i + 2]
    before, after = (json.loads(Path(p).read_text(encoding="utf-8")) for p in args)
    diffs: list[tuple[str, Any, Any]] = []
    counter = [0]
    walk(before, after, "", diffs, counter)
    for path, a, b in diffs:
        note = ""
        if isinstance(a, float) and isinstance(b, float):
            r = abs(a - b) / max(abs(a), abs(b), 1e-300)
            note = f"  (rel diff {r:.2e}" + (f", within {rel:g}" if rel and r <= rel else "") + ")"
        print(f"DIFF {path}: {a!r} -> {b!r}{note}")
    print(f"{args[0]} vs {args[1]}: compared {counter[0]} leaves, {len(diffs)} differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
