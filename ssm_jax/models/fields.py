"""One reading of ``config.model`` for every model builder: a misspelt field is refused by name instead of leaving
its default in place, and the builders take what train.py's configs hold (``name`` included) or a plain dict."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import ml_collections

DTYPES = ("float32", "bfloat16")  # activations; parameters and the scan's state stay float32


def with_defaults(defaults: Mapping[str, Any], overrides: Mapping[str, Any], helper: str,
                  **required: Any) -> ml_collections.ConfigDict:
    """A ``config.model`` of ``required`` and ``defaults`` updated by ``overrides``, none of them unknown; a
    ``required`` field among them (a helper's own output passed back: ``name``) must keep its value."""
    for key, value in required.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{helper}: {key}={overrides[key]!r}; this helper's models have {key}={value!r}")
    overrides = {key: value for key, value in overrides.items() if key not in required}
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"{helper}: unknown fields {sorted(unknown)}; valid: {sorted(defaults)}")
    return ml_collections.ConfigDict({**required, **defaults, **overrides})


def model_fields(config, defaults: Mapping[str, Any], builder: str, required: Sequence[str] = ()) -> dict:
    """The fields of ``config.model`` (or of a model-level ConfigDict or dict) over ``defaults``, ``dtype`` as a
    NumPy dtype. ``name`` (the model's key in train.py's configs) is dropped; any other field outside ``defaults``
    and ``required`` is refused by name, and so is a missing ``required`` one or a ``dtype`` outside ``DTYPES``."""
    model = config["model"] if "model" in config else config
    fields = dict(model.to_dict() if isinstance(model, ml_collections.ConfigDict) else model)
    fields.pop("name", None)
    unknown = set(fields) - set(defaults) - set(required)
    if unknown:
        raise ValueError(f"{builder}: unknown config.model fields {sorted(unknown)}; valid: "
                         f"{sorted({*defaults, *required})}")
    missing = [key for key in required if key not in fields]
    if missing:
        raise ValueError(f"{builder}: config.model.{missing[0]} is required")
    fields = {**defaults, **fields}
    if "dtype" in fields:
        fields["dtype"] = model_dtype(fields["dtype"], builder)
    return fields


def model_dtype(value, builder: str) -> jnp.dtype:
    """``value`` ("float32", "bfloat16" or such a dtype) as a dtype, anything else refused with the valid names."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in DTYPES:
        raise ValueError(f"{builder}: config.model.dtype={value!r}; valid: {', '.join(DTYPES)}")
    return dtype
