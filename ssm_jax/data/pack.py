"""Pack a dataset, resized, into one zip small enough to ship to a remote machine.

``python -m ssm_jax.data.pack --dataset NAME [--root DIR] [--source KEY=VALUE ...] --size S --out FILE.zip
[--verify]`` writes a stored (uncompressed) zip whose top level is a copy of the dataset's root (read with the
loader's options ``--source``, as ``config.data.source`` names them, e.g. ``image_dir=realiad_256``): the images
and masks that the loader's records reference (all splits) plus the metadata files under the root (``.csv``,
``.json``, ``.txt``, copied as they are). Unzipped (``unpack``), the folder is a root the same loader reads, giving
the same records (relative paths, labels, categories, defects).

Each image is stored as the pipeline would decode it at ``S`` (``images.load_image``: colour rule, then PIL
bilinear), so reading the packed copy at ``S`` gives the same uint8 pixels; images whose channels are equal
are stored as grayscale (the pipeline replicates them back). Masks are stored as the pipeline's binary mask
at ``S`` (nearest), 0/255. Contents are PNG (or lossless WebP, ``--format webp``), but file names keep their
extension (loaders find files by name, PIL decodes by content). MVTec 3D-AD point maps (``xyz``) are not packed.
"""

from __future__ import annotations

import argparse
import ast
import functools
import io
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image
from tqdm import tqdm

from ssm_jax.data import Source, elpv, get_source, images, loader_options
from ssm_jax.data.common import is_hidden

SPLITS = {
    "elpv": ("all",), "elpv_ad": ("train", "test"), "folder": ("all",), "neu": ("all",), "gc10": ("all",),
    "mt": ("all",), "aluminum": ("all",), "mvtec": ("train", "test"), "visa": ("train", "test"),
    "realiad": ("train", "test"), "mvtec3d": ("train", "validation", "test"),
}
METADATA_EXTENSIONS = (".csv", ".json", ".txt")
MIN_SIZE = 8
FORMATS = ("png", "webp")
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same dataset packs to the same bytes
_TRAIN_SOURCE_FLAG = "--config.data.source."  # how train.py's flags name a loader option, in the loaders' advice


def default_root(dataset: str, root: str | None) -> str:
    """``root`` with ``~`` expanded (the shell leaves ``--root=~/x`` as is; train.py expands it too), or the
    installed package's folder for elpv/elpv_ad; raises when there is none. A missing folder is the loader's to
    report, as it says what layout it expected there (``_read``)."""
    if root is None:
        if dataset not in ("elpv", "elpv_ad"):
            raise ValueError(f"dataset {dataset!r} needs --root (the folder the loader reads)")
        return elpv.package_root()
    return os.path.expanduser(root)


def dataset_files(dataset: str, root: str, source: dict | None = None) -> tuple[list[str], list[str], list[str]]:
    """(images, masks, metadata files) of ``dataset`` under ``root`` (read with loader options ``source``), as
    sorted paths relative to ``root``."""
    _check_dataset(dataset)
    image_files, mask_files = set(), set()
    for split in SPLITS[dataset]:
        for record in _read(dataset, root, split, source or {}):
            image_files.add(_relative(record.path, root))
            if record.mask_path is not None:
                mask_files.add(_relative(record.mask_path, root))
    metadata = []
    for directory, folders, files in os.walk(root, followlinks=True):  # a linked folder is the loader's too
        folders[:] = [f for f in folders if not is_hidden(f)]
        metadata += [os.path.relpath(os.path.join(directory, f), root) for f in files
                     if f.lower().endswith(METADATA_EXTENSIONS) and not is_hidden(f)]
    return sorted(image_files), sorted(mask_files - image_files), sorted(metadata)


def _read(dataset: str, root: str, split: str, source: dict) -> Source:
    """``get_source``, its errors in pack's terms (``_pack_terms``), and an option the loader lacks refused first."""
    _check_source(dataset, source)
    try:
        return get_source(dataset, root, split, **source)
    except (ValueError, FileNotFoundError) as err:
        message = _pack_terms(str(err), dataset, root)
        if message == str(err):
            raise
        raise type(err)(message) from err


def _pack_terms(message: str, dataset: str, root: str) -> str:
    """A loader's ``message`` for pack: the loaders are train.py's too, so their advice names a loader option as
    ``--config.data.source.KEY=VALUE``, here ``--source KEY=VALUE``; and when ``root`` is not a directory, the
    message (which says what the loader expected there) is said to be about ``--root``."""
    message = message.replace(_TRAIN_SOURCE_FLAG, "--source ")
    if not os.path.isdir(root):
        message += f" (--root {root!r} is not a directory: pass --root DIR, the folder the {dataset!r} loader reads)"
    return message


def _check_source(dataset: str, source: dict) -> None:
    """Refuses ``--source`` keys that ``dataset``'s loader lacks, naming the ones it has (its own TypeError names
    neither the option list nor the flag)."""
    valid = loader_options(dataset)
    unknown = sorted(set(source) - set(valid))
    if unknown:
        keys = "key" if len(unknown) == 1 else "keys"
        raise ValueError(f"unknown --source {keys} {', '.join(map(repr, unknown))} for dataset {dataset!r}; "
                         f"expected one of {', '.join(map(repr, valid))}")


def _check_dataset(dataset: str) -> None:
    if dataset not in SPLITS:
        raise ValueError(f"unknown dataset {dataset!r} (or one without files, like synthetic); "
                         f"expected one of {sorted(SPLITS)}")


