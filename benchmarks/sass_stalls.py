"""Where a kernel's warps wait, by reason, by opcode and by SASS instruction, from Nsight Compute's source page.

    ncu --clock-control none --section WarpStateStats --section SourceCounters --kernel-name regex:selective_scan \\
        --launch-skip 3 --launch-count 3 -o fwd python benchmarks/scan_kernel_times.py pallas vmamba-64x64 float32
    ncu --import fwd.ncu-rep --kernel-name selective_scan_fwd --page source --csv --print-source sass > fwd.csv
    python benchmarks/sass_stalls.py fwd.csv --top 12

ncu samples each warp's state at intervals; an instruction's samples are the times a warp sat on it, split by why it
could not issue (``stall_long_sb``: waiting on a global load, ``stall_wait``: a fixed-latency dependency,
``stall_mio``: the queue of the shared-memory and special-function units, ``stall_selected``: issuing). A stall is
charged to the instruction that waits, not to the one it waits for: a load's latency shows on the first instruction
that reads its register (session 36 found the states kernel's delta loads that way, NOTES.md). Prints the reasons'
shares of all samples, the opcodes with their shares, executions and top reasons, and the ``--top`` instructions
with their index in the listing (a loop's body is the run of instructions executed most often).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from typing import NamedTuple

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


class Instruction(NamedTuple):
    index: int
    source: str  # SASS text, predicate included
    samples: float
    executed: float
    stalls: dict  # reason (without "stall_") -> samples

    @property
    def opcode(self) -> str:
        """The mnemonic without modifiers or predicate: ``@P0 FMUL.FTZ R1, ...`` -> ``FMUL``."""
        words = [w for w in self.source.split() if not w.startswith("@")]
        return words[0].split(".")[0] if words else "?"


def _number(text: str) -> float:
    return float(text.replace(",", "")) if text.strip() else 0.0


def read_source_csv(path: str) -> list[Instruction]:
    """The instructions of ncu's ``--page source --csv --print-source sass`` output for one kernel, in listing order.
    Exits with a message when the file is not that (no header with the sampling columns)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = next((i for i, r in enumerate(rows) if SAMPLES in r and "Source" in r), None)
    if header is None:
        raise SystemExit(f"sass_stalls.py: {path} has no '{SAMPLES}' column: expected the CSV of ncu --page source "
                         "--csv --print-source sass on a report collected with --section WarpStateStats --section "
                         "SourceCounters, for one kernel (--kernel-name)")
    names = rows[header]
    reasons = [n for n in names if n.startswith("stall_") and "Not Issued" not in n]
    out = []
    for r in rows[header + 1:]:
        if len(r) < len(names):
            continue
        cell = dict(zip(names, r))
        out.append(Instruction(len(out), cell["Source"].strip(), _number(cell[SAMPLES]), _number(cell[EXECUTED]),
                               {n[len("stall_"):]: _number(cell[n]) for n in reasons}))
    return out


def reason_shares(instructions: list[Instruction]) -> dict[str, float]:
    """Each reason's share of all samples, largest first."""
    total = Counter()
    for ins in instructions:
        total.update(ins.stalls)
    samples = sum(total.values()) or 1.0
    return {k: v / samples for k, v in total.most_common()}


def opcode_table(instructions: list[Instruction]) -> list[dict]:
    """Per opcode, largest share first: its share of all samples, executions, and its top three reasons with the
    share of the opcode's samples each takes."""
    samples, executed, stalls = Counter(), Counter(), {}
    for ins in instructions:
        samples[ins.opcode] += ins.samples
        executed[ins.opcode] += ins.executed
        stalls.setdefault(ins.opcode, Counter()).update(ins.stalls)
    total = sum(samples.values()) or 1.0
    return [{"opcode": op, "share": s / total, "executed": executed[op],
             "reasons": [(k, v / s) for k, v in stalls[op].most_common(3) if v]}
            for op, s in samples.most_common()]


def top_instructions(instructions: list[Instruction], n: int) -> list[Instruction]:
    """The ``n`` instructions with the most samples, in listing order."""
    return sorted(sorted(instructions, key=lambda i: -i.samples)[:n], key=lambda i: i.index)


def report(path: str, top: int) -> None:
    instructions = read_source_csv(path)
    total = sum(i.samples for i in instructions) or 1.0
    print(f"{path}: {len(instructions)} instructions, {total:.0f} samples")
    print("reasons: " + ", ".join(f"{k} {v:.3f}" for k, v in reason_shares(instructions).items() if v >= 0.001))
    print(f"{'opcode':<10}{'share':>7}{'executed':>14}  top reasons (share of the opcode's samples)")
    for row in opcode_table(instructions):
        if row["share"] >= 0.002:
            reasons = ", ".join(f"{k} {v:.2f}" for k, v in row["reasons"])
            print(f"{row['opcode']:<10}{row['share']:7.3f}{row['executed']:14.0f}  {reasons}")
    print(f"the {top} instructions with the most samples:")
    for ins in top_instructions(instructions, top):
        reasons = ", ".join(f"{k} {v / ins.samples:.2f}" for k, v in Counter(ins.stalls).most_common(2) if v)
        print(f"{ins.index:5d}  {ins.source[:56]:<56}{ins.samples / total:7.3f}{ins.executed:10.0f}  {reasons}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="ncu --page source --csv --print-source sass output for one kernel")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if not os.path.exists(args.csv):
        sys.exit(f"sass_stalls.py: {args.csv} does not exist (the CSV of ncu --import R --page source ...)")
    report(args.csv, args.top)


if __name__ == "__main__":
    main()
