"""A real 2-process job on CPU (2 devices each, gloo collectives): the multi-host code paths of the loop."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

WORKER = Path(__file__).with_name("multiprocess_worker.py")


def _losses(workdir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two processes, each compiling and training, then the same job as one process
def test_two_process_training_agrees_and_evaluates_every_image(folder_root, tmp_path):
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(port), folder_root, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    alone = subprocess.run([sys.executable, str(WORKER), "-1", "0", folder_root, str(tmp_path / "alone")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert alone.returncode == 0, alone.stdout
    # the same global batches in the same order whatever the process count (float32 sums in another order: 1e-5)
    np.testing.assert_allclose(_losses(tmp_path), _losses(tmp_path / "alone"), rtol=1e-5)
    paths = [[line.split(",")[0] for line in (d / "eval" / "predictions.csv").read_text().splitlines()]
             for d in (tmp_path, tmp_path / "alone")]
    assert paths[0] == paths[1] and len(paths[0]) == 10  # rows in source order, whatever the process count
    results = [next(line for line in out.splitlines() if line.startswith("RESULT")) for out in outputs]
    checksums = {line.split("checksum=")[1].split()[0] for line in results}
    assert len(checksums) == 1, results  # parameters stayed replicated across the processes
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 9  # 3 classes x 12 images, 25% test: every test image, once
    assert f"images={metrics['num_images']}" in results[0]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
