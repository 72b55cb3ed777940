import dataclasses
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from ssm_jax.data import get_source, load_xyz
from ssm_jax.data.images import load_image, load_mask

from .conftest import PER_CLASS

# (registry name, categories in the replica, train count, test count, anomalous test count) per category
CASES = [("mvtec", ("bottle", "grid"), PER_CLASS, 3 * PER_CLASS, 2 * PER_CLASS),
         ("visa", ("candle", "pcb1"), PER_CLASS, 2 * PER_CLASS, PER_CLASS),
         ("realiad", ("audiojack", "pcb"), PER_CLASS, 2 * PER_CLASS, PER_CLASS),
         ("mvtec3d", ("bagel", "foam"), PER_CLASS, 2 * PER_CLASS, PER_CLASS)]


@pytest.mark.parametrize("name,categories,n_train,n_test,n_bad", CASES)
def test_replica_counts_masks_and_categories(replica_root, name, categories, n_train, n_test, n_bad):
    root = os.path.join(replica_root, name)
    train, test = get_source(name, root, "train"), get_source(name, root, "test")
    assert len(train) == n_train * len(categories) and set(train.labels) == {0}
    assert len(test) == n_test * len(categories) and test.labels.sum() == n_bad * len(categories)
    assert sorted({r.category for r in test}) == sorted(categories)
    for r in test:
        assert (r.mask_path is not None) == bool(r.label) and (r.defect == "good") == (not r.label)
        if r.label:
            ex = test.load(r)
            assert ex["mask"].shape == ex["image"].shape[:2] and ex["mask"].sum() > 0 and ex["has_mask"]
    single = get_source(name, root, "test", categories=categories[0])
    assert {r.category for r in single} == {categories[0]} and len(single) == n_test


def test_mask_stems_match(replica_root):
    for r in get_source("mvtec", os.path.join(replica_root, "mvtec"), "test"):
        if r.label:
            assert os.path.basename(r.mask_path) == os.path.splitext(os.path.basename(r.path))[0] + "_mask.png"
            assert r.mask_path.split(os.sep)[-2] == r.defect


def test_unknown_category(replica_root):
    with pytest.raises(FileNotFoundError, match="'cable'.*available"):
        get_source("mvtec", os.path.join(replica_root, "mvtec"), "train", categories="cable")


