"""NEU surface-defect database (hot-rolled steel), 6-class classification (paper 000: 228 train / 3,372 test).

Two layouts are accepted, detected from what ``root`` holds:

* flat, as NEU-CLS is distributed: ``root/Cr_1.bmp``, ``In_12.bmp``, ``Pa_*``, ``PS_*``, ``RS_*``, ``Sc_*``;
  the class is the file-name prefix before the first ``_`` (case-insensitive);
* class folders, as in NEU-DET-derived copies: ``root/{crazing,inclusion,patches,pitted_surface,
  rolled-in_scale,scratches}/*.{bmp,jpg,png}``.

Labels follow ``CLASS_NAMES``. Default split: stratified, seeded, paper sizes as a ratio.
"""

from __future__ import annotations

import os

from ssm_jax.data.common import Source, list_images, require_dir
from ssm_jax.data.folder import class_folders, source_from_files
from ssm_jax.data.split import PAPER_SPLITS

CLASS_NAMES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
PREFIXES = {"cr": "crazing", "in": "inclusion", "pa": "patches", "ps": "pitted_surface",
            "rs": "rolled-in_scale", "sc": "scratches"}


def _flat_files(root: str) -> dict[str, list[str]]:
    files = {c: [] for c in CLASS_NAMES}
    unknown = []
    for path in list_images(root):
        prefix = os.path.basename(path).split("_", 1)[0].lower()
        (files[PREFIXES[prefix]] if prefix in PREFIXES else unknown).append(path)
    if unknown:
        raise ValueError(f"NEU files {unknown[:5]} have no known class prefix; expected names like "
                         f"Cr_1.bmp with a prefix in {sorted(PREFIXES)}")
    empty = [c for c, f in files.items() if not f]
    if empty:
        raise ValueError(f"NEU root {root!r} has no images for classes {empty}; expected flat files "
                         f"named <prefix>_<n>.bmp (prefixes {sorted(PREFIXES)}) or one folder per class")
    return files


def neu_source(root: str, split: str = "train", *, sizes: tuple[int, int] = PAPER_SPLITS["neu"],
               seed: int = 0, strict: bool = False) -> Source:
    require_dir(root, "the NEU root: flat <prefix>_<n>.bmp files or one folder per class")
    if any(os.path.isdir(os.path.join(root, c)) for c in CLASS_NAMES):
        files = class_folders(root, CLASS_NAMES, "NEU")
    else:
        files = _flat_files(root)
    return source_from_files(files, CLASS_NAMES, split, test_fraction=None, sizes=sizes, seed=seed, strict=strict)
