"""GC10-DET steel-surface defects as 10-class classification (paper 000: 1,834 train / 458 test).

Layout of the distributed classification folders (labels in ``.xml`` files elsewhere are not needed)::

    root/1/*.jpg  ...  root/10/*.jpg

Folder ``k`` is class ``k - 1``: punching_hole, welding_line, crescent_gap, water_spot, oil_spot,
silk_spot, inclusion, rolled_pit, crease, waist_folding. Default split: stratified, seeded, paper sizes.
"""

from __future__ import annotations

from ssm_jax.data.common import Source
from ssm_jax.data.folder import class_folders, source_from_files
from ssm_jax.data.split import PAPER_SPLITS

CLASS_NAMES = ("punching_hole", "welding_line", "crescent_gap", "water_spot", "oil_spot",
               "silk_spot", "inclusion", "rolled_pit", "crease", "waist_folding")


def gc10_source(root: str, split: str = "train", *, sizes: tuple[int, int] = PAPER_SPLITS["gc10"],
                seed: int = 0, strict: bool = False) -> Source:
    folders = class_folders(root, [str(k) for k in range(1, 11)], "GC10-DET")
    files = {name: folders[str(k + 1)] for k, name in enumerate(CLASS_NAMES)}
    return source_from_files(files, CLASS_NAMES, split, test_fraction=None, sizes=sizes, seed=seed, strict=strict)