@pytest.mark.parametrize("name", ["mvtec", "visa", "realiad", "mvtec3d"])
def test_missing_root(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_source(name, str(tmp_path / "nowhere"), "test")


@pytest.mark.parametrize("name,expected", [("mvtec", "one folder per category, each with train/good/ and test/"),
                                           ("mvtec3d", "one folder per category, each with train/, validation/")])
def test_an_empty_root_says_what_a_category_looks_like(tmp_path, name, expected):
    with pytest.raises(ValueError, match=rf"no .* categories found under .*; expected {re.escape(expected)}"):
        get_source(name, str(tmp_path), "test")


def test_mvtec_image_without_mask_and_mask_without_image(replica):
    root = replica("mvtec")
    os.remove(os.path.join(root, "grid", "ground_truth", "crack", "001_mask.png"))
    with pytest.raises(FileNotFoundError, match=r"test/crack/001.png' has no mask; expected .*001_mask.png"):
        get_source("mvtec", root, "test")
    os.remove(os.path.join(root, "grid", "test", "crack", "001.png"))
    os.remove(os.path.join(root, "grid", "test", "crack", "002.png"))
    with pytest.raises(FileNotFoundError, match=r"002_mask.png' has no image"):
        get_source("mvtec", root, "test")


def test_own_parts_without_masks_are_scored_at_image_level(replica):
    """``require_masks=False`` (configs/mambaad_folder.py): a defect folder without ground truth, or one image without
    its mask, is an anomalous image annotated at image level only; the masks present are still used and checked."""
    root = replica("mvtec")
    shutil.rmtree(os.path.join(root, "grid", "ground_truth", "crack"))
    os.remove(os.path.join(root, "bottle", "ground_truth", "broken", "000_mask.png"))
    with pytest.raises(FileNotFoundError, match=r"bottle/test/broken/000.png' has no mask; .*require_masks=False"):
        get_source("mvtec", root, "test")
    test = get_source("mvtec", root, "test", require_masks=False)
    unmasked = sorted(os.path.relpath(r.path, root) for r in test if r.label and r.mask_path is None)
    assert unmasked == [os.path.join("bottle", "test", "broken", "000.png")] + [
        os.path.join("grid", "test", "crack", f"{i:03d}.png") for i in range(PER_CLASS)]
    assert test.labels.sum() == 2 * 2 * PER_CLASS  # every defective image kept
    by_path = {os.path.relpath(r.path, root): r for r in test}
    assert not test.load(by_path[unmasked[0]])["has_mask"]
    assert test.load(by_path[os.path.join("bottle", "test", "broken", "001.png")])["has_mask"]
    stray = os.path.join(root, "grid", "ground_truth", "broken", "000.png")
    shutil.copy(os.path.join(root, "grid", "ground_truth", "broken", "000_mask.png"), stray)
    with pytest.raises(ValueError, match=r"mask file '.*broken/000.png' is not named <image stem>_mask.png"):
        get_source("mvtec", root, "test", require_masks=False)
    os.rename(stray, stray[:-len(".png")] + "_mask.PNG")  # any case, as image extensions
    os.remove(os.path.join(root, "grid", "ground_truth", "broken", "000_mask.png"))
    assert len(get_source("mvtec", root, "test", require_masks=False)) == len(test)


def test_own_parts_layout_mistakes_are_named(replica):
    root = replica("mvtec")
    with pytest.raises(FileNotFoundError, match=r"bottle' holds train/ and test/ itself: it looks like one"):
        get_source("mvtec", os.path.join(root, "bottle"), "train")
    shutil.copy(os.path.join(root, "grid", "test", "crack", "000.png"),
                os.path.join(root, "grid", "test", "crack", "000.jpg"))
    with pytest.raises(ValueError, match=r"crack/000.jpg' and '.*crack/000.png' share the stem '000'"):
        get_source("mvtec", root, "test", require_masks=False)
    empty = os.path.join(root, "grid", "test", "crack")
    shutil.rmtree(empty)
    os.makedirs(os.path.join(empty, "2026-12-01"))
    Image.new("RGB", (8, 8)).save(os.path.join(empty, "2026-12-01", "000.png"))
    with pytest.raises(ValueError, match=r"crack' holds no images .*\(its subfolders \['2026-12-01'\] are not"):
        get_source("mvtec", root, "test", require_masks=False)


def test_an_empty_defect_folder_is_skipped_with_a_warning(replica):
    """A test/<defect> folder made ahead of its first defective part is passed over, said; one whose masks exist
    but whose images are gone stays an error."""
    root = replica("mvtec")
    before = get_source("mvtec", root, "test", require_masks=False)
    os.makedirs(os.path.join(root, "grid", "test", "dent"))
    with pytest.warns(UserWarning, match=r"category 'grid': .*grid/test/dent holds no images .*so it is skipped"):
        after = get_source("mvtec", root, "test")
    assert [r.path for r in after.records] == [r.path for r in before.records]
    for name in os.listdir(os.path.join(root, "grid", "test", "broken")):
        os.remove(os.path.join(root, "grid", "test", "broken", name))
    with pytest.raises(ValueError, match=r"broken' holds no images"):
        get_source("mvtec", root, "test")


def test_a_test_split_without_good_is_named_when_read(replica):
    """Normal test images under another name (test/良品 instead of test/good) are named when the split is
    read, before training, not as undefined image metrics after it."""
    root = replica("mvtec")
    os.rename(os.path.join(root, "grid", "test", "good"), os.path.join(root, "grid", "test", "良品"))
    with pytest.warns(UserWarning, match=r"category 'grid': .*grid/test has no good/ folder, so every test image "
                                         r"counts as anomalous .*normal test images go in .*grid/test/good"):
        source = get_source("mvtec", root, "test", require_masks=False)
    assert {r.category for r in source.records if r.label == 0} == {"bottle"}


def test_mvtec_empty_category(replica):
    root = replica("mvtec")
    shutil.rmtree(os.path.join(root, "bottle", "train", "good"))
    os.makedirs(os.path.join(root, "bottle", "train", "good"))
    with pytest.raises(ValueError, match=r"bottle/train/good.*no images"):
        get_source("mvtec", root, "train")
    assert len(get_source("mvtec", root, "train", categories="grid")) == PER_CLASS


def test_mask_size_mismatch(replica):
    root = replica("mvtec")
    mask = os.path.join(root, "bottle", "ground_truth", "broken", "000_mask.png")
    Image.new("L", (7, 7)).save(mask)
    src = get_source("mvtec", root, "test", categories="bottle")
    bad = next(r for r in src if r.mask_path == mask)
    with pytest.raises(ValueError, match="000_mask.png.* is 7x7 but its image .*16x16"):
        src.load(bad)
    with pytest.raises(ValueError, match="000_mask.png.* is 7x7 but its image .*16x16"):
        src.check_mask_sizes()  # what a run calls before training
    get_source("mvtec", root, "test", categories="grid").check_mask_sizes()


def test_a_mask_folder_named_otherwise_than_its_defect_is_named(replica):
    """ground_truth/scratches beside test/scratch: its masks would be passed over; the loader says so."""
    root = replica("mvtec")
    os.rename(os.path.join(root, "bottle", "ground_truth", "broken"), os.path.join(root, "bottle", "ground_truth",
                                                                                   "Broken_large"))
    with pytest.warns(UserWarning, match=r"folders \['Broken_large'\] that match no test/<defect> folder"):
        src = get_source("mvtec", root, "test", categories="bottle", require_masks=False)
    assert all(r.mask_path is None for r in src if r.defect == "broken")


def test_visa_listed_files_must_exist(replica):
    root = replica("visa")
    os.remove(os.path.join(root, "pcb1", "Data", "Masks", "Anomaly", "001.png"))
    with pytest.raises(FileNotFoundError, match=r"Masks/Anomaly/001.png.*not found for image"):
        get_source("visa", root, "test")
    os.remove(os.path.join(root, "pcb1", "Data", "Images", "Anomaly", "001.JPG"))
    with pytest.raises(FileNotFoundError):
        get_source("visa", root, "test")
    os.remove(os.path.join(root, "split_csv", "1cls.csv"))
    with pytest.raises(FileNotFoundError, match="split_csv/1cls.csv"):
        get_source("visa", root, "train")


def test_realiad_missing_image_names_its_mask(replica):
    root = replica("realiad")
    rel = "NG/AK/S0100/pcb_0100_NG_AK_C2_x"
    os.remove(os.path.join(root, "realiad_1024", "pcb", rel + ".jpg"))
    with pytest.raises(FileNotFoundError, match=rf"{rel}.jpg.*not found; its mask .*{rel}.png"):
        get_source("realiad", root, "test")
    assert len(get_source("realiad", root, "train")) == 2 * PER_CLASS


def test_realiad_resolution_folder(replica):
    root = replica("realiad")
    os.rename(os.path.join(root, "realiad_1024"), os.path.join(root, "realiad_256"))
    with pytest.raises(FileNotFoundError, match="realiad_1024"):
        get_source("realiad", root, "train")
    assert len(get_source("realiad", root, "train", image_dir="realiad_256")) == 2 * PER_CLASS


def test_mvtec3d_xyz_on_request(replica_root):
    root = os.path.join(replica_root, "mvtec3d")
    assert all(r.xyz_path is None for r in get_source("mvtec3d", root, "test"))
    src = get_source("mvtec3d", root, "validation", with_xyz=True)
    assert len(src) == 2 * PER_CLASS
    xyz = load_xyz(src[0].xyz_path)
    assert xyz.shape == (16, 16, 3) and xyz.dtype == np.float32


def test_files_a_mac_or_a_spreadsheet_adds_are_not_data(replica):
    """macOS writes ``._<name>`` resource forks beside every file on some drives and ``__MACOSX/`` into zips;
    Finder ``.DS_Store``, Jupyter ``.ipynb_checkpoints/``; Excel saves CSV with a byte-order mark. None is a
    category, an image or a meta file, and the sources read as without them."""
    expected = {}
    for name in ("mvtec", "visa", "realiad", "mvtec3d"):
        root = replica(name)
        expected[name] = [(r.path, r.label, r.mask_path) for r in get_source(name, root, "test")]
        for directory, _, files in list(os.walk(root)):
            for f in files:
                with open(os.path.join(directory, "._" + f), "wb") as out:
                    out.write(b"\x00\x05\x16\x07 AppleDouble")
            open(os.path.join(directory, ".DS_Store"), "wb").close()
        for hidden in ("__MACOSX", ".ipynb_checkpoints"):
            os.makedirs(os.path.join(root, hidden, "train", "good"))
        if name == "visa":
            csv = os.path.join(root, "split_csv", "1cls.csv")
            text = open(csv, encoding="utf-8").read()
            open(csv, "w", encoding="utf-8").write("\ufeff" + text)
        got = [(r.path, r.label, r.mask_path) for r in get_source(name, root, "test")]
        assert got == expected[name], name


def test_corrupt_realiad_meta_file_is_named(replica):
    root = replica("realiad")
    path = os.path.join(root, "realiad_jsons", "pcb.json")
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"pcb.json' is not valid UTF-8 JSON"):
        get_source("realiad", root, "test")


def test_center_crop_keeps_the_middle_of_image_and_mask_resized_larger(replica_root):
    """center_crop c: resize to size / c, keep the centre size x size (torchvision's CenterCrop offsets), both."""
    test = get_source("mvtec", os.path.join(replica_root, "mvtec"), "test")
    cropped = dataclasses.replace(test, center_crop=0.8)  # 20 -> 25 px, offset round(2.5) = 2
    record = next(r for r in test if r.label)
    ex = cropped.load(record, 20)
    np.testing.assert_array_equal(ex["image"], load_image(record.path, 25)[2:22, 2:22])
    np.testing.assert_array_equal(ex["mask"], load_mask(record.mask_path, 25)[2:22, 2:22])
    assert ex["label"] == 1 and ex["has_mask"]
    np.testing.assert_array_equal(test.load(record, 20)["image"], load_image(record.path, 20))  # 1.0: no crop
    pixels = np.asarray(Image.open(record.path).convert("RGB"))  # in memory (Predictor): resized and cropped alike
    np.testing.assert_array_equal(cropped.load_array(pixels, 20), ex["image"])
    np.testing.assert_array_equal(test.load_array(pixels, 20), load_image(record.path, 20))
