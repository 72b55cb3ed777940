"""Generic PyTorch state_dict -> Flax variables conversion: loading, rule tables, transforms, checking.

A converter is data: a list of ``Rule`` (torch key regex -> Flax path template, transform name) and a list of
ignore regexes. ``convert_state_dict`` applies them against a template of the Flax variables and reports every
missing, unexpected and mis-shaped key at once, so a wrong checkpoint fails with one readable error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import string
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

WRAPPER_KEYS = ("state_dict", "model_state_dict", "net", "model")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema")  # timm's and common trainers' averaged copies
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}
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
    """A state dict that does not fill the Flax template: names every missing, unexpected and mis-shaped key.

    ``missing`` holds Flax paths; ``expected_keys`` maps those of them that a rule can be read backwards for to the
    torch key that would fill them, which the message shows beside the path."""

    def __init__(self, missing: Sequence[str] = (), unexpected: Sequence[str] = (), mismatched: Sequence[str] = (),
                 duplicated: Sequence[str] = (), found: str = "", source: str = "",
                 expected_keys: Mapping[str, str] | None = None):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched, self.duplicated = list(mismatched), list(duplicated)
        self.found, self.source, self.expected_keys = found, source, dict(expected_keys or {})
        missing_shown = [f"{path} (torch key {self.expected_keys[path]})" if path in self.expected_keys else path
                         for path in self.missing]
        sections = [("missing (Flax leaves no torch key fills)", missing_shown),
                    ("unexpected (torch keys no rule or ignore pattern matches)", self.unexpected),
                    ("shape mismatches (key: torch shape -> transformed shape, expected flax shape)", self.mismatched),
                    ("filled more than once (flax path: torch keys)", self.duplicated)]
        first = f"{found}; its " if found else ""  # what the keys say the checkpoint is, when that is known
        whose = f"{source}: " if source else ""
        super().__init__(f"{whose}{first}state dict does not match the Flax variables:\n" + "\n".join(
            _section(title, items) for title, items in sections if items) + _prefix_hint(self.unexpected, self.missing))

    def _with(self, **changes) -> ConversionError:
        fields = dict(missing=self.missing, unexpected=self.unexpected, mismatched=self.mismatched,
                      duplicated=self.duplicated, found=self.found, source=self.source,
                      expected_keys=self.expected_keys)
        return ConversionError(**{**fields, **changes})

    def naming(self, what: str) -> ConversionError:
        """The same error, first saying ``what`` the checkpoint holds (a reader's likely fix)."""
        return self._with(found=what)

    def of(self, source: str) -> ConversionError:
        """The same error, naming the file (or object) the state dict came from."""
        return self._with(source=source)


def _prefix_hint(unexpected: list[str], missing: list[str]) -> str:
    """Where every unexpected key starts with one name (``backbone.``, ``encoder.``) and leaves are missing, the
    model likely sits under that name in a larger checkpoint: say so, with the line that takes it out."""
    heads = {key.split(".", 1)[0] for key in unexpected if "." in key and " -> " not in key}
    if not (missing and len(heads) == 1 and all("." in key for key in unexpected)):
        return ""
    head = heads.pop()
    return (f"\nevery unexpected key starts with {head + '.'!r}: if the model sits under that name in this "
            f"checkpoint, pass its part: {{k.removeprefix({head + '.'!r}): v for k, v in state.items() "
            f"if k.startswith({head + '.'!r})}}")


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


def _torch_load(path: Path, torchscript: bool = False):
    """The object in a torch file, unpickling tensors and plain containers only: anything else would run code from
    the file (a ``torchscript`` archive always), so it is refused unless the user opts in with torch's own
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f'loading {path} needs PyTorch: pip install -e ".[torch]"') from e
    trusted = os.environ.get(UNSAFE_LOAD_ENV, "").lower() in ("1", "true", "y", "yes")
    if torchscript:
        if trusted:
            return torch.jit.load(path, map_location="cpu")
        raise ValueError(f"{path} is a TorchScript archive (torch.jit.save); loading it runs its code. If you trust "
                         f"it, rerun with {UNSAFE_LOAD_ENV}=1 in the environment, or save the state dict alone: "
                         f"torch.save(torch.jit.load(path).state_dict(), 'weights.pth')")
    try:
        with open(path, "rb") as f:  # a file, not its path: torch.load takes a path named .safetensors for one
            return torch.load(f, map_location="cpu", weights_only=not trusted)
    except (ModuleNotFoundError, AttributeError) as e:  # trusted: a pickled object whose class is not importable here
        raise ValueError(f"{path} holds a pickled object whose class cannot be imported here ({e}); save the state "
                         f"dict alone where the model's code is: torch.save(model.state_dict(), path)") from e
    except pickle.UnpicklingError as e:  # weights_only met another object (a pickled module, argparse.Namespace)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found[1]}" if found else f"Python objects ({type(e).__name__})"
        raise ValueError(f"{path} holds {what} besides tensors; loading it would run code from the file. If you "
                         f"trust it, rerun with {UNSAFE_LOAD_ENV}=1 in the environment, or save the state dict "
                         f"alone: torch.save(model.state_dict(), path)") from e
    except Exception as e:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from e


def _safetensors_load(path: Path) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file (Hugging Face's format: timm's hub weights), read with NumPy, no torch needed: an
    8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the bytes. A header
    length the file cannot hold is refused before the header is read (it would ask for up to 2**64 bytes)."""
    with open(path, "rb") as f:
        size, total = int.from_bytes(f.read(8), "little"), os.fstat(f.fileno()).st_size
        if 8 + size > total:
            raise ValueError(f"cannot read {path} as safetensors: its first 8 bytes give a header length of {size}, "
                             f"more than its {total} bytes hold; expected an 8-byte little-endian length, then that "
                             f"many bytes of JSON header, then the tensors")
        raw_header, data = f.read(size), f.read()
    try:
        header = json.loads(raw_header)
        entries = {name: (e["dtype"], tuple(e["shape"]), e["data_offsets"]) for name, e in header.items()
                   if name != "__metadata__"}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot read {path} as safetensors (truncated or corrupt?): {type(e).__name__}: {e}") from e
    out = {}
    for name, (dtype, shape, (begin, end)) in entries.items():
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}; expected one of {sorted(SAFETENSORS_DTYPES)}")
        if end > len(data) or end - begin != int(np.prod(shape)) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize:
            raise ValueError(f"cannot read {path} as safetensors (truncated or corrupt?): tensor {name!r} needs bytes "
                             f"{begin}-{end} for shape {shape} {dtype}; the file holds {len(data)} after its header")
        array = np.frombuffer(data, np.dtype(SAFETENSORS_DTYPES[dtype]).newbyteorder("<"), offset=begin,
                              count=int(np.prod(shape))).reshape(shape)
        out[name] = array.astype(np.float32 if "F" in dtype else SAFETENSORS_DTYPES[dtype])  # a native-order copy
    return out


