"""What the benchmark scripts share around their measurements: choosing shapes by name, and writing result rows."""

from __future__ import annotations

import json


def select_shapes(shapes, names: str | None, default=None) -> list:
    """The shapes (objects with a ``name``) named in the comma-separated ``names``, in their order; when None,
    ``default`` (all of ``shapes`` when that is None too). Exits naming the unknown ones and the valid names."""
    if not names:
        return list(shapes if default is None else default)
    by_name = {s.name: s for s in shapes}
    wanted = names.split(",")
    unknown = sorted(set(wanted) - set(by_name))
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; valid: {', '.join(by_name)}")
    return [by_name[name] for name in wanted]


def append_jsonl(path: str | None, row: dict) -> None:
    """Append ``row`` as one JSON line to ``path`` (nothing when None): rows survive a run that dies midway."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
