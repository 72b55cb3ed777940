"""Datasets (random-access sources of records) and grain input pipelines.

``get_source(name, root, split, **kwargs)`` builds any registered source; ``make_pipeline`` turns one into
batches. Nothing here downloads: every loader reads local files and names what it expected and where.
"""

from __future__ import annotations

import inspect

from ssm_jax.data.aluminum import aluminum_source
from ssm_jax.data.common import Record, Source
from ssm_jax.data.elpv import elpv_ad_source, elpv_source
from ssm_jax.data.folder import folder_source
from ssm_jax.data.fractal import fractal_source
from ssm_jax.data.gc10 import gc10_source
from ssm_jax.data.images import CorruptImageError, load_image, load_mask
from ssm_jax.data.mt import mt_source
from ssm_jax.data.mvtec import mvtec_source
from ssm_jax.data.mvtec3d import load_xyz, mvtec3d_source
from ssm_jax.data.neu import neu_source
from ssm_jax.data.pipeline import make_pipeline
from ssm_jax.data.realiad import realiad_source
from ssm_jax.data.split import PAPER_SPLITS, stratified_split
from ssm_jax.data.synthetic import draw_defect, synthetic_source
from ssm_jax.data.visa import visa_source

SOURCES = {
    "elpv": elpv_source, "elpv_ad": elpv_ad_source, "folder": folder_source, "neu": neu_source,
    "gc10": gc10_source, "mt": mt_source, "aluminum": aluminum_source, "mvtec": mvtec_source,
    "visa": visa_source, "realiad": realiad_source, "mvtec3d": mvtec3d_source, "synthetic": synthetic_source,
    "fractal": fractal_source,
}


def loader_options(name: str) -> list[str]:
    """The options of dataset ``name``'s loader, besides ``root`` and ``split``: what ``config.data.source`` holds."""
    return [p for p in inspect.signature(SOURCES[name]).parameters if p not in ("root", "split")]


def get_source(name: str, root: str | None, split: str = "train", **kwargs) -> Source:
    """The ``split`` of dataset ``name`` under ``root`` (None is allowed for elpv, elpv_ad, synthetic and fractal)."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SOURCES)}")
    if root is None and name not in ("elpv", "elpv_ad", "synthetic", "fractal"):
        raise ValueError(f"dataset {name!r} needs a root directory (config.data.root)")
    return SOURCES[name](root, split, **kwargs)


__all__ = ["SOURCES", "get_source", "loader_options", "make_pipeline", "Record", "Source", "CorruptImageError",
           "load_image", "load_mask", "load_xyz", "stratified_split", "PAPER_SPLITS", "draw_defect", "elpv_source",
           "elpv_ad_source", "folder_source", "fractal_source", "neu_source", "gc10_source", "mt_source",
           "aluminum_source", "mvtec_source", "visa_source", "realiad_source", "mvtec3d_source", "synthetic_source"]
