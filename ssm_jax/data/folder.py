"""Generic class-per-folder classification layout, the base of NEU (folders), GC10 and Aluminum.

Layout::

    root/<class_name>/*.{png,jpg,jpeg,bmp,tif,tiff,webp}

Class names are the sorted folder names unless ``class_names`` fixes them (and their order = label ids);
then every named folder must exist and hold images. The train/test split is ``stratified_split`` over
the whole folder with ``test_fraction`` (or ``sizes``) and ``seed``; ``split="all"`` returns everything.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from ssm_jax.data.common import Record, Source, require_dir, require_images, subdirs
from ssm_jax.data.split import take_split


def source_from_files(files: Mapping[str, Sequence[str]], class_names: Sequence[str], split: str, *,
                      test_fraction: float | None, sizes: tuple[int, int] | None, seed: int,
                      strict: bool = False) -> Source:
    """Classification source from {class name: image paths}, split stratified by class."""
    records = [Record(path=p, label=i, category=c) for i, c in enumerate(class_names) for p in files[c]]
    records = take_split(records, [r.label for r in records], split,
                         test_fraction=test_fraction, sizes=sizes, seed=seed)
    return Source(records, list(class_names), strict=strict)


def class_folders(root: str, class_names: Sequence[str] | None, dataset: str) -> dict[str, list[str]]:
    """{class: sorted image paths} for ``root/<class>/``; checks every class folder and that it is not empty."""
    require_dir(root, f"the {dataset} dataset root with one folder per class")
    if class_names is None:
        class_names = subdirs(root)
        if not class_names:
            raise ValueError(f"{dataset} root {root!r} has no class folders; expected root/<class>/<images>")
    missing = [c for c in class_names if not os.path.isdir(os.path.join(root, c))]
    if missing:
        raise FileNotFoundError(f"{dataset} class folders {[os.path.join(root, c) for c in missing]} not found; "
                                f"expected one folder per class: {list(class_names)}")
    return {c: require_images(os.path.join(root, c), f"{dataset} images of class {c!r}") for c in class_names}


def folder_source(root: str, split: str = "train", *, class_names: Sequence[str] | None = None,
                  test_fraction: float | None = 0.25, sizes: tuple[int, int] | None = None, seed: int = 0,
                  strict: bool = False, dataset: str = "folder") -> Source:
    """Class-per-folder source; ``sizes`` (train, test) overrides ``test_fraction`` when given."""
    files = class_folders(root, class_names, dataset)
    return source_from_files(files, list(files), split, test_fraction=None if sizes else test_fraction,
                             sizes=sizes, seed=seed, strict=strict)
