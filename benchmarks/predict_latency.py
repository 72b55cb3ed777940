"""A trained run's prediction latency as a line sees it: ``ssm_jax.inference.Predictor`` on camera-sized frames.

    python benchmarks/predict_latency.py --run runs/parts [--batches 1,8] [--calls 20] [--frame 1024x1280] [--workers 8]

Each row times ``predictor(frames)`` end to end (NumPy frames in, NumPy results out: resizing, normalisation, the
transfer, the model and its maps), median over ``--calls`` after a compiling call, and, apart, the preprocessing
alone (``predictor.pixels`` of every frame, one after another: one thread's work, which the Predictor spreads over
``--workers`` threads). Frames are random uint8 grayscale of ``--frame`` HxW (grayscale, as line cameras mostly
are). Prints a table and appends each row as JSON to ``--json`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import median_step_seconds  # noqa: E402


def frame_shape(text: str) -> tuple[int, int]:
    """"1024x1280" -> (1024, 1280): height x width."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frame {text!r}; expected HEIGHTxWIDTH, e.g. 1024x1280") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"--frame {text!r}; expected positive sides")
    return height, width


def latency_rows(predictor, batches, calls: int, frame: tuple[int, int], seed: int = 0) -> list[dict]:
    """One row per batch length: milliseconds a call end to end and for the preprocessing alone, images/s."""
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batches:
        frames = list(rng.integers(0, 256, (batch, *frame), dtype=np.uint8))  # as a camera loop collects them
        total = median_step_seconds(lambda: predictor(frames), lambda: None, calls, warmup=1)
        prepare = median_step_seconds(lambda: [predictor.pixels(f) for f in frames], lambda: None, calls, warmup=0)
        rows.append({"batch": batch, "frame": f"{frame[0]}x{frame[1]}", "size": predictor.size,
                     "call_ms": 1e3 * total, "preprocess_ms": 1e3 * prepare, "images_per_s": batch / total})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run's directory (config.json, checkpoints/)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch lengths")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per batch length")
    parser.add_argument("--frame", type=frame_shape, default=(1024, 1280), help="HEIGHTxWIDTH of the frames")
    parser.add_argument("--workers", type=int, help="threads preparing images (default: the cores, at most 8)")
    parser.add_argument("--json", help="append each row as a JSON line to this file")
    args = parser.parse_args(argv)
    import jax

    from ssm_jax.inference import Predictor

    start = time.perf_counter()
    predictor = Predictor.from_run(args.run, workers=args.workers)
    print(f"{args.run}: {predictor.config.model.name} at {predictor.size} px on {jax.devices()[0].device_kind}, "
          f"restored in {time.perf_counter() - start:.1f} s; {predictor.workers} threads preparing images")
    print(f"{'batch':>6}{'frame':>12}{'call ms':>10}{'preprocess ms':>15}{'images/s':>10}")
    for row in latency_rows(predictor, [int(b) for b in args.batches.split(",")], args.calls, args.frame):
        print(f"{row['batch']:>6}{row['frame']:>12}{row['call_ms']:>10.1f}{row['preprocess_ms']:>15.1f}"
              f"{row['images_per_s']:>10.1f}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"run": args.run, "device": jax.devices()[0].device_kind,
                                    "workers": predictor.workers, **row}) + "\n")


if __name__ == "__main__":
    main()
