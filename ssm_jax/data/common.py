"""Records, the random-access source every loader returns, and the layout checks they share.

A source holds only paths and labels (cheap to build, picklable for grain workers); pixels are decoded by
``Source.load`` inside the input pipeline. Every loader validates its layout up front and raises
``FileNotFoundError``/``ValueError`` naming the path and what was expected there.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

import numpy as np

from ssm_jax.data import images

CLASSIFICATION = "classification"
ANOMALY = "anomaly"


@dataclasses.dataclass(frozen=True)
class Record:
    """One example. Classification: ``label`` indexes ``class_names``, ``category`` is the class name and
    ``subset`` ("" for none) a part of the data the evaluation also scores on its own (ELPV: the cell type, mono or
    poly, as the published results report it). Anomaly detection: ``label`` is 0 (good) / 1 (anomalous), ``defect``
    the defect type ("good" for normals), ``mask_path`` the pixel mask or None (None for a normal image means an
    all-zero mask)."""

    path: str
    label: int
    category: str = ""
    defect: str = ""
    mask_path: str | None = None
    xyz_path: str | None = None
    subset: str = ""


@dataclasses.dataclass
class Source:
    """A random-access sequence of records (grain's ``RandomAccessDataSource`` protocol).

    ``task`` is "classification" or "anomaly"; ``class_names`` are the class names (classification) or
    ``["good", "anomalous"]`` (anomaly). ``load(record, size)`` returns a dict with ``image`` uint8
    (H, W, 3), ``label`` int and, for anomaly sources, ``mask`` float32 (H, W) and ``has_mask`` bool.
    With ``center_crop`` c < 1 an image (and its mask) is resized to round(size / c) and its centre ``size`` x
    ``size`` kept, as SNARM's released preprocessing does (448 then 392: c = 0.875). ``bit_depth`` b > 0 reads
    16/32-bit grayscale images, and 16-bit colour arrays, as b-bit camera data (``images.to_rgb``).
    """

    records: Sequence[Record]
    class_names: Sequence[str]
    task: str = CLASSIFICATION
    strict: bool = False
    center_crop: float = 1.0
    bit_depth: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    def load(self, record: Record, size: int | None = None) -> dict:
        if size is None or self.center_crop == 1.0:
            return self.decode(record, size)
        return {k: crop_centre(v, size) if k in ("image", "mask") else v
                for k, v in self.decode(record, resized_side(size, self.center_crop)).items()}

    def load_shown(self, indices: Sequence[int], picture: str, size: int | None = None) -> tuple[list[int], list]:
        """The images of records ``indices`` for ``picture``, a view of results already written: (the positions in
        ``indices`` kept, their images). A file that cannot be read again (moved since, or named in characters the
        locale cannot encode) is left out with a warning, so a picture never stops a run after its results."""
        kept, shown = [], []
        for position, index in enumerate(indices):
            record = self.records[index]
            try:
                shown.append(self.load(record, size)["image"])
            except (images.CorruptImageError, FileNotFoundError) as err:
                warnings.warn(f"{picture} leaves out {record.path}: {err}", stacklevel=2)
                continue
            kept.append(position)
        return kept, shown

    def load_array(self, array, size: int, name: str = "image") -> np.ndarray:
        """Pixels in memory (``images.image_from_array``'s forms) as ``load`` gives a file of them: uint8
        (size, size, 3), resized and centre-cropped alike."""
        image = images.image_from_array(array, name, self.bit_depth)
        pixels = images.rgb_pixels(image, resized_side(size, self.center_crop), name, self.strict, self.bit_depth)
        return crop_centre(pixels, size)

    def check_mask_sizes(self) -> None:
        """Every mask against its image, from the files' headers (milliseconds each): a run is told before training
        rather than at its evaluation, where ``decode`` would stop on the first. Only an anomaly task reads masks."""
        if self.task != ANOMALY:
            return
        for record in self.records:
            if record.mask_path is not None:
                _require_mask_size(record)

    def decode(self, record: Record, size: int | None = None) -> dict:
        """``load`` without the crop: the record's files resized to ``size`` x ``size``."""
        out = {"label": record.label}
        if self.task == ANOMALY and record.mask_path is not None:
            _require_mask_size(record)
        out["image"] = images.load_image(record.path, size, self.strict, self.bit_depth)
        if self.task == ANOMALY:
            h, w = out["image"].shape[:2]
            has_mask = record.mask_path is not None or record.label == 0
            mask = images.load_mask(record.mask_path, size) if record.mask_path else np.zeros((h, w), np.float32)
            out.update(mask=mask, has_mask=has_mask)
        return out


def _require_mask_size(record: Record) -> None:
    """Refuses a mask of another size than its image (CorruptImageError, which ``data.skip_corrupt`` skips)."""
    img_size, mask_size = images.image_size(record.path), images.image_size(record.mask_path)
    if img_size != mask_size:
        raise images.CorruptImageError(f"mask {record.mask_path!r} is {mask_size[0]}x{mask_size[1]} but its image "
                                       f"{record.path!r} is {img_size[0]}x{img_size[1]}; expected the same size")


def resized_side(size: int, center_crop: float) -> int:
    """The side an image is resized to before its centre ``size`` x ``size`` is kept (``Source.center_crop``)."""
    return size if center_crop == 1.0 else int(round(size / center_crop))


def crop_start(side: int, size: int) -> int:
    """Where the centre ``size`` of a ``side`` starts, placed as torchvision's CenterCrop."""
    return int(round((side - size) / 2.0))


def crop_centre(array: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of a square (side, side, ...) array (``crop_start``)."""
    top = crop_start(array.shape[0], size)
    return array[top:top + size, top:top + size]


def require_dir(path: str, expected: str) -> str:
    """Returns ``path`` if it is a directory, else raises naming it and what should be there."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"directory {path!r} not found; expected {expected}")
    return path


def require_file(path: str, expected: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file {path!r} not found; expected {expected}")
    return path


def is_hidden(name: str) -> bool:
    """A name that is never data: hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``, the ``._x.png``
    resource forks macOS writes beside every file on some drives) and the ``__MACOSX`` folder of a Mac-made zip."""
    return name.startswith(".") or name == "__MACOSX"


def subdirs(directory: str) -> list[str]:
    """Sorted names of the folders directly inside ``directory``, hidden ones left out."""
    return sorted(d for d in os.listdir(directory) if not is_hidden(d) and os.path.isdir(os.path.join(directory, d)))


def list_images(directory: str, extensions: Sequence[str] = images.IMAGE_EXTENSIONS) -> list[str]:
    """Sorted image files (by extension, case-insensitive) directly inside ``directory``, hidden ones left out."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.lower().endswith(exts) and not is_hidden(f) and os.path.isfile(os.path.join(directory, f)))


def images_below(directory: str, extensions: Sequence[str] = images.IMAGE_EXTENSIONS) -> list[str]:
    """Sorted image files in ``directory`` and all its subfolders, hidden files and folders left out."""
    found = []
    for top, dirs, _ in os.walk(directory):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        found += list_images(top, extensions)
    return sorted(found)


def require_images(directory: str, expected: str, extensions: Sequence[str] = images.IMAGE_EXTENSIONS) -> list[str]:
    """Like ``list_images`` but the directory must exist and hold at least one image; images in its subfolders,
    which are not read, are warned of (a class folder with a ``lot_2024_01/`` inside would lose them unsaid)."""
    files = list_images(require_dir(directory, expected), extensions)
    inside = subdirs(directory)
    if not files:
        nested = f" (its subfolders {inside[:3]} are not searched)" if inside else ""
        raise ValueError(f"directory {directory!r} holds no images ({', '.join(extensions)}){nested}; "
                         f"expected {expected}")
    passed_over = sum(len(images_below(os.path.join(directory, folder), extensions)) for folder in inside)
    if passed_over:
        found = "1 image" if passed_over == 1 else f"{passed_over} images"
        warnings.warn(f"{directory!r}: {found} in its subfolders {inside[:3]} left unread; only the {len(files)} "
                      f"directly inside it are read ({expected}): move them up to use them", stacklevel=2)
    return files


def select_categories(available: Sequence[str], categories, dataset: str, root: str, expected: str) -> list[str]:
    """Single-class (a name), several (a list) or multi-class (None: all) category selection; ``expected`` says
    what a category looks like under ``root``, for the error when there is none."""
    if categories is None:
        if not available:
            raise ValueError(f"no {dataset} categories found under {root!r}; expected {expected}")
        return sorted(available)
    wanted = [categories] if isinstance(categories, str) else list(categories)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise FileNotFoundError(f"{dataset} categories {missing} not found under {root!r}; "
                                f"available: {sorted(available)}")
    return wanted


def check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"split {split!r} not supported; expected one of {list(allowed)}")
