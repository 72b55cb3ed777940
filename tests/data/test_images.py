import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssm_jax.data import CorruptImageError, get_source, images, load_image, make_pipeline
from ssm_jax.data.common import Record, Source
from ssm_jax.data.images import BitDepthError, image_from_array, image_size, load_mask, rgb_pixels


def _save(path, arr, mode):
    Image.fromarray(arr, mode).save(path)
    return str(path)


def test_masks_shrink_as_mambaads_evaluation_resizes_them(tmp_path):
    """ADer: 0/255, PIL bilinear, defective above half. A 1-px line at 1024 px is a quarter-covered row at 256 px
    (dropped; nearest-neighbour sampling, which reads source rows 2, 6, ..., kept it whole); an aligned 16 x 16
    block is an exact 4 x 4 block; a VisA mask (values 1) counts as 255."""
    mask = np.zeros((1024, 1024), np.uint8)
    mask[2, 100:900] = 255
    mask[512:528, 512:528] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    small = load_mask(str(tmp_path / "m.png"), 256)
    assert small.shape == (256, 256) and small.dtype == np.float32
    assert small[:4].sum() == 0
    block = np.zeros((256, 256), np.float32)
    block[128:132, 128:132] = 1
    np.testing.assert_array_equal(small, block)
    np.testing.assert_array_equal(load_mask(str(tmp_path / "m.png")), mask > 0)  # no resize: as stored


def test_masks_drawn_on_a_transparent_layer_are_read_by_their_alpha(tmp_path):
    """An annotation tool's RGBA export: the defect in alpha over black or white, or opaque red over transparent
    black, gives the defect; an opaque mask (alpha constant) is read by its colour as before."""
    defect = np.zeros((8, 8), bool)
    defect[2:5, 3:6] = True
    rgba = {"over_black": np.dstack([np.zeros((8, 8, 3), np.uint8), defect * np.uint8(255)]),
            "over_white": np.dstack([np.full((8, 8, 3), 255, np.uint8), defect * np.uint8(255)]),
            "red": np.dstack([defect[..., None] * np.array([255, 0, 0], np.uint8), defect * np.uint8(255)]),
            "opaque": np.dstack([np.repeat(defect[..., None] * np.uint8(255), 3, -1), np.full((8, 8), 255, np.uint8)])}
    for name, pixels in rgba.items():
        Image.fromarray(pixels, "RGBA").save(tmp_path / f"{name}.png")
        np.testing.assert_array_equal(load_mask(str(tmp_path / f"{name}.png")), defect, err_msg=name)
    Image.fromarray(np.dstack([defect * np.uint8(255), defect * np.uint8(255)]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_mask(str(tmp_path / "la.png")), defect)


def test_palette_masks_take_black_as_background_wherever_the_palette_lists_it(tmp_path):
    """VOC-style (index 0 black), black at index 1 under a white index 0, and a palette without black in use (index
    0 the background) all read as the drawing looks."""
    defect = np.zeros((6, 7), bool)
    defect[1:4, 2:5] = True
    for name, colours, background, drawn in (("voc", [0, 0, 0, 128, 0, 0], 0, 1),
                                             ("black_at_1", [255, 255, 255, 0, 0, 0], 1, 0),
                                             ("no_black", [255, 255, 255, 200, 0, 0], 0, 1)):
        img = Image.fromarray(np.where(defect, drawn, background).astype(np.uint8), "P")
        img.putpalette(colours + [0, 0, 0] * (256 - len(colours) // 3))  # unused entries black, as Pillow pads
        img.save(tmp_path / f"{name}.png")
        np.testing.assert_array_equal(load_mask(str(tmp_path / f"{name}.png")), defect, err_msg=name)


def test_grayscale_and_rgba_follow_the_rule(tmp_path):
    gray = _save(tmp_path / "g.png", np.full((4, 5), 77, np.uint8), "L")
    rgba = _save(tmp_path / "a.png", np.dstack([np.full((4, 5, 3), 9, np.uint8), np.zeros((4, 5), np.uint8)]), "RGBA")
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 5), 0x8000, np.uint16)).save(g16)
    assert load_image(gray).shape == (4, 5, 3) and (load_image(gray) == 77).all()
    assert (load_image(rgba) == 9).all()  # alpha dropped, not composited
    assert (load_image(str(g16)) == 128).all()  # 16-bit scaled to 8 bits
    assert load_image(gray, size=8).shape == (8, 8, 3)


