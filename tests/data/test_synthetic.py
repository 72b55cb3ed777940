import numpy as np
import pytest

from ssm_jax.data import draw_defect, get_source
from ssm_jax.data.synthetic import DEFECT_TYPES, TEXTURES, synthetic_source


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_draw_defect_changes_pixels_under_its_mask(kind):
    image = np.full((64, 64, 3), 128, np.uint8)
    out, mask, got = draw_defect(image, np.random.default_rng(0), kind)
    assert got == kind and mask.shape == (64, 64) and 0 < mask.sum() < 64 * 64 / 2
    changed = np.abs(out.astype(int) - image).sum(-1) > 0
    assert changed[mask > 0].mean() > 0.9


def test_source_is_seeded_and_masks_match_labels():
    kw = dict(num_train=4, num_test=8, image_size=32, bases=("brick", "elpv"))
    test = get_source("synthetic", None, "test", **kw)
    assert len(test) == 8 and test.labels.sum() == 4
    assert set(get_source("synthetic", None, "train", **kw).labels) == {0}
    for r in test:
        a, b = test.load(r), get_source("synthetic", None, "test", **kw).load(r)
        assert (a["image"] == b["image"]).all() and a["image"].shape == (32, 32, 3)
        assert (a["mask"].sum() > 0) == bool(r.label) and a["has_mask"]
    with pytest.raises(ValueError, match="unknown synthetic bases"):
        get_source("synthetic", None, "test", bases=("marble",))


@pytest.mark.parametrize("bad", [("scratch", "dent"), ()])
def test_unknown_defect_types_are_refused_up_front(bad):
    with pytest.raises(ValueError, match=r"synthetic defect_types .*expected one or more of \['scratch'"):
        synthetic_source(split="test", bases=TEXTURES[:1], num_test=4, defect_types=bad)
