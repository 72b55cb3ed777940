"""VisA (Zou et al. 2022), 12 objects, anomaly detection with the official 1-class split (MambaAD, SNARM).

Layout::

    root/split_csv/1cls.csv     columns: object,split,label,image,mask  (label "normal" / "anomaly";
                                image and mask paths relative to root, mask empty for normal rows)
    root/<object>/Data/Images/{Normal,Anomaly}/*.JPG
    root/<object>/Data/Masks/Anomaly/*.png

Every file the CSV names must exist, and every anomaly row must name a mask. ``categories`` selects
objects (None: all, the multi-class setting).
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

from ssm_jax.data.common import ANOMALY, Record, Source, check_split, require_dir, require_file, select_categories

CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
              "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
COLUMNS = ("object", "split", "label", "image", "mask")


def read_split_csv(csv_path: str) -> list[dict]:
    require_file(csv_path, "the VisA split file split_csv/1cls.csv (object,split,label,image,mask)")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"VisA split file {csv_path!r} lacks columns {missing}; expected {list(COLUMNS)}")
        return list(reader)


def _record(root: str, row: dict, csv_path: str) -> Record:
    image = os.path.join(root, row["image"])
    label = {"normal": 0, "anomaly": 1}.get(row["label"])
    if label is None:
        raise ValueError(f"{csv_path!r}: label {row['label']!r} for {row['image']!r}; expected 'normal' or 'anomaly'")
    mask = os.path.join(root, row["mask"]) if row["mask"] else None
    if mask is not None and not os.path.isfile(mask):
        raise FileNotFoundError(f"mask {mask!r} (listed in {csv_path!r}) not found for image {image!r}")
    if not os.path.isfile(image):
        raise FileNotFoundError(f"image {image!r} (listed in {csv_path!r}) not found"
                                + (f"; its mask {mask!r} exists" if mask else ""))
    if label and mask is None:
        raise ValueError(f"{csv_path!r}: anomalous image {image!r} has no mask; expected a Data/Masks/Anomaly path")
    return Record(image, label, row["object"], "anomaly" if label else "good", mask_path=mask)


def visa_source(root: str, split: str = "train", *, categories: str | Sequence[str] | None = None,
                split_file: str = "split_csv/1cls.csv", strict: bool = False) -> Source:
    check_split(split, ("train", "test"))
    require_dir(root, "the VisA root with split_csv/ and one folder per object")
    csv_path = os.path.join(root, split_file)
    rows = read_split_csv(csv_path)
    selected = set(select_categories(sorted({r["object"] for r in rows}), categories, "VisA", csv_path,
                                     f"rows of {','.join(COLUMNS)}, one per image"))
    records = [_record(root, r, csv_path) for r in rows if r["split"] == split and r["object"] in selected]
    for category in sorted(selected - {r.category for r in records}):
        raise ValueError(f"VisA object {category!r} has no {split} rows in {csv_path!r}")
    return Source(records, ["good", "anomalous"], task=ANOMALY, strict=strict)
