import os
import shutil

import numpy as np
import pytest

from ssm_jax.data import gc10, get_source, mt, neu
from ssm_jax.data.common import images_below
from ssm_jax.data.images import load_image, load_mask

from .conftest import PER_CLASS


@pytest.mark.parametrize("name,reg,num_classes", [
    ("folder", "folder", 3), ("aluminum", "aluminum", 4), ("gc10", "gc10", 10), ("neu", "neu", 6),
    ("neu_folders", "neu", 6), ("mt", "mt", 6)])
def test_replica_counts_labels_and_split(replica_root, name, reg, num_classes):
    root = os.path.join(replica_root, name)
    every = get_source(reg, root, "all")
    assert len(every) == PER_CLASS * num_classes and len(every.class_names) == num_classes
    assert np.bincount(every.labels).tolist() == [PER_CLASS] * num_classes
    assert all(every.class_names[r.label] == r.category for r in every.records)
    train, test = get_source(reg, root, "train"), get_source(reg, root, "test")
    paths = lambda s: {r.path for r in s.records}
    assert not paths(train) & paths(test) and paths(train) | paths(test) == paths(every)
    assert paths(get_source(reg, root, "train", seed=0)) == paths(train)


def test_hidden_files_and_folders_are_neither_images_nor_classes(replica):
    root = replica("folder")
    before = [(r.path, r.label) for r in get_source("folder", root, "all").records]
    for name in sorted(os.listdir(root)):
        for f in os.listdir(os.path.join(root, name)):
            open(os.path.join(root, name, "._" + f), "wb").close()  # macOS resource forks
    for hidden in ("__MACOSX", ".ipynb_checkpoints"):
        os.makedirs(os.path.join(root, hidden))
    assert [(r.path, r.label) for r in get_source("folder", root, "all").records] == before


def test_class_names_follow_the_layout(replica_root):
    assert get_source("gc10", os.path.join(replica_root, "gc10"), "all").class_names == list(gc10.CLASS_NAMES)
    src = get_source("neu", os.path.join(replica_root, "neu"), "all")
    assert src.class_names == list(neu.CLASS_NAMES)
    assert all(os.path.basename(r.path).lower().startswith(("cr_", "in_", "pa_", "ps_", "rs_", "sc_")) for r in src)
    assert {os.path.basename(r.path).split("_")[0] for r in src if r.category == "pitted_surface"} == {"PS"}


def test_mt_masks_align_with_images(replica_root):
    src = get_source("mt", os.path.join(replica_root, "mt"), "all")
    assert src.class_names == list(mt.CLASS_NAMES)
    for r in src:
        assert os.path.splitext(r.path)[0] == os.path.splitext(r.mask_path)[0]
        assert load_mask(r.mask_path).shape == load_image(r.path).shape[:2]


def test_missing_root_names_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    for name in ("folder", "aluminum", "gc10", "neu", "mt"):
        with pytest.raises(FileNotFoundError, match="nope"):
            get_source(name, missing, "train")


def test_missing_class_folder(replica):
    root = replica("gc10")
    for f in os.listdir(os.path.join(root, "3")):
        os.remove(os.path.join(root, "3", f))
    os.rmdir(os.path.join(root, "3"))
    with pytest.raises(FileNotFoundError, match=r"gc10/3"):
        get_source("gc10", root, "train")


def test_empty_class_folder(replica):
    root = replica("aluminum")
    cls = os.path.join(root, "dent")
    for f in os.listdir(cls):
        os.remove(os.path.join(cls, f))
    with pytest.raises(ValueError, match=r"aluminum/dent.*no images"):
        get_source("aluminum", root, "train")


def test_images_in_a_class_folders_subfolders_are_warned_of(replica):
    """Only a folder's own images are read: a lot's subfolder inside a class folder is named with its count, hidden
    folders (a ``.thumbnails/``) are not counted."""
    root = replica("folder")
    before = len(get_source("folder", root, "all"))
    cls = os.path.join(root, sorted(os.listdir(root))[0])
    image = sorted(os.listdir(cls))[0]
    for sub in ("lot_01", os.path.join("lot_01", "rework"), ".thumbnails"):
        os.makedirs(os.path.join(cls, sub))
        shutil.copy(os.path.join(cls, image), os.path.join(cls, sub, image))
    with pytest.warns(UserWarning, match=r"2 images in its subfolders \['lot_01'\] left unread"):
        assert len(get_source("folder", root, "all")) == before


def test_mt_mask_without_image_and_image_without_mask(replica):
    root = replica("mt")
    imgs = os.path.join(root, "MT_Crack", "Imgs")
    os.remove(os.path.join(imgs, "exp2_num_0.jpg"))
    with pytest.raises(FileNotFoundError, match=r"exp2_num_0.jpg.*not found for mask .*exp2_num_0.png"):
        get_source("mt", root, "train")
    os.remove(os.path.join(imgs, "exp2_num_0.png"))
    os.remove(os.path.join(imgs, "exp2_num_1.png"))
    with pytest.raises(FileNotFoundError, match=r"exp2_num_1.png.*not found for image .*exp2_num_1.jpg"):
        get_source("mt", root, "train")


def test_neu_unknown_prefix(replica):
    root = replica("neu")
    os.rename(os.path.join(root, "Cr_1.bmp"), os.path.join(root, "Xx_1.bmp"))
    with pytest.raises(ValueError, match="Xx_1.bmp.*prefix"):
        get_source("neu", root, "train")


def test_aluminum_needs_four_classes(replica):
    root = replica("folder")
    with pytest.raises(ValueError, match="expected 4 class folders"):
        get_source("aluminum", root, "train")


def test_images_below_finds_every_image_of_a_tree_but_hidden_ones(tmp_path):
    """What --predict_dir reads and the subfolder warning counts: images at any depth, sorted, none under a hidden
    folder or hidden themselves, no other files."""
    for name in ("b.png", "a/x.JPG", "a/deep/y.tif", ".cache/z.png", "a/.w.png", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert images_below(str(tmp_path)) == [str(tmp_path / n) for n in ("a/deep/y.tif", "a/x.JPG", "b.png")]
