"""Training losses, pure jnp: cross-entropy, MemoryMamba's memory losses (eq. 7, 23-25), MambaAD's feature MSE and
the binary focal loss SNARM's heads are trained with.

All are means over the batch (and positions / blocks where they apply) and computed in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-8


def cross_entropy(logits, labels, label_smoothing: float = 0.0, class_weights=None, ordinal: float = 0.0):
    """Mean softmax cross-entropy; logits (B, K), integer labels (B,) (eq. 7).

    ``ordinal`` = s > 0 replaces the one-hot target by soft ordinal labels for ordered classes (SORD, Diaz and
    Marathe, CVPR 2019): target_k proportional to exp(-s (k - y)^2), so a neighbouring class costs less than a far
    one (ELPV's defect probabilities 0 < 1/3 < 2/3 < 1). ``label_smoothing`` = e then takes the target (1 - e)
    target + e / K. ``class_weights`` (K,) multiplies each image's term by the weight of its class; the mean stays
    over images (not over the batch's summed weights, as PyTorch's weighted mean does), so micro-batch means still
    average to the batch mean (gradient accumulation) and weights whose mean over the training images is 1
    (``"balanced"``) keep the loss scale. A label outside 0..K-1 is refused where its value is known, and gives a
    NaN loss under ``jax.jit`` (never another class's term).
    """
    _check_labels(logits, labels)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if ordinal:
        distance = jnp.arange(logp.shape[-1])[None, :] - labels[:, None]
        loss = -jnp.sum(jax.nn.softmax(-ordinal * distance.astype(jnp.float32) ** 2, axis=-1) * logp, axis=-1)
    else:
        loss = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * jnp.mean(logp, axis=-1)
    if class_weights is not None:
        loss = loss * jnp.asarray(class_weights, jnp.float32)[labels]
    in_range = (labels >= 0) & (labels < logp.shape[-1])  # -1 would otherwise index the last class
    return jnp.mean(jnp.where(in_range, loss, jnp.nan))


def _check_labels(logits, labels) -> None:
    """Integer labels (B,) for logits (B, K); their range too where they are not traced."""
    shape, dtype = jnp.shape(labels), jnp.result_type(labels)
    if jnp.ndim(logits) != 2 or shape != jnp.shape(logits)[:1] or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"cross_entropy: labels of shape {shape} and dtype {dtype} for logits of shape "
                         f"{jnp.shape(logits)}; expected integer class indices of shape (batch,) and logits "
                         f"(batch, classes) (one-hot labels: labels.argmax(-1))")
    try:
        values = np.asarray(labels)
    except jax.errors.TracerArrayConversionError:
        return
    outside = values[(values < 0) | (values >= logits.shape[-1])]
    if outside.size:
        raise ValueError(f"cross_entropy: label {int(outside[0])} is outside 0..{logits.shape[-1] - 1} (the logits' "
                         f"{logits.shape[-1]} classes)")


def _unit(x):
    """x / |x| along the last axis; zero vectors stay zero with zero (not NaN) gradients."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS ** 2))


def memory_contrastive_loss(queries, labels, num_classes: int, margin: float):
    """Coarse-memory contrastive loss (eq. 23) over the classes present in the batch.

    h_{c,k} is the batch mean of the queries (B, c) of class k. Eq. 23 is written as max(0, delta - cos), which
    is lowest when different classes are *alike*; the text says delta is "the minimum acceptable distance between
    classes", so the hinge is on the cosine distance: max(0, delta - (1 - cos(h_k, h_j))). The sum over ordered
    pairs k != j is averaged over the present pairs, so lambda_c does not scale with the number of classes.
    A batch with fewer than two classes gives 0.
    """
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    counts = onehot.sum(axis=0)
    means = (onehot.T @ queries.astype(jnp.float32)) / jnp.maximum(counts, 1.0)[:, None]
    unit = _unit(means)
    distance = 1.0 - unit @ unit.T
    present = counts > 0
    pairs = present[:, None] & present[None, :] & ~jnp.eye(num_classes, dtype=bool)
    hinge = jnp.maximum(0.0, margin - distance)
    return jnp.sum(jnp.where(pairs, hinge, 0.0)) / jnp.maximum(jnp.sum(pairs), 1)


NCE_SIMILARITIES = ("cos", "dot")


def info_nce_loss(features, memory, temperature: float, similarity: str = "cos"):
    """InfoNCE between features Z and their memory representations M_hat (eq. 24), in-batch negatives.

    features, memory: (B, ..., C), paired by index. At each position (the axes between batch and channels,
    none for pooled vectors) the positive for sample b is memory[b] and the negatives are the other samples'
    memory at that position ("drawn from the memory, not corresponding to Z"); the positive is in the softmax
    denominator, as usual. sim = cosine ("cos") or dot product ("dot"), divided by ``temperature``.
    """
    if features.shape != memory.shape:
        raise ValueError(f"info_nce_loss: features {features.shape} and memory {memory.shape} differ")
    if similarity not in NCE_SIMILARITIES:
        raise ValueError(f"info_nce_loss: unknown similarity {similarity!r}; valid: {', '.join(NCE_SIMILARITIES)}")
    batch, channels = features.shape[0], features.shape[-1]
    f = features.astype(jnp.float32).reshape(batch, -1, channels)
    m = memory.astype(jnp.float32).reshape(batch, -1, channels)
    if similarity == "cos":
        f, m = _unit(f), _unit(m)
    logits = jnp.einsum("bpc,qpc->pbq", f, m) / temperature
    positive = jnp.diagonal(logits, axis1=1, axis2=2)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - positive)


def memorymamba_loss(outputs, labels, lambda_c: float, lambda_f: float, margin: float, temperature: float,
                     label_smoothing: float = 0.0, class_weights=None, ordinal: float = 0.0, ce_mix=None,
                     nce_similarity: str = "cos"):
    """Eq. 25: L = CE + lambda_c * L_contrastive + lambda_f * L_NCE, from MemoryMamba's output dict.

    The memory terms are averaged over the Mem-SSM blocks (each block has its own memories); a term whose
    memory is disabled (keys absent) is 0. ``label_smoothing``, ``class_weights`` and ``ordinal`` apply to CE only
    (see ``cross_entropy``). ``ce_mix`` = (labels_a, labels_b, lam), for mixed images (mixup, CutMix), makes CE
    lam CE(labels_a) + (1 - lam) CE(labels_b), while ``labels`` (one class per image) feed the memory terms.
    ``nce_similarity`` is eq. 24's sim: "cos" or "dot" (the paper's example), see ``info_nce_loss``.
    Returns (total, {"cls", "contrastive", "nce", "total"}).
    """
    logits = outputs["logits"]
    if ce_mix is None:
        cls = cross_entropy(logits, labels, label_smoothing, class_weights, ordinal)
    else:
        labels_a, labels_b, lam = ce_mix
        cls = (lam * cross_entropy(logits, labels_a, label_smoothing, class_weights, ordinal)
               + (1 - lam) * cross_entropy(logits, labels_b, label_smoothing, class_weights, ordinal))
    zero = jnp.zeros((), jnp.float32)
    queries = outputs.get("coarse_queries", ())
    contrastive = (sum(memory_contrastive_loss(q, labels, logits.shape[-1], margin) for q in queries)
                   / len(queries)) if queries else zero
    pairs = list(zip(outputs.get("fine_features", ()), outputs.get("fine_memory", ())))
    nce = sum(info_nce_loss(z, m, temperature, nce_similarity) for z, m in pairs) / len(pairs) if pairs else zero
    total = cls + lambda_c * contrastive + lambda_f * nce
    return total, {"cls": cls, "contrastive": contrastive, "nce": nce, "total": total}


def feature_mse_loss(encoder, decoder, weight: float = 5.0):
    """MambaAD's reconstruction loss: sum over scales of ``weight * mean((e - d) ** 2)``.

    encoder, decoder: sequences of feature maps paired by scale (any matching shapes). This is the official
    MambaAD/ADer ``L2Loss`` (lam 5.0 per scale); its training logs call it "cos", but it is the MSE.
    """
    if len(encoder) != len(decoder) or not encoder:
        raise ValueError(f"feature_mse_loss: {len(encoder)} encoder and {len(decoder)} decoder scales; "
                         f"expected the same non-zero number")
    total = jnp.zeros((), jnp.float32)
    for e, d in zip(encoder, decoder):
        if e.shape != d.shape:
            raise ValueError(f"feature_mse_loss: encoder feature {e.shape} and decoder feature {d.shape} differ")
        total = total + weight * jnp.mean(jnp.square(e.astype(jnp.float32) - d.astype(jnp.float32)))
    return total


def binary_focal_loss(logits, targets, gamma: float = 2.0, alpha: float = -1.0):
    """Mean binary focal loss (Lin et al. 2017) of ``logits`` against ``targets`` in [0, 1], same shape:
    ``-a_t (1 - p_t)^gamma log p_t`` with p_t = t p + (1 - t)(1 - p), a_t = t alpha + (1 - t)(1 - alpha), or 1 when
    ``alpha`` < 0; gamma 0 and alpha < 0 give the binary cross-entropy. Stable for large |logits| (log-sigmoid)."""
    if logits.shape != targets.shape:
        raise ValueError(f"binary_focal_loss: logits {logits.shape} and targets {targets.shape} differ")
    z, t = logits.astype(jnp.float32), targets.astype(jnp.float32)
    ce = t * jax.nn.softplus(-z) + (1 - t) * jax.nn.softplus(z)
    loss = ce
    if gamma:
        # 1 - p_t without cancellation, floored: the gradient of x ** gamma at x = 0 is NaN for gamma < 1 (and
        # 0 * x ** -1 at gamma 0, hence the skip), and a saturated sigmoid gives exactly 0.
        miss = jnp.maximum(t * jax.nn.sigmoid(-z) + (1 - t) * jax.nn.sigmoid(z), 1e-30)
        loss = ce * miss ** gamma
    if alpha >= 0:
        loss = loss * (t * alpha + (1 - t) * (1 - alpha))
    return jnp.mean(loss)
