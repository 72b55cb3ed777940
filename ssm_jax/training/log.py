"""Run outputs: ``config.json`` and ``metrics.jsonl`` in the workdir, written by process 0 only."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
from ml_collections import config_dict


def write_config(workdir, config) -> None:
    """Record the resolved config (after CLI overrides) beside the run's outputs."""
    if jax.process_index() != 0:
        return
    path = Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _as_written(value):
    """JSON back into config values: lists as tuples, as the config files write them; None as an empty field of
    ml_collections' ``placeholder`` kind, as ``configs/common.py`` declares such fields, since only that kind takes a
    command-line value (``--config.data.source.categories=mono``) where a plain None refuses one."""
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_as_written(v) for v in value)
    if value is None:
        return config_dict.placeholder(object)
    return value


def read_config(workdir) -> ml_collections.ConfigDict:
    """A run's ``config.json`` as the (locked) config it was written from; lists come back as tuples, and fields that
    were None stay overridable."""
    path = Path(workdir).expanduser() / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected the config.json that train.py writes in its workdir")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected the config.json that train.py writes") from err
    config = ml_collections.ConfigDict(_as_written(values))
    config.lock()
    return config


class MetricsLog:
    """Append-only JSON lines, one per logged step; trimmed on resume to the restored step so lines never repeat."""

    def __init__(self, workdir):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def start_over(self) -> None:
        """Drop every line: a run starting from step 0 where one died before its first checkpoint."""
        if jax.process_index() == 0:
            self.path.unlink(missing_ok=True)

    def trim_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (written by a run that died before its next checkpoint), and a last line
        cut short by that death; a damaged line before the last is an error naming it."""
        if jax.process_index() != 0 or not self.path.exists():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line]
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines):
                    break
                raise ValueError(f"{self.path} line {number} is not a JSON record ({err}); expected one "
                                 f"{{\"step\": ..., ...}} per line: mend or remove that line to resume") from err
            if record["step"] <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, step: int, metrics: dict) -> None:
        if jax.process_index() != 0:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
