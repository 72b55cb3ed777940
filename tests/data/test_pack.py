"""Packing: the unpacked zip is a root the same loader reads, with the same records and, at the packed size,
the same decoded uint8 pixels and binary masks; metadata copied byte for byte; one-line CLI errors."""

import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from ssm_jax.data import elpv, get_source, loader_options, pack, replicas
from ssm_jax.data.images import load_image

SIZE = 12  # replicas are 16 x 16: every image is resized


def _records(source, root):
    return [pack._key(r, root) for r in source]


def _check_same(dataset, root, packed_root, size):
    """Same records per split and, decoded at ``size``, identical images and masks."""
    for split in pack.SPLITS[dataset]:
        original, packed = get_source(dataset, root, split), get_source(dataset, packed_root, split)
        assert len(original) > 0 and _records(packed, packed_root) == _records(original, root)
        for a, b in zip(original, packed):
            ex_a, ex_b = original.load(a, size), packed.load(b, size)
            np.testing.assert_array_equal(ex_b["image"], ex_a["image"])
            assert ex_b["image"].shape == (size, size, 3) and packed.load(b)["image"].shape == (size, size, 3)
            if "mask" in ex_a:
                np.testing.assert_array_equal(ex_b["mask"], ex_a["mask"])
                assert ex_b["has_mask"] == ex_a["has_mask"]


@pytest.mark.parametrize("dataset,fmt", [(d, "png") for d in ("mvtec", "visa", "realiad", "mvtec3d", "mt", "neu",
                                                                "gc10", "folder")] + [("mvtec", "webp")])
def test_replica_round_trip(dataset, fmt, replica_root, tmp_path):
    root = os.path.join(replica_root, dataset)
    out = str(tmp_path / "packed.zip")
    n = pack.pack(dataset, root, SIZE, out, progress=False, fmt=fmt)
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert len(infos) == n and all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    packed_root = pack.unpack(out, str(tmp_path / "unpacked"))
    assert packed_root == str(tmp_path / "unpacked")
    _check_same(dataset, root, packed_root, SIZE)
    assert pack.verify(dataset, root, out) == {s: len(get_source(dataset, root, s)) for s in pack.SPLITS[dataset]}
    for r in get_source(dataset, packed_root, pack.SPLITS[dataset][-1]):
        if r.mask_path is not None:
            with Image.open(r.mask_path) as m:
                assert m.size == (SIZE, SIZE) and set(np.unique(np.asarray(m.convert("L")))) <= {0, 255}
                assert m.mode == "L" or fmt == "webp"  # WebP has no grayscale mode; it decodes as RGB


def test_modes_and_metadata(replica_root, tmp_path):
    out = str(tmp_path / "visa.zip")
    root = os.path.join(replica_root, "visa")
    pack.pack("visa", root, SIZE, out, progress=False)
    packed_root = pack.unpack(out, str(tmp_path / "visa"))
    csv = os.path.join("split_csv", "1cls.csv")
    with open(os.path.join(root, csv), "rb") as a, open(os.path.join(packed_root, csv), "rb") as b:
        assert a.read() == b.read()
    image = get_source("visa", packed_root, "test")[0].path
    assert image.endswith(".JPG")  # name kept, content PNG, colour kept
    with Image.open(image) as img:
        assert img.format == "PNG" and img.mode == "RGB"
    linked = str(tmp_path / "linked")  # split_csv shared between copies through a link: packed as the loader reads it
    shutil.copytree(root, linked, ignore=shutil.ignore_patterns("split_csv"))
    os.symlink(os.path.join(root, "split_csv"), os.path.join(linked, "split_csv"))
    assert csv in pack.dataset_files("visa", linked)[2]
    gc10 = str(tmp_path / "gc10.zip")
    pack.pack("gc10", os.path.join(replica_root, "gc10"), SIZE, gc10, progress=False)
    with zipfile.ZipFile(gc10) as zf, Image.open(zf.open(zf.namelist()[0])) as img:
        assert img.mode == "L"  # grayscale stays grayscale


