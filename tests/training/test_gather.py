"""``gather_predictions``: every example scored once, padding dropped, and an input that would leave examples
unscored (batches short before the end) refused."""

import jax.numpy as jnp
import numpy as np
import pytest

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


def test_short_batches_before_the_end_are_refused():
    with pytest.raises(RuntimeError, match="still had batches after 3 steps of 4 for 10 examples"):
        _gather([3, 3, 3, 1], 10)
