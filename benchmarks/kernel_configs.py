"""Pallas kernel configs as the scan benchmarks write them (``FIELDS``), and the jitted functions one runs: shared by
``scan_tune.py``, ``scan.py --pallas-configs`` and ``kernel_resources.py``."""

from __future__ import annotations

import jax

from kernels.selective_scan import selective_scan_pallas
from ssm_jax.ssm.selective_scan import validate_inputs


FIELDS = ("design:block_d:chunk:forward_warps:backward_warps[:unroll[:hoist[:outside[:prefetch[:rows[:gate"
          "[:chain[:major[:pair[:poly]]]]]]]]]]")
# The ``outside`` field's values -> ``delta_in_kernel``.
DELTA_IN_KERNEL = {0: True, 1: False, 2: "forward", 3: "inference"}


def parse_config(text: str) -> dict:
    """A config (``FIELDS``) -> selective_scan_pallas keywords. An optional field left empty (``split:16:128:1:1:4::1``)
    or out takes the default; chunk and unroll 0 too (split: the segment length ``split.default_segment`` picks).
    block_d is one width for both directions or ``forward/backward`` (``32/16``).
    hoist 1 / 0: ``hoist_loads`` in both kernels / neither; outside 1: delta discretised outside the kernels,
    ``delta_in_kernel=False``, 0: in each kernel (True), 2: in the forward kernels only ("forward"), 3: in them when no
    gradient is taken ("inference"), left out: by dtype (``ops.DELTA_IN_KERNEL_BY_ITEMSIZE``); prefetch 1 / 0:
    ``prefetch_order`` on / off; rows 1: ``prefetch_rows``; gate 0: the gate applied outside the kernels
    (``gate_in_kernel=False``), 1: in them (True), 2: in the forward walk when no gradient is taken ("forward"); chain
    1: the split design's chain over segments as one kernel (``chain_in_kernel=True``); major: empty or 0 (it chose
    ``state_major``, removed in session 37: NOTES.md, "Alternatives tried"; the field keeps its place so that older
    configs still parse); pair 1: the walks that load rows ahead take two chunks an iteration
    (``pair_chunks=True``); poly: decays of every 8 from the FMA-pipe polynomial, one count or ``states/walk``
    (``poly_exp``)."""
    design, block_d, chunk, fwd_warps, bwd_warps, *rest = text.split(":")
    poly = rest.pop(9) if len(rest) > 9 else ""
    if len(rest) > 9:
        raise SystemExit(f"config {text!r}: expected {FIELDS}")
    blocks = tuple(int(b) for b in block_d.split("/"))
    config = dict(design=design, block_d=blocks if len(blocks) > 1 else blocks[0],
                  num_warps=(int(fwd_warps), int(bwd_warps)))
    if chunk and int(chunk):
        config["chunk"] = int(chunk)
    unroll, hoist, outside, prefetch, rows, gate, chained, major, paired = (int(v) if v else None
                                                                            for v in rest + [""] * (9 - len(rest)))
    if unroll:
        config["unroll"] = unroll
    if hoist is not None:
        config["hoist_loads"] = bool(hoist)
    if outside is not None:
        if outside not in DELTA_IN_KERNEL:
            raise SystemExit(f"config {text!r}: outside is one of {sorted(DELTA_IN_KERNEL)}, not {outside}")
        config["delta_in_kernel"] = DELTA_IN_KERNEL[outside]
    if prefetch is not None:
        config["prefetch_order"] = bool(prefetch)
    if rows is not None:
        config["prefetch_rows"] = bool(rows)
    if gate is not None:
        if gate not in (0, 1, 2):
            raise SystemExit(f"config {text!r}: gate is 0, 1 or 2, not {gate}")
        config["gate_in_kernel"] = "forward" if gate == 2 else bool(gate)
    if chained is not None:
        config["chain_in_kernel"] = bool(chained)
    if major:
        raise SystemExit(f"config {text!r}: the major field (state_major) was removed in session 37 (NOTES.md, "
                         "'Alternatives tried'); leave it empty or 0")
    if paired is not None:
        config["pair_chunks"] = bool(paired)
    if poly:
        counts = tuple(int(n) for n in poly.split("/"))
        config["poly_exp"] = counts if len(counts) > 1 else counts[0]
    return config


def config_width(texts) -> int:
    """Width of a table's config column: the longest config and two spaces, so none runs into the next column."""
    return max(len(text) for text in texts) + 2


def kernel_fns(config: dict, order=None, scan=selective_scan_pallas, interpret: bool = False,
               sum_groups: bool = False):
    """Jitted forward and forward+backward of the Pallas scan with a config's keywords (softplus on, on a GPU unless
    ``interpret``); ``scan``: another version's ``selective_scan_pallas`` (``kernel_ab.py``), which is given
    ``sum_groups`` only when set (versions before it lack the keyword)."""
    summed = {"sum_groups": True} if sum_groups else {}

    def forward(*args):
        x = validate_inputs(*args)
        return scan(*x, delta_softplus=True, return_last_state=False, interpret=interpret, order=order, **summed,
                    **config)

    def forward_backward(args, cotangent):
        y, vjp = jax.vjp(forward, *args)
        return y, vjp(cotangent)

    return jax.jit(forward), jax.jit(forward_backward)