def test_elpv_default_root(tmp_path, monkeypatch, capsys):
    """elpv without --root packs the package folder (here a small replica of its labels.csv + images/)."""
    root = replicas.write_replica("elpv", str(tmp_path / "src"), per_class=2)
    monkeypatch.setattr(elpv, "package_root", lambda: root)
    out = str(tmp_path / "elpv.zip")
    pack.main(["--dataset", "elpv", "--size", "10", "--out", out, "--verify"])
    printed = capsys.readouterr().out
    assert "MiB" in printed and "verified: all 16 records" in printed
    packed_root = pack.unpack(out, str(tmp_path / "unpacked"))
    assert sorted(os.listdir(packed_root)) == ["images", "labels.csv"]
    for dataset in ("elpv", "elpv_ad"):
        _check_same(dataset, root, packed_root, 10)
    with Image.open(os.path.join(packed_root, "images", "cell0001.png")) as img:
        assert img.mode == "L" and img.size == (10, 10)
    again = str(tmp_path / "again.zip")
    pack.pack("elpv", None, 10, again, progress=False)
    with open(out, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()  # deterministic bytes
    swapped = str(tmp_path / "swapped.zip")  # the cell types exchanged: the split's records no longer match
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(swapped, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "labels.csv":
                data = data.replace(b"mono", b"tmp").replace(b"poly", b"mono").replace(b"tmp", b"poly")
            dst.writestr(name, data)
    with pytest.raises(ValueError, match="packed 'all' split differs"):
        pack.verify("elpv", root, swapped)


def test_packed_image_matches_pipeline_for_other_modes(tmp_path):
    """16-bit grayscale, palette and RGBA files: the packed PNG decodes to the pipeline's pixels."""
    rng = np.random.default_rng(0)
    cases = {"i16": Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)),
             "p": Image.fromarray(rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)).convert("P"),
             "rgba": Image.fromarray(rng.integers(0, 255, (20, 20, 4)).astype(np.uint8))}
    for name, img in cases.items():
        path, packed = str(tmp_path / f"{name}.png"), str(tmp_path / f"packed_{name}.png")
        img.save(path)
        with open(packed, "wb") as f:
            f.write(pack.packed_image(path, 9))
        np.testing.assert_array_equal(load_image(packed, 9), load_image(path, 9))
        np.testing.assert_array_equal(load_image(packed), load_image(path, 9))


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "nope", "--size", "16"], "unknown dataset 'nope'"),
    (["--dataset", "mvtec", "--size", "16"], "needs --root"),
    (["--dataset", "mvtec", "--root", "/no/such/dir", "--size", "16"], "'/no/such/dir' not found"),
    (["--dataset", "elpv", "--size", "4"], "--size 4 is too small"),
])
def test_cli_errors(argv, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        pack.main(argv + ["--out", str(tmp_path / "x.zip")])
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "x.zip")


def test_corrupt_image_leaves_no_zip(replica, tmp_path):
    root = replica("mvtec")
    with open(os.path.join(root, "bottle", "train", "good", "000.png"), "wb") as f:
        f.write(b"not a png")
    out = tmp_path / "x.zip"
    with pytest.raises(SystemExit, match="cannot decode image"):
        pack.main(["--dataset", "mvtec", "--root", root, "--size", "8", "--out", str(out)])
    assert not out.exists()


def test_loader_options_on_the_command_line(replica, tmp_path, capsys):
    """Real-IAD ships its images at several resolutions, one folder each; the loader's option picks one."""
    root = replica("realiad")
    os.rename(os.path.join(root, "realiad_1024"), os.path.join(root, "realiad_256"))
    out = str(tmp_path / "realiad.zip")
    pack.main(["--dataset", "realiad", "--root", root, "--source", "image_dir=realiad_256", "--size", "16",
               "--out", out, "--verify"])
    assert "verified: train" in capsys.readouterr().out
    assert get_source("realiad", pack.unpack(out, str(tmp_path / "r")), "test", image_dir="realiad_256")
    assert pack.source_option("categories=['pcb']") == ("categories", ["pcb"])


def test_unknown_loader_option_is_named_with_the_valid_ones(replica, tmp_path):
    with pytest.raises(SystemExit) as e:
        pack.main(["--dataset", "folder", "--root", replica("folder"), "--source", "bogus=1", "--size", "8",
                   "--out", str(tmp_path / "x.zip")])
    message = str(e.value)
    assert message.startswith("error: unknown --source key 'bogus' for dataset 'folder'; expected one of ")
    assert all(repr(option) in message for option in loader_options("folder")) and "\n" not in message


