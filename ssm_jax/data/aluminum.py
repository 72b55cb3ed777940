"""Aluminum surface-defect classification (MemoryMamba, paper 000: 4 classes, 277 train / 123 test).

The paper's source (AI Studio dataset 133083) is distributed as one folder per class::

    root/<class_name>/*.{jpg,png,bmp,...}

The four class names are taken from the folders (sorted); pass ``class_names`` to fix them. Default split:
stratified, seeded, with the paper's 277/123 sizes (as a ratio when the folder has a different total).
"""

from __future__ import annotations

from typing import Sequence

from ssm_jax.data.common import Source
from ssm_jax.data.folder import folder_source
from ssm_jax.data.split import PAPER_SPLITS

NUM_CLASSES = 4


def aluminum_source(root: str, split: str = "train", *, class_names: Sequence[str] | None = None,
                    sizes: tuple[int, int] = PAPER_SPLITS["aluminum"], seed: int = 0, strict: bool = False) -> Source:
    source = folder_source(root, split, class_names=class_names, sizes=sizes, seed=seed, strict=strict,
                           dataset="Aluminum")
    if len(source.class_names) != NUM_CLASSES:
        raise ValueError(f"Aluminum root {root!r} has class folders {list(source.class_names)}; "
                         f"expected {NUM_CLASSES} class folders")
    return source
