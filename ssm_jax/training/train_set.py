"""What predicting on new images needs of a run's training split, kept beside its checkpoints.

A trained model is often run where its training images are not (an inspection station). Prediction needs only
the split's task, class names and size (SNARM's patch bank has a row count that follows it), its centre crop and
the bit depth its 16-bit images were read with, so training writes them to ``<workdir>/train_set.json`` and
``eval.py --predict_dir`` and ``ssm_jax.inference.Predictor`` read them from there instead of the dataset.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

FILE = "train_set.json"


@dataclasses.dataclass(frozen=True)
class TrainSet:
    """A training split as prediction sees it: it stands in for the ``Source`` in a run built to predict."""

    task: str
    class_names: tuple[str, ...]
    num_images: int
    center_crop: float = 1.0
    bit_depth: int = 0

    def __len__(self) -> int:
        return self.num_images


def save_train_set(workdir, source) -> None:
    """Writes ``source``'s task, class names, size, centre crop and bit depth to ``<workdir>/train_set.json``."""
    record = {"task": source.task, "class_names": list(source.class_names), "num_images": len(source),
              "center_crop": source.center_crop, "bit_depth": source.bit_depth}
    (Path(workdir) / FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_train_set(workdir) -> TrainSet | None:
    """The run's ``train_set.json``, or None when it has none (a run trained before it was written)."""
    path = Path(workdir) / FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return TrainSet(record["task"], tuple(record["class_names"]), int(record["num_images"]),
                        float(record.get("center_crop", 1.0)), int(record.get("bit_depth", 0)))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is unreadable ({type(err).__name__}: {err}); expected the task, class names and "
                         f"size of the run's training split as training writes them; delete it to read them from "
                         f"the dataset again") from err