def test_signed_float_and_huge_images_are_refused_by_name(tmp_path, monkeypatch):
    """Signed and floating-point TIFFs have no range to scale to 8 bits (they decoded black before); an image over
    PIL's pixel limit is named rather than raising PIL's own error."""
    ramp = np.linspace(0, 30000, 20).reshape(4, 5)
    for name, dtype in (("s16.tif", np.int16), ("f32.tif", np.float32)):
        Image.fromarray(ramp.astype(dtype)).save(tmp_path / name)
        with pytest.raises(CorruptImageError, match=rf"{name}' has signed or floating-point pixels"):
            load_image(str(tmp_path / name))
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "u16.tif")
    assert load_image(str(tmp_path / "u16.tif")).max() == 30000 >> 8
    big = _save(tmp_path / "big.png", np.zeros((40, 40), np.uint8), "L")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises above twice the limit
    for read in (load_image, image_size):
        with pytest.raises(CorruptImageError, match=r"big.png' is larger than PIL's limit of 100 pixels"):
            read(big)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_strict_rejects_non_rgb(tmp_path, mode):
    path = _save(tmp_path / "x.png", np.zeros((4, 4) if mode == "L" else (4, 4, 4), np.uint8), mode)
    with pytest.raises(ValueError, match=rf"x.png' has mode '{mode}'; expected an RGB image"):
        load_image(path, strict=True)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiffs_with_an_orientation_read_as_shown_or_are_refused(tmp_path, orientation):
    """A TIFF with EXIF orientation: colour reads turned as viewers show it, with that size; grayscale either so or,
    where PIL scrambles it (Pillow 13 for orientation 5-8), refused by name, never scrambled pixels."""
    ramp = np.tile(np.linspace(0, 255, 6).astype(np.uint8), (4, 1))
    turn = {3: 2, 6: -1, 8: 1}[orientation]  # quarter turns counter-clockwise, np.rot90's
    exif = Image.Exif()
    exif[0x0112] = orientation
    for name, stored in (("gray", ramp), ("rgb", np.dstack([ramp, 255 - ramp, ramp // 2]))):
        path = str(tmp_path / f"{name}.tif")
        Image.fromarray(stored).save(path, exif=exif)
        shown = np.rot90(stored, turn)
        try:
            pixels = load_image(path)
        except CorruptImageError as err:
            assert name == "gray" and "grayscale TIFF with EXIF orientation" in str(err)
            continue
        np.testing.assert_array_equal(pixels if name == "rgb" else pixels[..., 0], shown, err_msg=name)
        assert image_size(path) == (shown.shape[1], shown.shape[0]), name


def test_exif_orientation_is_applied_to_images_masks_and_their_sizes(tmp_path):
    """A phone photo stored 6 wide and 4 high with orientation 6 (rotate 90 degrees clockwise to view) is read 4 wide
    and 6 high, as viewers show it; its mask, drawn on what they show, lines up."""
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, :, 0] = 255  # the stored top row: the right-hand column once turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif.tobytes())
    shown = np.rot90(stored, -1)  # clockwise
    assert image_size(str(tmp_path / "photo.png")) == (4, 6)
    np.testing.assert_array_equal(load_image(str(tmp_path / "photo.png")), shown)
    Image.fromarray((shown[..., 0] > 0).astype(np.uint8) * 255).save(tmp_path / "photo_mask.png")
    np.testing.assert_array_equal(load_mask(str(tmp_path / "photo_mask.png")), shown[..., 0] > 0)
    Image.fromarray(stored[..., 0], "L").save(tmp_path / "tagged_mask.png", exif=exif.tobytes())
    np.testing.assert_array_equal(load_mask(str(tmp_path / "tagged_mask.png")), shown[..., 0] > 0)


def test_pictures_leave_out_what_cannot_be_read_again(tmp_path):
    """Source.load_shown, which every results picture reads its images through: a file moved or damaged since the
    results were written is left out with a warning naming the picture and the file; the rest keep their order."""
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(np.full((6, 8), 40 * i, np.uint8)).save(paths[-1])
    source = Source([Record(str(p), 0) for p in paths], ["good"])
    paths[1].unlink()
    paths[3].write_bytes(b"\x89PNG\r\n")
    with pytest.warns(UserWarning) as caught:
        kept, shown = source.load_shown([3, 2, 1, 0], "mistakes.png")
    assert kept == [1, 3] and [int(img[0, 0, 0]) for img in shown] == [80, 0]
    assert [str(w.message).split(":")[0] for w in caught] == [f"mistakes.png leaves out {paths[3]}",
                                                             f"mistakes.png leaves out {paths[1]}"]
    assert shown[0].shape == (6, 8, 3) and source.load_shown([0], "a.png", 4)[1][0].shape == (4, 4, 3)


def test_corrupt_and_truncated_files_name_the_path(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    good = _save(tmp_path / "t.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), "RGB")
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        with pytest.raises(CorruptImageError, match=os.path.basename(path)):
            load_image(str(path))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))


def _corrupt_one(root):
    path = os.path.join(root, "b", "001.png")
    with open(path, "r+b") as f:
        f.truncate(60)
    return path


def test_pipeline_raises_or_skips_corrupt(replica):
    root = replica("folder")
    path = _corrupt_one(root)
    src = get_source("folder", root, "all")
    kw = dict(batch_size=4, image_size=8, train=False, shard_index=0, shard_count=1)
    with pytest.raises(CorruptImageError, match="b/001.png"):
        list(make_pipeline(src, **kw))
    with pytest.warns(UserWarning, match=r"skipped 1 corrupt image\(s\).*b/001.png") as said:
        batches = list(make_pipeline(src, skip_corrupt=True, num_threads=1, **kw))
    assert {Path(w.filename).name for w in said if "skip_corrupt" in str(w.message)} == {"pipeline.py"}  # not grain's
    with pytest.warns(UserWarning) as said:  # three epochs without the cache read the file three times
        list(make_pipeline(src, skip_corrupt=True, num_threads=1, cache_bytes=0, **{**kw, "train": True,
                                                                                      "num_epochs": 3}))
    assert [str(w.message).split(";")[0] for w in said if "skip_corrupt" in str(w.message)] == [
        "skip_corrupt: skipped 1 corrupt image(s) so far"]  # said once per file, not per reading
    assert sum(len(b["label"]) for b in batches) == len(src) - 1
    skipped = src.records.index(next(r for r in src if r.path == path))
    assert skipped not in np.concatenate([b["index"] for b in batches])


def test_skip_corrupt_also_skips_unusable_pixels_and_mismatched_masks(replica):
    """A floating-point TIFF decodes, but has no range to scale; a mask of another size cannot be scored: both are
    files skip_corrupt goes on without, not errors that stop a whole folder."""
    root = replica("folder")
    Image.fromarray(np.ones((8, 8), np.float32)).save(os.path.join(root, "a", "float.tif"))
    src = get_source("folder", root, "all")
    kw = dict(batch_size=4, image_size=8, train=False, shard_index=0, shard_count=1, num_threads=1)
    with pytest.warns(UserWarning, match=r"skipped 1 corrupt image\(s\).*float.tif' has signed or floating-point"):
        assert sum(len(b["label"]) for b in make_pipeline(src, skip_corrupt=True, **kw)) == len(src) - 1
    root = replica("mvtec")
    Image.new("L", (7, 7)).save(os.path.join(root, "bottle", "ground_truth", "broken", "000_mask.png"))
    src = get_source("mvtec", root, "test", categories="bottle")
    with pytest.warns(UserWarning, match=r"000_mask.png' is 7x7 but its image"):
        assert sum(len(b["label"]) for b in make_pipeline(src, skip_corrupt=True, **kw)) == len(src) - 1


def test_training_skips_corrupt_images_in_full_batches_and_resumes(replica):
    root = replica("folder")
    path = _corrupt_one(root)
    src = get_source("folder", root, "all")
    kw = dict(batch_size=2, image_size=8, train=True, shard_index=0, shard_count=1, num_epochs=1, num_threads=1)
    with pytest.raises(CorruptImageError, match="b/001.png"):
        list(make_pipeline(src, **kw))
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        batches = list(make_pipeline(src, skip_corrupt=True, **kw))
        it = iter(make_pipeline(src, skip_corrupt=True, **kw))
        first = next(it)["index"].tolist()
        state = it.get_state()
        resumed = iter(make_pipeline(src, skip_corrupt=True, **kw))
        resumed.set_state(state)
        rest = [b["index"].tolist() for b in resumed]
    skipped = src.records.index(next(r for r in src if r.path == path))
    assert [len(b["index"]) for b in batches] == [2] * 4  # 8 of 9 readable, in full batches
    assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == sorted(set(range(9)) - {skipped})
    assert [first] + rest == [b["index"].tolist() for b in batches]


def test_a_run_saved_without_skip_corrupt_resumes_with_it(replica):
    """A corrupt file stops a run; the error says how to go on; the rerun with skip_corrupt starts at the batch the
    checkpoint names (the same batches as before when nothing in them is corrupt)."""
    root = replica("folder")
    src = get_source("folder", root, "all")
    kw = dict(batch_size=2, image_size=8, train=True, shard_index=0, shard_count=1, num_epochs=1, num_threads=1,
              flips=("horizontal",))
    fixed = iter(make_pipeline(src, **kw))
    seen = [next(fixed) for _ in range(2)]
    state = fixed.get_state()
    rest = [b["index"].tolist() for b in fixed]
    fixed.close()
    resumed = iter(make_pipeline(src, skip_corrupt=True, **kw))
    with pytest.warns(UserWarning, match="saved without skip_corrupt: reading its first 2 batches again"):
        resumed.set_state(state)
    assert [b["index"].tolist() for b in resumed][: len(rest)] == rest
    assert seen[0]["index"].tolist() != rest[0]
    single = iter(make_pipeline(src, skip_corrupt=True, **{**kw, "batch_size": 1}))  # and with another batch size
    with pytest.warns(UserWarning, match="reading its first 4 batches again"):
        single.set_state(state)
    assert [i for b in single for i in b["index"].tolist()][: 2 * len(rest)] == [i for b in rest for i in b]
    _corrupt_one(root)
    with pytest.raises(CorruptImageError, match=r"b/001.png.*--config.data.skip_corrupt=True"):
        list(make_pipeline(get_source("folder", root, "all"), **kw))


@pytest.mark.parametrize("side", [300, 64, 17])
def test_grayscale_resized_before_it_becomes_rgb_gives_the_same_pixels(side):
    """rgb_pixels resizes grayscale (8-bit, bilevel, with alpha, 16-bit) before replicating it to three channels:
    exactly PIL's RGB-first resize, down (1024 x 1280 camera frames) and up."""
    rng = np.random.default_rng(side)
    gray = rng.integers(0, 256, (1024, 1280) if side == 300 else (40, 52), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, gray.shape, dtype=np.uint16)
    alpha = rng.integers(0, 256, gray.shape, dtype=np.uint8)
    cases = [(Image.fromarray(gray), gray), (Image.fromarray(gray > 127), np.where(gray > 127, 255, 0)),
             (Image.fromarray(np.stack([gray, alpha], -1), "LA"), gray),
             (Image.fromarray(gray16), gray16 >> 8)]
    for img, eight_bits in cases:
        rgb_first = Image.fromarray(np.repeat(eight_bits.astype(np.uint8)[..., None], 3, -1), "RGB")
        expected = np.asarray(rgb_first.resize((side, side), Image.BILINEAR))
        np.testing.assert_array_equal(rgb_pixels(img, side), expected, err_msg=img.mode)
    assert rgb_pixels(Image.fromarray(gray), side).shape == (side, side, 3)


def test_arrays_become_the_images_their_files_decode_to(tmp_path):
    """image_from_array: grayscale 8/16-bit, (H, W, 1), RGB and RGBA pixels give what a PNG of them loads as;
    other dtypes and shapes are refused by name."""
    rng = np.random.default_rng(0)
    for pixels in (rng.integers(0, 256, (9, 7), dtype=np.uint8), rng.integers(0, 65536, (9, 7), dtype=np.uint16),
                   rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)):
        Image.fromarray(pixels).save(tmp_path / "x.png")
        np.testing.assert_array_equal(rgb_pixels(image_from_array(pixels), 5), load_image(str(tmp_path / "x.png"), 5))
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_pixels(image_from_array(gray[..., None])), rgb_pixels(image_from_array(gray)))
    gray16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)  # a big-endian buffer (np.frombuffer of a camera's)
    np.testing.assert_array_equal(rgb_pixels(image_from_array(gray16.astype(">u2"))),
                                  rgb_pixels(image_from_array(gray16)))
    colour16 = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    np.testing.assert_array_equal(rgb_pixels(image_from_array(colour16)), (colour16 >> 8).astype(np.uint8))
    for bad, message in ((np.zeros((4, 4), np.float64), r"frame has dtype float64; .*\(a float image in \[0, 1\]"),
                         (np.zeros((4, 4), np.int64), r"dtype int64; .*\(integers of 0-255: x.astype\(np.uint8\)"),
                         (np.zeros((4, 4), bool), r"dtype bool; .*\(a mask: use"),
                         (np.zeros((4, 4, 2), np.uint8), "shape"),
                         (np.zeros(4, np.uint8), "shape"), (np.zeros((2, 4, 4, 3), np.uint8), "one image")):
        with pytest.raises(ValueError, match=message):
            image_from_array(bad, "frame")


