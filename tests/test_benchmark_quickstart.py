"""benchmarks/quickstart.py's table: a spread is stated only where there are runs to spread."""

from benchmarks import quickstart


def _row(seed: int, acc: float) -> dict:
    return {"seed": seed, **{key: 10.0 + seed for key, _ in quickstart.COLUMNS}, "acc": acc, "f1": acc / 2,
            "load": (1.0, 2.0)}


def test_one_seed_gives_a_mean_without_a_spread(capsys):
    quickstart.print_table([_row(0, 0.7)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("| mean | 10.0 s |") and "±" not in last and "| 70.0 | 35.0 |" in last


def test_three_seeds_give_the_sample_standard_deviation(capsys):
    quickstart.print_table([_row(0, 0.70), _row(1, 0.72), _row(2, 0.74)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("| mean ± sd | 11.0 ± 1.0 s |") and "| 72.0 ± 2.0 | 36.0 ± 1.0 |" in last