def _file_kind(path: Path) -> str:
    """"npz", "safetensors", "torchscript" or "torch", by the contents whatever the suffix: weights files are often
    renamed (a .pth saved as .safetensors or .npz, or the other way)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if _is_safetensors(head, size):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, size)
    if head.startswith(b"\x80"):  # pickle's protocol opcode: torch.save's legacy format
        return "torch"
    raise _not_weights(path, size, f"it starts with {head[:8]!r}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """Whether ``head`` (a file's first 9 bytes) starts a safetensors file of ``size`` bytes: an 8-byte
    little-endian header length the file can hold, then the JSON header's ``{``."""
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def _zip_kind(path: Path, size: int) -> str:
    """A zip archive's kind by its member names: an .npz holds .npy files, torch.save's zip ``<name>/data.pkl``,
    and a TorchScript archive also ``<name>/constants.pkl`` beside the model's code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"cannot read {path} ({size} bytes) as a zip archive (truncated or corrupt?): {e}; expected "
                         f"torch.save's zip archive or an .npz") from e
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any(name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names):
        return "torch"
    shown = ", ".join(repr(name) for name in names[:3]) + (", ..." if len(names) > 3 else "")
    raise _not_weights(path, size, f"a zip archive of {len(names)} members ({shown}), neither .npy files nor "
                                   f"'<name>/data.pkl'")


def _not_weights(path: Path, size: int, found: str) -> ValueError:
    """The error for a file of none of the formats read here: what it holds instead, and those formats."""
    return ValueError(f"{path} is not a PyTorch checkpoint ({found}; {size} bytes), nor a weights file of another "
                      f"format read here: expected torch.save's zip archive (with '<name>/data.pkl') or pickle, a "
                      f".safetensors file (an 8-byte little-endian header length, then a JSON header) or an .npz "
                      f"(a zip archive of .npy files)")


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


def _warn_of_ema(checkpoint: Mapping, source: str) -> None:
    """A training checkpoint that also keeps an exponential moving average of the weights: the plain ones load."""
    ema = next((key for key in EMA_KEYS if isinstance(_state_dict_of(checkpoint.get(key)), Mapping)), None)
    if ema is not None:
        warnings.warn(f"{source} also holds an averaged (EMA) copy of the weights under {ema!r}, not loaded; to load "
                      f"it instead, pass that state dict: torch.load(path, map_location='cpu')[{ema!r}]", stacklevel=3)


def _without_ddp_prefix(state: Mapping, source: str) -> dict:
    """``state`` less DDP's ``module.`` wherever a key has it; a key then standing for another is an error."""
    out, original = {}, {}
    for key, value in state.items():
        short = key.removeprefix("module.")
        if short in out:
            raise ValueError(f"{source}: keys {original[short]!r} and {key!r} both stand for {short!r} once DDP's "
                             f"'module.' prefix is dropped; expected one copy of each weight")
        out[short], original[short] = value, key
    return out


def load_state_dict(path_or_state_dict) -> dict[str, np.ndarray]:
    """A flat {torch key: numpy array} from a checkpoint file (.pth/.pt/.bin via torch, .safetensors, .npz: told
    apart by their contents) or a dict.

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
        path = Path(state).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        kind = _file_kind(path)
        state = (_npz_load(path) if kind == "npz" else _safetensors_load(path) if kind == "safetensors"
                 else _state_dict_of(_torch_load(path, torchscript=kind == "torchscript")))
        source = str(path)
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    while (inner := _wrapped(state)) is not None:
        _warn_of_ema(state, source)
        state = inner
    state = _without_ddp_prefix(state, source)
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
        expected = {path: key for path in missing if (key := torch_key_for(path, rules)) is not None}
        raise ConversionError(missing, unexpected, mismatched, duplicated, expected_keys=expected)
    return unflatten_dict({tuple(path.split("/")): array for path, array in out.items()})


def torch_key_for(path: str, rules: Sequence[Rule]) -> str | None:
    """The torch key that would fill Flax ``path``, read backwards from the first rule that can: the target's
    ``{i}`` fields give the pattern's groups, and a pattern that is otherwise literal (escapes, groups,
    backreferences) spells the key. None where no rule is literal enough (``conv\\d``: which digit?)."""
    for rule in rules:
        groups = _target_fields(rule.target, path)
        key = None if groups is None else _spell(rule.pattern, groups)
        if key is None or not (match := re.fullmatch(rule.pattern, key)):
            continue
        if rule.target.format(match.group(0), *match.groups(), **match.groupdict()) == path:
            return key
    return None


def _target_fields(target: str, path: str) -> dict[str, str] | None:
    """The values of ``target``'s fields (``{1}``, ``{name}``) that make it read ``path``, or None."""
    regex, seen = "", set()
    for literal, field, _, _ in string.Formatter().parse(target):
        regex += re.escape(literal)
        if field is not None:
            name = f"f{field}" if field.isdigit() else field
            regex += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)"
            seen.add(name)
    match = re.fullmatch(regex, path)
    return None if match is None else {k.removeprefix("f") if k[1:].isdigit() else k: v
                                       for k, v in match.groupdict().items()}


