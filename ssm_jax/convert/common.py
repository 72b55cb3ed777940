"""Generic PyTorch state_dict -> Flax variables conversion: loading, rule tables, transforms, checking.

A converter is data: a list of ``Rule`` (torch key regex -> Flax path template, transform name) and a list of
ignore regexes. ``convert_state_dict`` applies them against a template of the Flax variables and reports every
missing, unexpected and mis-shaped key at once, so a wrong checkpoint fails with one readable error.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

WRAPPER_KEYS = ("state_dict", "model_state_dict", "net", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, Lightning: dropped when on every key
UNSAFE_LOAD_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch's own opt-in to unpickling arbitrary objects
LIST_LIMIT = 20


def _conv(w: np.ndarray) -> np.ndarray:
    """torch (out, in, *spatial) -> Flax (*spatial, in, out), for 1-D and 2-D convs."""
    if w.ndim not in (3, 4):
        raise ValueError(f"conv weight must be 3-D or 4-D, got shape {w.shape}")
    return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def _linear(w: np.ndarray) -> np.ndarray:
    """torch (out, in) -> Flax (in, out)."""
    if w.ndim != 2:
        raise ValueError(f"linear weight must be 2-D, got shape {w.shape}")
    return w.T


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda w: w,
    "conv": _conv,
    "linear": _linear,
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A torch key regex (full match) -> a '/'-separated Flax path ('params/...'), groups as ``{1}``, ``{2}``..."""

    pattern: str
    target: str
    transform: str = "identity"


def batchnorm_rules(torch: str, flax: str) -> list[Rule]:
    """torch BatchNorm ``{torch}.weight/bias/running_mean/running_var`` -> Flax scale/bias and batch_stats."""
    return [Rule(rf"{torch}\.weight", f"params/{flax}/scale"),
            Rule(rf"{torch}\.bias", f"params/{flax}/bias"),
            Rule(rf"{torch}\.running_mean", f"batch_stats/{flax}/mean"),
            Rule(rf"{torch}\.running_var", f"batch_stats/{flax}/var")]


class ConversionError(ValueError):
    """A state dict that does not fill the Flax template: names every missing, unexpected and mis-shaped key."""

    def __init__(self, missing: Sequence[str] = (), unexpected: Sequence[str] = (), mismatched: Sequence[str] = (),
                 duplicated: Sequence[str] = (), found: str = ""):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched, self.duplicated = list(mismatched), list(duplicated)
        sections = [("missing (Flax leaves no torch key fills)", self.missing),
                    ("unexpected (torch keys no rule or ignore pattern matches)", self.unexpected),
                    ("shape mismatches (key: torch shape -> transformed shape, expected flax shape)", self.mismatched),
                    ("filled more than once (flax path: torch keys)", self.duplicated)]
        first = f"{found}; its " if found else ""  # what the keys say the checkpoint is, when that is known
        super().__init__(f"{first}state dict does not match the Flax variables:\n" + "\n".join(
            _section(title, items) for title, items in sections if items))

    def naming(self, what: str) -> ConversionError:
        """The same error, first saying ``what`` the checkpoint holds (a reader's likely fix)."""
        return ConversionError(self.missing, self.unexpected, self.mismatched, self.duplicated, found=what)


def _section(title: str, items: list[str]) -> str:
    shown = "".join(f"\n  {item}" for item in items[:LIST_LIMIT])
    more = f"\n  ... {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
    return f"{len(items)} {title}:{shown}{more}"


def _to_numpy(key: str, value: Any, source: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is imported already if one exists
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":  # bool, int, uint, float, complex
        raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict "
                         f"of tensors, or one under {' / '.join(repr(k) for k in WRAPPER_KEYS)}")
    return array


