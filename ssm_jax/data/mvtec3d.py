"""MVTec 3D-AD, RGB part (SNARM), 10 categories; point maps (xyz) only on request.

Layout::

    root/<category>/{train,validation,test}/<defect>/rgb/<stem>.png
                                                     /xyz/<stem>.tiff   (organised point cloud, float32 HxWx3)
                                                     /gt/<stem>.png     (mask; all zero for "good")

train and validation hold only ``good``. Every rgb image must have its gt mask (test) and, with
``with_xyz=True``, its xyz file; a mask without an rgb image is an error. ``load_xyz`` reads a point map
with tifffile (a scikit-image dependency).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ssm_jax.data.common import ANOMALY, Record, Source, check_split, list_images, require_dir, require_images, \
    select_categories, subdirs

CATEGORIES = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")


def _defect_records(defect_dir: str, category: str, defect: str, with_xyz: bool, need_mask: bool) -> list[Record]:
    rgb = require_images(os.path.join(defect_dir, "rgb"), "rgb/<stem>.png images (MVTec 3D-AD layout)", (".png",))
    gt_dir = os.path.join(defect_dir, "gt")
    masks = {os.path.splitext(os.path.basename(p))[0]: p
             for p in (list_images(gt_dir, (".png",)) if os.path.isdir(gt_dir) else [])}
    stems = {os.path.splitext(os.path.basename(p))[0]: p for p in rgb}
    orphans = sorted(set(masks) - set(stems))
    if orphans:
        raise FileNotFoundError(f"mask {masks[orphans[0]]!r} has no image; "
                                f"expected {os.path.join(defect_dir, 'rgb', orphans[0])}.png")
    records = []
    label = int(defect != "good")
    for stem, path in sorted(stems.items()):
        if need_mask and stem not in masks:
            raise FileNotFoundError(f"image {path!r} has no mask; expected {os.path.join(gt_dir, stem)}.png")
        xyz = None
        if with_xyz:
            xyz = os.path.join(defect_dir, "xyz", stem + ".tiff")
            if not os.path.isfile(xyz):
                raise FileNotFoundError(f"point map {xyz!r} not found for image {path!r}")
        records.append(Record(path, label, category, defect, mask_path=masks.get(stem) if label else None,
                              xyz_path=xyz))
    return records


def mvtec3d_source(root: str, split: str = "train", *, categories: str | Sequence[str] | None = None,
                   with_xyz: bool = False, strict: bool = False) -> Source:
    check_split(split, ("train", "validation", "test"))
    require_dir(root, "the MVTec 3D-AD root with one folder per category")
    available = subdirs(root)
    records = []
    for category in select_categories(available, categories, "MVTec 3D-AD", root,
                                      "one folder per category, each with train/, validation/ and test/"):
        split_dir = require_dir(os.path.join(root, category, split), f"{split}/<defect>/ folders")
        defects = subdirs(split_dir)
        if not defects:
            raise ValueError(f"MVTec 3D-AD folder {split_dir!r} is empty; expected <defect>/rgb/ folders")
        for defect in defects:
            records += _defect_records(os.path.join(split_dir, defect), category, defect, with_xyz,
                                       need_mask=split == "test" and defect != "good")
    return Source(records, ["good", "anomalous"], task=ANOMALY, strict=strict)


def load_xyz(path: str) -> np.ndarray:
    """An organised point cloud as float32 (H, W, 3); zeros mark missing points."""
    import tifffile

    xyz = np.asarray(tifffile.imread(path), dtype=np.float32)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"point map {path!r} has shape {xyz.shape}; expected (H, W, 3)")
    return xyz