def _spell(pattern: str, groups: Mapping[str, str]) -> str | None:
    """The one string ``pattern`` matches when its capturing groups hold ``groups`` (by number, or by name), or None
    where anything else in it could match more than one string."""
    out, named, number, i = [], {}, 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            nxt = pattern[i + 1:i + 2]
            if nxt.isdigit():
                out.append(groups.get(nxt))
            elif nxt.isalnum() or not nxt:
                return None  # a class (\d, \w) or an anchor
            else:
                out.append(nxt)
            i += 2
        elif char == "(":
            end = _closing(pattern, i)
            head = re.match(r"\(\?P=(\w+)\)", pattern[i:end + 1])
            if head:  # a named backreference
                out.append(named.get(head.group(1)))
            elif pattern.startswith("(?", i) and not pattern.startswith("(?P<", i):
                return None  # non-capturing, lookaround or flags
            else:
                number += 1
                name = re.match(r"\(\?P<(\w+)>", pattern[i:])
                out.append(groups.get(str(number), groups.get(name.group(1)) if name else None))
                if name:
                    named[name.group(1)] = out[-1]
                number += len(re.findall(r"(?<!\\)\((?!\?)|(?<!\\)\(\?P<", pattern[i + 1:end]))
            i = end + 1
        elif char in ".[]{}*+?|^$":
            return None
        else:
            out.append(char)
            i += 1
    return None if any(part is None for part in out) else "".join(out)


def _closing(pattern: str, start: int) -> int:
    """The index of the parenthesis that closes the one at ``start``."""
    depth, i = 0, start
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(pattern[i], 0)
        if depth == 0:
            return i
        i += 1
    raise ValueError(f"unbalanced parenthesis in rule pattern {pattern!r}")