def test_pil_images_become_what_their_files_decode_to(tmp_path):
    """A PIL image passed in memory (a Predictor's input) is read as its file: a palette image by its colours, not
    its indices; bilevel and EXIF-rotated images as decoded."""
    rng = np.random.default_rng(0)
    palette = Image.fromarray(rng.integers(0, 4, (9, 7), dtype=np.uint8), "P")
    palette.putpalette([200, 10, 10, 0, 0, 0, 10, 250, 10, 90, 90, 240] + [0] * 756)
    bilevel = Image.fromarray(rng.integers(0, 2, (9, 7), dtype=np.uint8).astype(bool))
    rotated = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    for name, img in (("palette.png", palette), ("bilevel.png", bilevel)):
        img.save(tmp_path / name)
    for name in ("palette.png", "bilevel.png", "rotated.jpg"):
        with Image.open(tmp_path / name) as img:
            np.testing.assert_array_equal(rgb_pixels(image_from_array(img), 5), load_image(str(tmp_path / name), 5),
                                          err_msg=name)
    assert rgb_pixels(image_from_array(palette))[0, 0].tolist() in ([200, 10, 10], [0, 0, 0], [10, 250, 10],
                                                                    [90, 90, 240])


def test_camera_data_of_fewer_bits_in_16_bit_files_reads_by_its_bit_depth(tmp_path, monkeypatch):
    """bit_depth b: 16-bit grayscale values >> (b - 8), clipped at 255; 0 (the file type's range) warns, once, of a
    16-bit image whose values never reach 4096, and b of values beyond b bits (turned white), each advising a new
    run where the run at hand cannot take another bit depth; 8-bit and RGB images are read as they are."""
    monkeypatch.setattr(images, "_WARNED_BITS", set())
    twelve = np.array([[0, 15, 16, 1000], [2047, 4095, 4096, 65535]], np.uint16)  # the last two: beyond 12 bits
    path = _save(tmp_path / "mono12.png", twelve[:, :2].copy(), None)
    over = _save(tmp_path / "over.png", twelve, None)
    low_message = (r"no value above 4095 .*config.data.bit_depth, e.g. 12; pack: --bit-depth 12\); bit depth is a "
                   r"training setting: .*predicting\) at the one it trained with, so a run trained at 0 needs training "
                   r"anew: train.py .*--config.data.bit_depth=12$")  # the advice eval.py can follow: it takes no other
    with pytest.warns(UserWarning, match=low_message) as low:
        np.testing.assert_array_equal(load_image(path)[..., 0], twelve[:, :2] >> 8)
    high_message = (r"values up to 65535, beyond 12-bit data \(at most 4095\), which turn white.*read those with "
                    r"bit_depth 0\); .*a run trained at 12 needs training anew: .*--config.data.bit_depth=0$")
    with pytest.warns(UserWarning, match=high_message) as high:
        np.testing.assert_array_equal(load_image(over, bit_depth=12)[..., 0], np.minimum(twelve >> 4, 255))
    assert [w.filename for w in (*low, *high)] == [__file__] * 2  # each names its caller, not the loader's internals
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(path)  # each said once per process
        load_image(over, bit_depth=12)
        np.testing.assert_array_equal(load_image(path, bit_depth=12)[..., 0], twelve[:, :2] >> 4)
        np.testing.assert_array_equal(load_image(over, bit_depth=16), load_image(over))
        gray8 = _save(tmp_path / "gray8.png", np.arange(8, dtype=np.uint8).reshape(2, 4), None)
        np.testing.assert_array_equal(load_image(gray8, bit_depth=12), load_image(gray8))
    with pytest.raises(ValueError, match="bit_depth=4; expected 0"):
        load_image(gray8, bit_depth=4)


