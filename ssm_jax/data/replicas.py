"""Tiny replicas of every dataset's on-disk layout (a few small images per class/category), for tests.

``write_replica(name, root)`` writes dataset ``name`` (a ``get_source`` name) under ``root`` and returns
the directory to pass as its root. Images are seeded noise with a per-class brightness; masks have the
image's stem and size with a small white square.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from PIL import Image

from ssm_jax.data import gc10, mt, neu

SIZE = 16


def _image(path: str, rng: np.random.Generator, value: int = 128, mode: str = "RGB", size: int = SIZE) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = np.clip(rng.normal(value, 20, (size, size, channels)), 0, 255).astype(np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(path)
    return path


def _mask(path: str, size: int = SIZE) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.zeros((size, size), np.uint8)
    arr[size // 4: size // 2, size // 4: size // 2] = 255
    Image.fromarray(arr).save(path)
    return path


def _classes(root, rng, names, per_class, ext, mode="RGB"):
    for k, name in enumerate(names):
        for i in range(per_class):
            _image(os.path.join(root, name, f"{i:03d}{ext}"), rng, 40 + 30 * k, mode)


def _neu(root, rng, per_class, flat=True):
    prefixes = {v: k for k, v in neu.PREFIXES.items()}
    for k, name in enumerate(neu.CLASS_NAMES):
        for i in range(per_class):
            prefix = prefixes[name].capitalize() if prefixes[name] not in ("ps", "rs") else prefixes[name].upper()
            path = (os.path.join(root, f"{prefix}_{i + 1}.bmp") if flat
                    else os.path.join(root, name, f"{name}_{i + 1}.bmp"))
            _image(path, rng, 40 + 30 * k, "L")


def _mt(root, rng, per_class):
    for k, folder in enumerate(mt.FOLDERS):
        for i in range(per_class):
            stem = os.path.join(root, folder, "Imgs", f"exp{k}_num_{i}")
            _image(stem + ".jpg", rng, 40 + 30 * k, "L")
            _mask(stem + ".png")


def _mvtec(root, rng, per_class, categories=("bottle", "grid")):
    for category in categories:
        d = os.path.join(root, category)
        for i in range(per_class):
            _image(os.path.join(d, "train", "good", f"{i:03d}.png"), rng)
            _image(os.path.join(d, "test", "good", f"{i:03d}.png"), rng)
            for defect in ("broken", "crack"):
                _image(os.path.join(d, "test", defect, f"{i:03d}.png"), rng, 200)
                _mask(os.path.join(d, "ground_truth", defect, f"{i:03d}_mask.png"))


def _visa(root, rng, per_class, categories=("candle", "pcb1")):
    rows = []
    for category in categories:
        for i in range(2 * per_class):
            split = "train" if i < per_class else "test"
            rows.append([category, split, "normal", f"{category}/Data/Images/Normal/{i:04d}.JPG", ""])
            _image(os.path.join(root, rows[-1][3]), rng)
        for i in range(per_class):
            image, mask = f"{category}/Data/Images/Anomaly/{i:03d}.JPG", f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            _image(os.path.join(root, image), rng, 200)
            _mask(os.path.join(root, mask))
            rows.append([category, "test", "anomaly", image, mask])
    os.makedirs(os.path.join(root, "split_csv"), exist_ok=True)
    with open(os.path.join(root, "split_csv", "1cls.csv"), "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"]] + rows)


def _realiad(root, rng, per_class, categories=("audiojack", "pcb"), image_dir="realiad_1024"):
    os.makedirs(os.path.join(root, "realiad_jsons"), exist_ok=True)
    for category in categories:
        cat_dir = os.path.join(root, image_dir, category)
        doc = {"meta": {"prefix": f"{category}/", "normal_class": "OK"}, "train": [], "test": []}
        for i in range(per_class):
            for split in ("train", "test"):
                rel = f"OK/S{i:04d}/{category}_{i:04d}_OK_C1_{split}.jpg"
                _image(os.path.join(cat_dir, rel), rng)
                doc[split].append({"category": category, "anomaly_class": "OK", "image_path": rel, "mask_path": None})
            rel = f"NG/AK/S{i + 100:04d}/{category}_{i + 100:04d}_NG_AK_C2_x.jpg"
            _image(os.path.join(cat_dir, rel), rng, 200)
            _mask(os.path.join(cat_dir, rel[:-4] + ".png"))
            doc["test"].append({"category": category, "anomaly_class": "AK", "image_path": rel,
                                "mask_path": rel[:-4] + ".png"})
        with open(os.path.join(root, "realiad_jsons", f"{category}.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f)


def _mvtec3d(root, rng, per_class, categories=("bagel", "foam")):
    import tifffile

    for category in categories:
        for split, defects in (("train", ["good"]), ("validation", ["good"]), ("test", ["good", "crack"])):
            for defect in defects:
                d = os.path.join(root, category, split, defect)
                for i in range(per_class):
                    _image(os.path.join(d, "rgb", f"{i:03d}.png"), rng, 200 if defect != "good" else 128)
                    _mask(os.path.join(d, "gt", f"{i:03d}.png"))
                    os.makedirs(os.path.join(d, "xyz"), exist_ok=True)
                    tifffile.imwrite(os.path.join(d, "xyz", f"{i:03d}.tiff"), photometric="rgb", data=
                                     rng.normal(size=(SIZE, SIZE, 3)).astype(np.float32))


def _elpv(root, rng, per_class):
    lines = []
    for k, p in enumerate(("0.0", "0.3333333333333333", "0.6666666666666666", "1.0")):
        for t in ("mono", "poly"):
            for i in range(per_class):
                rel = f"images/cell{len(lines) + 1:04d}.png"
                _image(os.path.join(root, rel), rng, 60 + 40 * k, "L")
                lines.append(f"{rel}  {p}  {t}")
    with open(os.path.join(root, "labels.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


WRITERS = {
    "folder": lambda root, rng, n: _classes(root, rng, ("a", "b", "c"), n, ".png"),
    "aluminum": lambda root, rng, n: _classes(root, rng, ("dirty", "pinhole", "scratch", "dent"), n, ".jpg"),
    "gc10": lambda root, rng, n: _classes(root, rng, [str(k) for k in range(1, 1 + len(gc10.CLASS_NAMES))], n, ".jpg",
                                          "L"),
    "neu": _neu, "neu_folders": lambda root, rng, n: _neu(root, rng, n, flat=False),
    "mt": _mt, "mvtec": _mvtec, "visa": _visa, "realiad": _realiad, "mvtec3d": _mvtec3d,
    "elpv": _elpv, "elpv_ad": _elpv,
}


def write_replica(name: str, root: str, per_class: int = 3, seed: int = 0) -> str:
    """Writes a replica of ``name`` into ``root/<name>`` and returns that directory."""
    if name not in WRITERS:
        raise ValueError(f"no replica for {name!r}; expected one of {sorted(WRITERS)}")
    out = os.path.join(root, name)
    WRITERS[name](out, np.random.default_rng(seed), per_class)
    return out
