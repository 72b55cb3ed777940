"""``benchmarks/depthwise_conv.py``: the three forms it times are one function, checked against a float64 NumPy
depthwise convolution (outputs, and the gradients of the output's sum), on a shape with a tap larger than the map."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.depthwise_conv import FORMS, gradients, inputs


def reference(x, w):
    """y, d sum(y)/dx and d sum(y)/dw in float64: y[r, s] = sum over taps (i, j) of padded x[r + i, s + j] w[i, j]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    k, p, (h, wd) = w.shape[0], w.shape[0] // 2, x.shape[1:3]
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    y = sum(padded[:, i:i + h, j:j + wd] * w[i, j] for i in range(k) for j in range(k))
    dpadded = np.zeros_like(padded)
    for i in range(k):
        for j in range(k):
            dpadded[:, i:i + h, j:j + wd] += w[i, j]
    dw = np.stack([np.stack([padded[:, i:i + h, j:j + wd].sum(axis=(0, 1, 2)) for j in range(k)]) for i in range(k)])
    return y, dpadded[:, p:p + h, p:p + wd], dw


@pytest.mark.parametrize("name", sorted(FORMS))
@pytest.mark.parametrize("k", [3, 7])
def test_each_form_is_the_depthwise_convolution_and_its_gradients(name, k):
    x, w = inputs(2, 5, 3, k, jnp.float32, seed=k)  # 5 x 5 maps: a 7 x 7 tap reaches past every border
    y, dx, dw = reference(x, w)
    np.testing.assert_allclose(FORMS[name](x, w), y, rtol=1e-5, atol=1e-5)
    got_dx, got_dw = gradients(FORMS[name])(x, w)
    np.testing.assert_allclose(got_dx, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dw, dw, rtol=1e-5, atol=1e-4)