def _png16(path, pixels):
    """A 16-bit RGB (3 channels) or grayscale-with-alpha (2) PNG written byte by byte (PIL cannot write one): IHDR,
    one unfiltered IDAT, IEND."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 2: 4}[channels], 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                + chunk(b"IEND", b""))
    return str(path)


def _tiff_rgb16(path, rgb):
    """An uncompressed little-endian 16-bit RGB TIFF of one strip, written byte by byte."""
    height, width, _ = rgb.shape
    pixels = rgb.astype("<u2").tobytes()
    tags = [(256, width), (257, height), (258, None), (259, 1), (262, 2), (273, None), (277, 3), (278, height),
            (279, len(pixels)), (284, 1)]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    entries = b""
    for tag, value in tags:
        if tag == 258:  # BitsPerSample: three SHORTs, stored after the directory
            entries += struct.pack("<HHII", tag, 3, 3, bits_at)
        elif tag in (273, 279):  # StripOffsets, StripByteCounts: LONG
            entries += struct.pack("<HHII", tag, 4, 1, bits_at + 6 if tag == 273 else value)
        else:
            entries += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I3H", 0, 16, 16, 16) + pixels)
    return str(path)


def _bmp565(path, pixels):
    """A 16-bit RGB565 BMP (5-6-5 bit fields) written byte by byte: at most 6 bits a channel, not 16."""
    height, width = pixels.shape
    stride = (width * 2 + 3) & ~3
    rows = b"".join(row.astype("<u2").tobytes().ljust(stride, b"\x00") for row in pixels[::-1])
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
    info += struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    with open(path, "wb") as f:
        f.write(b"BM" + struct.pack("<IHHI", 14 + len(info) + len(rows), 0, 0, 14 + len(info)) + info + rows)
    return str(path)


def test_sixteen_bit_colour_reads_at_the_full_range_and_arrays_of_it_by_bit_depth(tmp_path, monkeypatch):
    """16-bit colour files (PNG, TIFF) and 16-bit grayscale-with-alpha PNGs, which PIL decodes to each value's high
    byte, read at the full range and are refused by name under a bit_depth other than 16 (not as corrupt:
    skip_corrupt would drop them all); 16-bit colour arrays in memory are scaled by bit_depth as 16-bit grayscale
    files are, their alpha left out; a 16-bit-a-pixel RGB565 BMP is 8-bit colour as before."""
    monkeypatch.setattr(images, "_WARNED_BITS", set())
    rgb = np.random.default_rng(0).integers(0, 4096, (6, 5, 3)).astype(np.uint16)  # 12-bit colour data
    for path in (_png16(tmp_path / "c16.png", rgb), _tiff_rgb16(tmp_path / "c16.tif", rgb)):
        np.testing.assert_array_equal(load_image(path), rgb >> 8)
        np.testing.assert_array_equal(load_image(path, bit_depth=16), rgb >> 8)
        with pytest.raises(BitDepthError, match=r"c16\.(png|tif)' is 16-bit colour.*bit_depth=12 cannot apply") as err:
            load_image(path, bit_depth=12)
        assert not isinstance(err.value, CorruptImageError)
    gray_alpha = _png16(tmp_path / "la16.png", np.dstack([rgb[..., 0], np.full((6, 5), 65535, np.uint16)]))
    with pytest.raises(BitDepthError, match=r"la16\.png' is 16-bit grayscale with alpha"):
        load_image(gray_alpha, bit_depth=12)
    rgb565 = _bmp565(tmp_path / "rgb565.bmp", rgb[..., 0] * 16)
    np.testing.assert_array_equal(load_image(rgb565, bit_depth=12), load_image(rgb565))
    with pytest.raises(ValueError, match="bit_depth=4; expected 0"):
        image_from_array(rgb, bit_depth=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an opaque alpha of 65535 is not a value beyond 12 bits
        opaque = np.dstack([rgb, np.full((6, 5), 65535, np.uint16)])
        np.testing.assert_array_equal(rgb_pixels(image_from_array(opaque, bit_depth=12)), rgb >> 4)
    np.testing.assert_array_equal(rgb_pixels(image_from_array(rgb, bit_depth=12)), rgb >> 4)
    np.testing.assert_array_equal(rgb_pixels(image_from_array(rgb, bit_depth=16)), rgb >> 8)
    station = Source([], ["good"], bit_depth=12)  # what a Predictor reads arrays with
    np.testing.assert_array_equal(station.load_array(rgb[:5], 5), rgb[:5] >> 4)
    with pytest.warns(UserWarning, match=r"values up to 65535, beyond 12-bit data") as high:
        over = rgb.copy()
        over[0, 0, 1] = 65535
        np.testing.assert_array_equal(rgb_pixels(image_from_array(over, bit_depth=12)), np.minimum(over >> 4, 255))
    assert high[0].filename == __file__  # from an array too, the caller is named
    rgb8 = _save(tmp_path / "rgb8.png", (rgb >> 4).astype(np.uint8), None)
    np.testing.assert_array_equal(load_image(rgb8, bit_depth=12), rgb >> 4)  # 8-bit colour: as it is



def test_every_pil_plugin_is_loaded_before_any_thread_decodes():
    """Decoding threads must not import PIL's plugins lazily (a concurrent first import can leave a format
    unregistered, and a valid file then fails to open): importing the module registers every format, checked in a
    fresh interpreter, where nothing else has opened an image yet."""
    import json
    import subprocess
    import sys

    code = ("import json, PIL.Image as I; before = sorted(I.OPEN); import ssm_jax.data.images; "
            "print(json.dumps([before, sorted(I.OPEN)]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = json.loads(run.stdout)
    assert "PNG" not in before, "PIL registers PNG on import alone: this test no longer tells the change apart"
    assert {"BMP", "JPEG", "PNG", "TIFF", "WEBP"} <= set(after)
