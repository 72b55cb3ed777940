"""Real-IAD (Wang et al. 2024), 30 objects x 5 views, anomaly detection (MambaAD).

Official layout::

    root/realiad_jsons/<category>.json   {"meta": {"prefix", "normal_class": "OK", ...},
                                          "train": [{category, anomaly_class, image_path, mask_path}, ...],
                                          "test": [...]}
    root/realiad_1024/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg
    root/realiad_1024/<category>/NG/<anomaly_class>/S0002/<...>.jpg  and the mask <...>.png beside it

``image_path``/``mask_path`` are relative to ``<image_dir>/<category>``; ``image_dir`` picks the resolution
release (``realiad_1024``, ``realiad_512``, ``realiad_256``) and ``json_dir`` the split
(``realiad_jsons`` = multi-view UIAD split; ``realiad_jsons_sv``, ``realiad_jsons_fuiad_0.0`` etc. also work).
A record is anomalous when ``anomaly_class`` differs from ``meta.normal_class``; every named file must exist.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from ssm_jax.data.common import ANOMALY, Record, Source, check_split, is_hidden, require_dir, select_categories


def _load_json(path: str, split: str) -> tuple[str, list[dict]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Real-IAD meta file {path!r} is not valid UTF-8 JSON (truncated or corrupt?): {e}") from e
    if split not in doc:
        raise ValueError(f"Real-IAD meta file {path!r} has no {split!r} list; expected keys 'meta', 'train', 'test'")
    return doc.get("meta", {}).get("normal_class", "OK"), doc[split]


def _record(entry: dict, cat_dir: str, category: str, normal_class: str, json_path: str) -> Record:
    missing = [k for k in ("anomaly_class", "image_path") if k not in entry]
    if missing:
        raise ValueError(f"Real-IAD meta file {json_path!r}: entry {entry} lacks {missing}")
    image = os.path.join(cat_dir, entry["image_path"])
    mask = os.path.join(cat_dir, entry["mask_path"]) if entry.get("mask_path") else None
    label = int(entry["anomaly_class"] != normal_class)
    if not os.path.isfile(image):
        raise FileNotFoundError(f"image {image!r} (listed in {json_path!r}) not found"
                                + (f"; its mask {mask!r} is listed" if mask else ""))
    if mask is not None and not os.path.isfile(mask):
        raise FileNotFoundError(f"mask {mask!r} (listed in {json_path!r}) not found for image {image!r}")
    return Record(image, label, category, entry["anomaly_class"] if label else "good", mask_path=mask)


def realiad_source(root: str, split: str = "train", *, categories: str | Sequence[str] | None = None,
                   image_dir: str = "realiad_1024", json_dir: str = "realiad_jsons", strict: bool = False) -> Source:
    check_split(split, ("train", "test"))
    jdir = require_dir(os.path.join(root, json_dir), "Real-IAD meta files <category>.json")
    idir = require_dir(os.path.join(root, image_dir), "Real-IAD images, one folder per category")
    available = sorted(f[:-5] for f in os.listdir(jdir) if f.endswith(".json") and not is_hidden(f))
    records = []
    for category in select_categories(available, categories, "Real-IAD", jdir,
                                      "one <category>.json meta file per category"):
        json_path = os.path.join(jdir, category + ".json")
        normal_class, entries = _load_json(json_path, split)
        if not entries:
            raise ValueError(f"Real-IAD meta file {json_path!r} has an empty {split!r} list")
        cat_dir = require_dir(os.path.join(idir, category), f"the images of category {category!r}")
        records += [_record(e, cat_dir, category, normal_class, json_path) for e in entries]
    return Source(records, ["good", "anomalous"], task=ANOMALY, strict=strict)
