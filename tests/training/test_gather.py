"""``gather_predictions``: every example scored once, padding dropped, a process with nothing to score padding from
an example, and an input that would leave examples unscored (batches short before the end) refused."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssm_jax.data import CorruptImageError, Record, Source
from ssm_jax.data.pipeline import first_example
from ssm_jax.training.gather import gather_predictions
from ssm_jax.training.mesh import make_mesh


def _batches(sizes):
    start = 0
    for n in sizes:
        index = np.arange(start, start + n)
        yield {"image": np.broadcast_to(index[:, None, None, None], (n, 2, 2, 1)).astype(np.float32), "index": index}
        start += n


def _gather(sizes, num_examples, local_batch=4):
    return gather_predictions(None, lambda state, images: {"mean": jnp.mean(images, axis=(1, 2, 3))},
                              _batches(sizes), num_examples=num_examples, local_batch=local_batch,
                              mesh=make_mesh(), keep=lambda b: {"index": b["index"]})


def test_every_example_once_in_order_padding_dropped():
    out = _gather([4, 4, 2], 10)
    np.testing.assert_array_equal(out["index"], np.arange(10))
    np.testing.assert_allclose(out["mean"], np.arange(10))


def test_rows_come_in_source_order_whatever_order_they_were_read_in():
    """Processes read every P-th example, so gathered rows interleave shards; with source ``indices`` kept they are
    put back in source order, each output row beside its own example."""
    def shuffled():
        for index in (np.array([7, 2, 9, 0]), np.array([4, 1, 8, 3]), np.array([6, 5])):
            yield {"image": np.broadcast_to(index[:, None, None, None], (len(index), 2, 2, 1)).astype(np.float32),
                   "index": index}
    out = gather_predictions(None, lambda state, images: {"mean": jnp.mean(images, axis=(1, 2, 3))}, shuffled(),
                             num_examples=10, local_batch=4, mesh=make_mesh(), keep=lambda b: {"indices": b["index"]})
    np.testing.assert_array_equal(out["indices"], np.arange(10))
    np.testing.assert_allclose(out["mean"], np.arange(10))


def test_short_batches_before_the_end_are_refused():
    with pytest.raises(RuntimeError, match="still had batches after 3 steps of 4 for 10 examples"):
        _gather([3, 3, 3, 1], 10)


def test_a_process_with_nothing_to_score_pads_from_the_example():
    """An empty shard, or one whose every image was skipped as corrupt: this process still takes part in every
    step, padding in the example's layout, and contributes no row."""
    calls = []
    example = lambda: calls.append(1) or next(_batches([1]))  # noqa: E731
    out = gather_predictions(None, lambda state, images: {"mean": jnp.mean(images, axis=(1, 2, 3))}, iter([]),
                             num_examples=3, local_batch=4, mesh=make_mesh(), keep=lambda b: {"index": b["index"]},
                             example=example)
    assert out["index"].shape == (0,) and out["mean"].shape == (0,) and calls == [1]
    full = gather_predictions(None, lambda state, images: {"mean": jnp.mean(images, axis=(1, 2, 3))},
                              _batches([4, 2]), num_examples=6, local_batch=4, mesh=make_mesh(),
                              keep=lambda b: {"index": b["index"]}, example=example)
    assert full["index"].tolist() == list(range(6)) and calls == [1]  # a process with batches never reads it
    with pytest.raises(ValueError, match="no batch to score and no example to pad with"):
        _gather([], 3)


def test_first_example_skips_corrupt_files_and_names_a_source_with_none(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "b.png")
    source = Source([Record(str(tmp_path / "a.png"), 0), Record(str(tmp_path / "b.png"), 1)], ["x", "y"])
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        example = first_example(source, 4, skip_corrupt=True)
    assert example["image"].shape == (1, 4, 4, 3) and example["index"].tolist() == [1]
    with pytest.raises(CorruptImageError, match="a.png"):  # without skip_corrupt the corrupt file is named
        first_example(source, 4)
    with pytest.warns(UserWarning), pytest.raises(CorruptImageError, match="none of the 1 images to score decodes"):
        first_example(Source(source.records[:1], ["x", "y"]), 4, skip_corrupt=True)