def _torch_load(path: Path):
    """The object in a torch file, unpickling tensors and plain containers only: anything else would run code from
    the file, so it is refused unless the user opts in with torch's own ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f'loading {path} needs PyTorch: pip install -e ".[torch]"') from e
    with open(path, "rb") as f:
        head = f.read(8)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch.save's zip, or a legacy pickle
        raise ValueError(f"{path} is not a PyTorch checkpoint (it starts with {head!r}; torch.save writes a zip "
                         f"archive or a pickle): expected the .pth / .pt file of a model's state_dict")
    trusted = os.environ.get(UNSAFE_LOAD_ENV, "").lower() in ("1", "true", "y", "yes")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:  # weights_only met another object (a pickled module, argparse.Namespace)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found[1]}" if found else f"Python objects ({type(e).__name__})"
        raise ValueError(f"{path} holds {what} besides tensors; loading it would run code from the file. If you "
                         f"trust it, rerun with {UNSAFE_LOAD_ENV}=1 in the environment, or save the state dict "
                         f"alone: torch.save(model.state_dict(), path)") from e
    except Exception as e:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e


def _npz_load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path} as .npz (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _state_dict_of(value):
    """A whole pickled ``torch.nn.Module`` (``torch.save(model)``) stands for its state dict."""
    return value.state_dict() if callable(getattr(value, "state_dict", None)) else value


def _wrapped(state: Mapping) -> Mapping | None:
    """The state dict under the first of ``WRAPPER_KEYS`` that holds one, else None."""
    for key in WRAPPER_KEYS:
        inner = _state_dict_of(state.get(key))
        if isinstance(inner, Mapping):
            return inner
    return None


def load_state_dict(path_or_state_dict) -> dict[str, np.ndarray]:
    """A flat {torch key: numpy array} from a checkpoint file (.pth/.pt/.bin via torch, .npz) or a dict.

    Unwraps ``{'state_dict' | 'model_state_dict' | 'net' | 'model': state_dict, ...}`` (training checkpoints, e.g.
    MambaAD's) and a whole pickled module, and strips the prefixes that wrapping a model puts on every key: DDP's
    ``module.`` (also where only some keys have it), ``torch.compile``'s ``_orig_mod.``, Lightning's ``model.``.
    Floating tensors become float32; integer tensors stay integer.
    """
    state, source = _state_dict_of(path_or_state_dict), "state dict"  # a torch module stands for its state dict
    if not isinstance(state, (Mapping, str, os.PathLike)):
        raise TypeError(f"expected a checkpoint's path, a state dict or a torch module, got a "
                        f"{type(state).__name__}")
    if not isinstance(state, Mapping):
        path = Path(state)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        state, source = (_npz_load(path) if path.suffix == ".npz" else _state_dict_of(_torch_load(path))), str(path)
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    while (inner := _wrapped(state)) is not None:
        state = inner
    state = {key.removeprefix("module."): value for key, value in state.items()}
    while prefix := next((p for p in WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None):
        state = {key.removeprefix(prefix): value for key, value in state.items()}
    return {key: _to_numpy(key, value, source) for key, value in state.items()}


def convert_state_dict(state: dict[str, np.ndarray], rules: Sequence[Rule], template, *,
                       ignore: Sequence[str] = ()) -> dict:
    """Place every torch array at its Flax path by the first matching rule; check against ``template``.

    ``template`` is the nested dict (or FrozenDict) of Flax variables, arrays or ``jax.ShapeDtypeStruct`` (e.g.
    ``jax.eval_shape(model.init, ...)``). Every template leaf must be filled exactly once with its shape; all
    problems are raised together as one ``ConversionError``. Returns a nested dict of numpy arrays, float32 except
    where the template leaf is integer.
    """
    unknown = sorted({rule.transform for rule in rules} - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown transforms {unknown}; known: {sorted(TRANSFORMS)}")
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    ignored = [re.compile(pattern) for pattern in ignore]
    leaves = {"/".join(path): leaf for path, leaf in flatten_dict(unfreeze(template)).items()}
    filled: dict[str, list[str]] = {}
    out, unexpected, mismatched = {}, [], []
    for key, value in state.items():
        if any(p.fullmatch(key) for p in ignored):
            continue
        match, rule = next(((m, r) for p, r in compiled if (m := p.fullmatch(key))), (None, None))
        if match is None:
            unexpected.append(key)
            continue
        target = rule.target.format(match.group(0), *match.groups(), **match.groupdict())
        if target not in leaves:
            unexpected.append(f"{key} -> {target} (no such Flax leaf)")
            continue
        filled.setdefault(target, []).append(key)
        expected = tuple(leaves[target].shape)
        try:
            array = np.asarray(TRANSFORMS[rule.transform](value))
        except ValueError as e:
            mismatched.append(f"{key}: {tuple(value.shape)} -> {rule.transform} failed ({e}), expected {expected}")
            continue
        if array.shape != expected:
            mismatched.append(f"{key}: {tuple(value.shape)} -> {array.shape}, expected {expected}")
            continue
        dtype = leaves[target].dtype
        out[target] = array.astype(dtype if np.issubdtype(dtype, np.integer) else np.float32)
    missing = [path for path in leaves if path not in filled]
    duplicated = [f"{path}: {', '.join(keys)}" for path, keys in filled.items() if len(keys) > 1]
    if missing or unexpected or mismatched or duplicated:
        raise ConversionError(missing, unexpected, mismatched, duplicated)
    return unflatten_dict({tuple(path.split("/")): array for path, array in out.items()})
