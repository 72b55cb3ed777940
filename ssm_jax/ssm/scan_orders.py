"""Orders in which a 1-D scan visits the cells of an H x W feature map.

Each order is a permutation of the raster (row-major) indices ``r * W + c``: ``order[t]`` is the cell visited at
step ``t``. Curves:

* ``sweep``   -- raster, row by row, left to right.
* ``scan``    -- boustrophedon ("snake"): even rows left to right, odd rows right to left.
* ``zorder``  -- Morton order: cells sorted by the bit-interleaving of (row, column); any H x W.
* ``zigzag``  -- JPEG-style diagonal zigzag over anti-diagonals r + c, alternating direction.
* ``hilbert`` -- the generalised Hilbert curve ("gilbert"), defined for any H x W; a true Hilbert curve with
                 4-neighbour steps on power-of-two squares.

Directions follow MambaAD: the curve is run over four views of the map -- the map itself, its transpose, its
90-degree counter-clockwise rotation, and that rotation transposed (the map mirrored left-right) -- each forward
and then reversed. ``directions=2`` uses the first view, ``4`` the first two (VMamba's cross-scan for ``sweep``),
``8`` all four; the reversed copies follow the forward ones. A curve with a mirror symmetry (Hilbert and zigzag on
squares) can give coinciding directions, as in MambaAD.
"""

from __future__ import annotations

import functools

import numpy as np

METHODS = ("sweep", "scan", "zorder", "zigzag", "hilbert")
# Views of the map each direction count scans (reversed copies are added for 2, 4 and 8).
_VIEWS_USED = {1: (0,), 2: (0,), 4: (0, 1), 8: (0, 1, 2, 3)}
DIRECTIONS = tuple(_VIEWS_USED)


def _sweep(height: int, width: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(height) for c in range(width)]


def _snake(height: int, width: int) -> list[tuple[int, int]]:
    cols = list(range(width))
    return [(r, c) for r in range(height) for c in (cols if r % 2 == 0 else cols[::-1])]


def _interleave_bits(row: int, col: int) -> int:
    code, bit = 0, 0
    while row >> bit or col >> bit:
        code |= ((row >> bit) & 1) << (2 * bit + 1) | ((col >> bit) & 1) << (2 * bit)
        bit += 1
    return code


def _zorder(height: int, width: int) -> list[tuple[int, int]]:
    return sorted(_sweep(height, width), key=lambda rc: _interleave_bits(*rc))


def _zigzag(height: int, width: int) -> list[tuple[int, int]]:
    cells = []
    for s in range(height + width - 1):
        diagonal = [(r, s - r) for r in range(max(0, s - width + 1), min(height, s + 1))]
        cells.extend(diagonal if s % 2 else diagonal[::-1])
    return cells


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list) -> None:
    """Fill the rectangle spanned from (x, y) by major axis (ax, ay) and minor axis (bx, by).

    Generalised Hilbert recursion: split the major axis in half (long, thin rectangles) or split into the three
    sub-rectangles of the Hilbert pattern, nudging odd halves to even so the path stays connected.
    """
    length, breadth = abs(ax + ay), abs(bx + by)
    step_a, step_b = (_sign(ax), _sign(ay)), (_sign(bx), _sign(by))
    if breadth == 1 or length == 1:
        step, count = (step_a, length) if breadth == 1 else (step_b, breadth)
        for i in range(count):
            out.append((x + i * step[0], y + i * step[1]))
        return
    hax, hay, hbx, hby = ax // 2, ay // 2, bx // 2, by // 2
    if 2 * length > 3 * breadth:
        if abs(hax + hay) % 2 and length > 2:
            hax, hay = hax + step_a[0], hay + step_a[1]
        _gilbert(x, y, hax, hay, bx, by, out)
        _gilbert(x + hax, y + hay, ax - hax, ay - hay, bx, by, out)
        return
    if abs(hbx + hby) % 2 and breadth > 2:
        hbx, hby = hbx + step_b[0], hby + step_b[1]
    _gilbert(x, y, hbx, hby, hax, hay, out)
    _gilbert(x + hbx, y + hby, ax, ay, bx - hbx, by - hby, out)
    _gilbert(x + (ax - step_a[0]) + (hbx - step_b[0]), y + (ay - step_a[1]) + (hby - step_b[1]),
             -hbx, -hby, -(ax - hax), -(ay - hay), out)


def _hilbert(height: int, width: int) -> list[tuple[int, int]]:
    xy: list[tuple[int, int]] = []
    if width >= height:
        _gilbert(0, 0, width, 0, 0, height, xy)
    else:
        _gilbert(0, 0, 0, height, width, 0, xy)
    return [(y, x) for x, y in xy]


_CURVES = {"sweep": _sweep, "scan": _snake, "zorder": _zorder, "zigzag": _zigzag, "hilbert": _hilbert}


def _views(method: str, height: int, width: int) -> list[np.ndarray]:
    """Raster indices of the curve run over: the map, its transpose, its rot90, and rot90 transposed."""
    curve = _CURVES[method]
    on_map = np.asarray(curve(height, width))  # (i, j) of an H x W view
    on_transposed = np.asarray(curve(width, height))  # (i, j) of a W x H view
    cells = [
        on_map,
        on_transposed[:, ::-1],  # transpose: view[i, j] = map[j, i]
        np.stack([on_transposed[:, 1], width - 1 - on_transposed[:, 0]], 1),  # rot90: view[i, j] = map[j, W-1-i]
        np.stack([on_map[:, 0], width - 1 - on_map[:, 1]], 1),  # rot90 transposed: view[i, j] = map[i, W-1-j]
    ]
    return [rc[:, 0] * width + rc[:, 1] for rc in cells]


@functools.lru_cache(maxsize=128)
def _scan_orders_cached(method: str, height: int, width: int, directions: int) -> np.ndarray:
    views = _views(method, height, width)
    forward = [views[i] for i in _VIEWS_USED[directions]]
    orders = forward if directions == 1 else forward + [p[::-1] for p in forward]
    out = np.stack(orders).astype(np.int32)
    out.setflags(write=False)
    return out


def scan_orders(method: str, height: int, width: int, directions: int = 8) -> np.ndarray:
    """Scan orders as an int32 array (directions, height*width); each row is a permutation of raster indices."""
    if method not in METHODS:
        raise ValueError(f"scan_orders: unknown method {method!r}; valid: {', '.join(METHODS)}")
    if directions not in DIRECTIONS:
        raise ValueError(f"scan_orders: directions={directions!r}; valid: {', '.join(map(str, DIRECTIONS))}")
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"scan_orders: `{name}` is {v!r}, expected a positive int")
    return _scan_orders_cached(method, int(height), int(width), int(directions))


def inverse_orders(orders: np.ndarray) -> np.ndarray:
    """Inverse permutations: ``inverse[k, orders[k, t]] == t``."""
    orders = np.asarray(orders)
    inverse = np.empty_like(orders)
    rows = np.arange(orders.shape[0])[:, None]
    inverse[rows, orders] = np.arange(orders.shape[1])[None, :]
    return inverse