def _relative(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    if rel.startswith(os.pardir):
        raise ValueError(f"file {path!r} is outside the root {root!r}; cannot pack it")
    return rel


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "webp":
        Image.fromarray(arr).save(buf, format="WEBP", lossless=True, quality=100, method=4)
    else:
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def packed_image(path: str, size: int, fmt: str = "png", bit_depth: int = 0) -> bytes:
    """``images.load_image(path, size, bit_depth=...)`` encoded losslessly; (H, W) grayscale when its three channels
    are equal."""
    rgb = images.load_image(path, size, bit_depth=bit_depth)
    gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return _encode(rgb[..., 0] if gray else rgb, fmt)


def packed_mask(path: str, size: int, fmt: str = "png") -> bytes:
    """``images.load_mask(path, size)`` as 0/255 grayscale, encoded losslessly."""
    return _encode((images.load_mask(path, size) > 0).astype(np.uint8) * 255, fmt)


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    zf.writestr(zipfile.ZipInfo(name.replace(os.sep, "/"), date_time=_DATE), data, zipfile.ZIP_STORED)


def pack(dataset: str, root: str | None, size: int, out: str, progress: bool = True, fmt: str = "png",
         source: dict | None = None, bit_depth: int = 0) -> int:
    """Writes the packed zip to ``out``; returns the number of files in it. ``fmt``: "png", or "webp" (lossless
    WebP, about 20% smaller on noisy images such as ELPV's); ``source``: the loader's options; ``bit_depth``: as
    ``config.data.bit_depth``, applied here since the packed images are 8-bit; train on them with the same
    ``data.bit_depth`` all the same (it leaves 8-bit files as they are), so the run records it and reads the camera's
    16-bit frames alike when it predicts."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if size < MIN_SIZE:
        raise ValueError(f"--size {size} is too small; expected at least {MIN_SIZE}")
    _check_dataset(dataset)
    root = default_root(dataset, root)
    image_files, mask_files, metadata = dataset_files(dataset, root, source)
    jobs = [(f, functools.partial(packed_image, bit_depth=bit_depth)) for f in image_files] + \
        [(f, packed_mask) for f in mask_files]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for rel in metadata:
                with open(os.path.join(root, rel), "rb") as f:
                    _write(zf, rel, f.read())
            for rel, encode in tqdm(jobs, desc=f"pack {dataset} @ {size}", unit="file", disable=not progress):
                _write(zf, rel, encode(os.path.join(root, rel), size, fmt))
    except BaseException:
        os.remove(out)  # no half-written zip that looks like a dataset
        raise
    return len(jobs) + len(metadata)


def unpack(zip_path: str, dest: str) -> str:
    """Extracts a packed zip into ``dest`` and returns ``dest``, the root to give the loader."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    return dest


def verify(dataset: str, root: str | None, zip_path: str, source: dict | None = None) -> dict[str, int]:
    """Unpacks into a temporary folder and checks each split has the same records; returns the counts."""
    root, source = default_root(dataset, root), source or {}
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        packed_root = unpack(zip_path, tmp)
        for split in SPLITS[dataset]:
            original = [_key(r, root) for r in _read(dataset, root, split, source)]
            packed = [_key(r, packed_root) for r in _read(dataset, packed_root, split, source)]
            if packed != original:
                raise ValueError(f"packed {split!r} split differs: {len(packed)} records, "
                                 f"expected {len(original)} as in {root!r}")
            counts[split] = len(packed)
    return counts


def _key(record, root: str) -> tuple:
    mask = None if record.mask_path is None else os.path.relpath(record.mask_path, root)
    return os.path.relpath(record.path, root), record.label, record.category, record.defect, mask, record.subset


def source_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value): a Python literal (``seed=1``, ``categories=['pcb']``) or else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}; expected KEY=VALUE, a loader option such as image_dir=realiad_256")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssm_jax.data.pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help=f"one of {sorted(SPLITS)}")
    parser.add_argument("--root", default=None, help="dataset root (default for elpv: the installed package)")
    parser.add_argument("--source", type=source_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a loader option, as config.data.source names it (repeatable)")
    parser.add_argument("--size", type=int, required=True, help="side S of the stored S x S images")
    parser.add_argument("--out", required=True, help="zip file to write")
    parser.add_argument("--format", default="png", choices=FORMATS,
                        help="lossless encoding of the stored images; webp keeps the files' names (.png, .jpg, ...), "
                        "which the loaders find them by, so a viewer that goes by the name may not open them")
    parser.add_argument("--bit-depth", type=int, default=0, help="read 16-bit grayscale as this many bits of camera "
                        "data, as config.data.bit_depth (0: the file type's range)")
    parser.add_argument("--verify", action="store_true", help="reload the packed copy and compare records")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        n = pack(args.dataset, args.root, args.size, args.out, fmt=args.format, source=dict(args.source),
                 bit_depth=args.bit_depth)
        mib = os.path.getsize(args.out) / 2**20
        print(f"wrote {args.out}: {n} files, {mib:.1f} MiB in {time.perf_counter() - start:.0f} s")
        if args.format == "webp":
            print("the images hold lossless WebP under their own names (.png, .jpg, ...), as the loaders find them: "
                  "this project reads them; a viewer that goes by the name may not")
        if args.verify:
            counts = verify(args.dataset, args.root, args.out, dict(args.source))
            print("verified: " + ", ".join(f"{split} {n} records" for split, n in counts.items()))
    except (ValueError, FileNotFoundError, TypeError) as e:  # TypeError: a --source value of the wrong type
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
