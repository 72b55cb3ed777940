"""``benchmarks/sass_stalls.py``: stall samples by reason, opcode and instruction from ncu's source-page CSV."""

import pytest

from benchmarks.sass_stalls import opcode_table, read_source_csv, reason_shares, top_instructions

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"Instructions Executed","stall_long_sb","stall_wait","stall_selected","stall_long_sb (Not Issued)"')


def write_csv(tmp_path, rows):
    path = tmp_path / "fwd.csv"
    lines = ['"Kernel Name","selective_scan_fwd",', HEADER]
    lines += [",".join(f'"{c}"' for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


ROWS = [  # address, source, all samples, not issued, executed, long_sb, wait, selected, long_sb (not issued)
    ("0x10", "      LDG.E R97, desc[UR6][R44.64]", "10", "8", "1,536", "0", "2", "8", "0"),
    ("0x20", "      FADD R104, R4, R97", "60", "59", "49152", "58", "1", "1", "58"),
    ("0x30", "@P0   FMUL.FTZ R56, R102, 0.5", "20", "10", "49152", "0", "10", "10", "0"),
    ("0x40", "      MUFU.EX2 R105, R105", "10", "5", "49152", "0", "5", "5", "0"),
]


def test_reasons_opcodes_and_top_instructions_from_the_csv(tmp_path):
    instructions = read_source_csv(write_csv(tmp_path, ROWS))
    assert [i.opcode for i in instructions] == ["LDG", "FADD", "FMUL", "MUFU"]  # predicate and modifiers dropped
    assert instructions[0].executed == 1536  # thousands separators read
    assert instructions[1].stalls == {"long_sb": 58, "wait": 1, "selected": 1}  # "(Not Issued)" columns left out
    shares = reason_shares(instructions)
    assert list(shares) == ["long_sb", "selected", "wait"]
    assert shares["long_sb"] == pytest.approx(58 / 100) and shares["wait"] == pytest.approx(18 / 100)
    table = opcode_table(instructions)
    assert [row["opcode"] for row in table] == ["FADD", "FMUL", "LDG", "MUFU"]
    assert table[0]["share"] == pytest.approx(0.6) and table[0]["reasons"][0] == ("long_sb", pytest.approx(58 / 60))
    assert table[2]["reasons"] == [("selected", pytest.approx(0.8)), ("wait", pytest.approx(0.2))]  # zeros left out
    assert [i.index for i in top_instructions(instructions, 2)] == [1, 2]  # the two largest, in listing order


def test_a_csv_without_the_sampling_columns_is_refused_with_what_was_expected(tmp_path):
    path = tmp_path / "times.csv"
    path.write_text('"ID","Kernel Name","Metric Name","Metric Value"\n"0","k","gpu__time_duration.sum","5"\n')
    with pytest.raises(SystemExit, match="Warp Stall Sampling.*--page source"):
        read_source_csv(str(path))
