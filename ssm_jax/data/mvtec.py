"""MVTec AD (Bergmann et al.), 15 categories, unsupervised anomaly detection (MambaAD, SNARM).

Layout::

    root/<category>/train/good/*.png
    root/<category>/test/good/*.png
    root/<category>/test/<defect>/<stem>.png
    root/<category>/ground_truth/<defect>/<stem>_mask.png

Every defective test image must have its mask and every mask its image. ``categories=None`` loads all
categories into one set (the multi-class setting of MambaAD); a name or list selects single classes.

Your own parts in this layout (``configs/mambaad_folder.py``, ``configs/snarm_folder.py``) often have no masks, or
masks for some defects only: ``require_masks=False`` takes a defective image without a mask (or a defect without
its ``ground_truth`` folder) as annotated at image level only, scored by the image metrics; the pixel metrics
then use the images that have masks. A mask must still have its image, and a file in ``ground_truth`` not named
``<stem>_mask.png`` is refused rather than skipped. A ``test/<defect>`` folder with no image yet (made ahead of its
first defective part) is skipped with a warning.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

from ssm_jax.data.common import ANOMALY, Record, Source, check_split, images_below, list_images, require_dir, \
    require_images, select_categories, subdirs

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
              "screw", "tile", "toothbrush", "transistor", "wood", "zipper")


def _test_records(cat_dir: str, category: str, require_masks: bool) -> list[Record]:
    test_dir = require_dir(os.path.join(cat_dir, "test"), "test/<defect>/ folders (MVTec AD layout)")
    defects = subdirs(test_dir)
    if "good" not in defects:  # said now, not as NaN image metrics after training
        warnings.warn(f"category {category!r}: {test_dir} has no good/ folder, so every test image counts as "
                      f"anomalous and its image metrics are undefined; normal test images go in "
                      f"{os.path.join(test_dir, 'good')} (the folder name 'good' is fixed)", stacklevel=3)
    gt_root = os.path.join(cat_dir, "ground_truth")
    stray = sorted(set(subdirs(gt_root)) - set(defects)) if os.path.isdir(gt_root) else []
    if stray:  # a mask folder named otherwise than its defect's (scratches / scratch) would be passed over
        warnings.warn(f"category {category!r}: {gt_root} has folders {stray} that match no test/<defect> folder "
                      f"({', '.join(d for d in defects if d != 'good') or 'none'}), so their masks are not read; "
                      f"expected ground_truth/<defect> named as test/<defect>", stacklevel=3)
    records = []
    for defect in defects:
        defect_dir, gt_dir = os.path.join(test_dir, defect), os.path.join(gt_root, defect)
        if not images_below(defect_dir) and not images_below(gt_dir):  # masks without images stay an error
            warnings.warn(f"category {category!r}: {defect_dir} holds no images (a folder made ahead of its parts?), "
                          f"so it is skipped", stacklevel=3)
            continue
        files = require_images(defect_dir, f"test images of defect {defect!r}")
        if defect == "good":
            records += [Record(p, 0, category, "good") for p in files]
            continue
        if require_masks or os.path.isdir(gt_dir):
            require_dir(gt_dir, f"masks of defect {defect!r}")
            named = [f for f in list_images(gt_dir) if not f.lower().endswith("_mask.png")]
            if named:
                raise ValueError(f"mask file {named[0]!r} is not named <image stem>_mask.png; expected PNG masks "
                                 f"(lossless: JPEG's artefacts would mark pixels defective) such as "
                                 f"{os.path.join(gt_dir, os.path.splitext(os.path.basename(files[0]))[0])}_mask.png")
        stems = {}
        for path in files:  # a mask is matched by stem: 000.png and 000.jpg would share one
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem in stems:
                raise ValueError(f"test images {stems[stem]!r} and {path!r} share the stem {stem!r}; expected one "
                                 f"image per stem, as its mask is found by it (<stem>_mask.png): rename one")
            stems[stem] = path
        masks = ({os.path.basename(p)[: -len("_mask.png")]: p for p in list_images(gt_dir, ("_mask.png",))}
                 if os.path.isdir(gt_dir) else {})
        orphans = sorted(set(masks) - set(stems))
        if orphans:
            raise FileNotFoundError(f"mask {masks[orphans[0]]!r} has no image; "
                                    f"expected {os.path.join(test_dir, defect, orphans[0])}.png")
        for stem, path in sorted(stems.items()):
            if stem not in masks and require_masks:
                raise FileNotFoundError(f"image {path!r} has no mask; expected {os.path.join(gt_dir, stem)}_mask.png "
                                        f"(or pass require_masks=False: --config.data.source.require_masks=False)")
            records.append(Record(path, 1, category, defect, mask_path=masks.get(stem)))
    return records


def mvtec_source(root: str, split: str = "train", *, categories: str | Sequence[str] | None = None,
                 require_masks: bool = True, strict: bool = False) -> Source:
    check_split(split, ("train", "test"))
    require_dir(root, "the MVTec AD root with one folder per category")
    if all(os.path.isdir(os.path.join(root, d)) for d in ("train", "test")):
        raise FileNotFoundError(f"{root!r} holds train/ and test/ itself: it looks like one category's (product's) "
                                f"folder; expected the folder above it, which holds one folder per category")
    records = []
    for category in select_categories(subdirs(root), categories, "MVTec AD", root,
                                      "one folder per category, each with train/good/ and test/ (MVTec AD layout)"):
        cat_dir = os.path.join(root, category)
        if split == "train":
            files = require_images(os.path.join(cat_dir, "train", "good"), "normal training images")
            records += [Record(p, 0, category, "good") for p in files]
        else:
            records += _test_records(cat_dir, category, require_masks)
    return Source(records, ["good", "anomalous"], task=ANOMALY, strict=strict)
