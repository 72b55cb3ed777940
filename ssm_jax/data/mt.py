"""Magnetic-Tile surface defects (Huang et al. 2020), 6-class classification (paper 000: 1,878 / 810).

Layout as distributed::

    root/MT_{Blowhole,Break,Crack,Fray,Free,Uneven}/Imgs/<stem>.jpg   image
                                                      /<stem>.png   its defect mask (same stem)

Every ``.jpg`` must have its ``.png`` mask and vice versa; records carry ``mask_path``. Class ``k`` is the
k-th folder in ``FOLDERS`` (names in ``CLASS_NAMES``). Default split: stratified, seeded, paper ratio.
"""

from __future__ import annotations

import os

from ssm_jax.data.common import Record, Source, list_images, require_dir
from ssm_jax.data.split import PAPER_SPLITS, take_split

CLASS_NAMES = ("blowhole", "break", "crack", "fray", "free", "uneven")
FOLDERS = tuple("MT_" + c.capitalize() for c in CLASS_NAMES)


def _class_records(root: str, label: int) -> list[Record]:
    imgs = os.path.join(root, FOLDERS[label], "Imgs")
    require_dir(imgs, f"Magnetic-Tile class folder with .jpg images and .png masks ({FOLDERS[label]}/Imgs)")
    jpgs = {os.path.splitext(p)[0]: p for p in list_images(imgs, (".jpg",))}
    pngs = {os.path.splitext(p)[0]: p for p in list_images(imgs, (".png",))}
    if not jpgs:
        raise ValueError(f"Magnetic-Tile folder {imgs!r} holds no .jpg images")
    unpaired = sorted(set(jpgs) ^ set(pngs))
    if unpaired:
        stem = unpaired[0]
        if stem in jpgs:
            raise FileNotFoundError(f"mask {stem + '.png'!r} not found for image {jpgs[stem]!r}; "
                                    "expected a .png mask with the image's stem")
        raise FileNotFoundError(f"image {stem + '.jpg'!r} not found for mask {pngs[stem]!r}; "
                                "expected a .jpg image with the mask's stem")
    return [Record(path=jpgs[s], label=label, category=CLASS_NAMES[label], mask_path=pngs[s]) for s in sorted(jpgs)]


def mt_source(root: str, split: str = "train", *, sizes: tuple[int, int] = PAPER_SPLITS["mt"],
              seed: int = 0, strict: bool = False) -> Source:
    require_dir(root, f"the Magnetic-Tile root holding {', '.join(FOLDERS)}")
    records = [r for label in range(len(FOLDERS)) for r in _class_records(root, label)]
    records = take_split(records, [r.label for r in records], split, sizes=sizes, seed=seed)
    return Source(records, list(CLASS_NAMES), strict=strict)