def test_loader_advice_is_given_in_pack_syntax(replica, tmp_path, capsys):
    """The loaders are train.py's too: advice they give as --config.data.source.KEY=VALUE is pack's --source
    KEY=VALUE, and following it works."""
    root = replica("mvtec")
    os.remove(os.path.join(root, "bottle", "ground_truth", "crack", "001_mask.png"))
    argv = ["--dataset", "mvtec", "--root", root, "--size", "8", "--out", str(tmp_path / "x.zip")]
    with pytest.raises(SystemExit) as e:
        pack.main(argv)
    assert "has no mask" in str(e.value) and "--config" not in str(e.value)
    assert "(or pass require_masks=False: --source require_masks=False)" in str(e.value)
    pack.main(argv + ["--source", "require_masks=False", "--verify"])
    assert "verified: train" in capsys.readouterr().out


def test_root_with_tilde_is_expanded(replica, tmp_path, monkeypatch, capsys):
    """The shell leaves ~ as is in --root=~/x; pack expands it, as train.py does."""
    root = replica("folder")
    monkeypatch.setenv("HOME", os.path.dirname(root))
    pack.main(["--dataset", "folder", f"--root=~/{os.path.basename(root)}", "--size", "8",
               "--out", str(tmp_path / "x.zip"), "--verify"])
    assert "verified: all" in capsys.readouterr().out


def test_webp_says_the_files_keep_their_names(replica, tmp_path, capsys):
    """WebP data under .png names opens in this project, not in a viewer that goes by the name: pack says so."""
    root = replica("folder")
    for fmt, said in (("png", False), ("webp", True)):
        pack.main(["--dataset", "folder", "--root", root, "--size", "8", "--out", str(tmp_path / f"{fmt}.zip"),
                   "--format", fmt])
        assert ("lossless WebP under their own names" in capsys.readouterr().out) == said
    with zipfile.ZipFile(tmp_path / "webp.zip") as zf:
        name = next(n for n in zf.namelist() if n.endswith(".png"))
        assert zf.read(name)[8:12] == b"WEBP"


@pytest.mark.parametrize("dataset", sorted(pack.SPLITS))
def test_missing_root_says_what_the_loader_expected(dataset, tmp_path):
    """The loader describes the layout it expected at the root; pack adds that the root is --root's."""
    missing = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as e:
        pack.main(["--dataset", dataset, "--root", missing, "--size", "8", "--out", str(tmp_path / "x.zip")])
    message = str(e.value)
    assert message.startswith("error: directory ") and " not found; expected " in message
    assert f"(--root {missing!r} is not a directory: pass --root DIR, the folder the {dataset!r} loader reads)" \
        in message


def test_camera_bit_depth_is_applied_when_packing(replica, tmp_path):
    """``--bit-depth 12``: a 12-bit frame in a 16-bit file is packed as the pipeline reads it with data.bit_depth=12
    (the packed copy is 8-bit, read with the default); a bit depth below 8 is refused and leaves no zip."""
    root = replica("folder")
    frame = sorted(get_source("folder", root, "all"), key=lambda r: r.path)[0].path
    mono12 = np.random.default_rng(0).integers(0, 4096, Image.open(frame).size[::-1], dtype=np.uint16)
    Image.fromarray(mono12).save(frame)
    out = str(tmp_path / "parts.zip")
    pack.main(["--dataset", "folder", "--root", root, "--size", "12", "--out", out, "--bit-depth", "12"])
    packed = os.path.join(pack.unpack(out, str(tmp_path / "unpacked")), os.path.relpath(frame, root))
    np.testing.assert_array_equal(load_image(packed), load_image(frame, 12, bit_depth=12))
    assert load_image(packed).max() > load_image(frame, 12).max() * 8  # read by the 16-bit range it is near black
    with pytest.raises(SystemExit, match="error: bit_depth=4; expected 0"):
        pack.main(["--dataset", "folder", "--root", root, "--size", "12", "--out", str(tmp_path / "x.zip"),
                   "--bit-depth", "4"])
    assert not (tmp_path / "x.zip").exists()
