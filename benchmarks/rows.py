"""What the benchmark scripts share around their measurements: choosing shapes by name, writing result rows, and
the code of a git revision for the A/B scripts to run beside the working tree."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def extract_revision(rev: str, paths, out_dir: str, script: str) -> None:
    """``git archive`` of revision ``rev``'s ``paths``, extracted under ``out_dir``. Exits, naming ``script``, on a
    revision or path git lacks."""
    done = subprocess.run(["git", "archive", "--format=tar", rev, *paths], capture_output=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{script}: git archive {rev} {' '.join(paths)} failed: {done.stderr.decode().strip()}")
    os.makedirs(out_dir, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(out_dir, filter="data")


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
