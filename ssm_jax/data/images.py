"""Image and mask decoding with PIL: one colour rule for every dataset, clear errors for bad files.

Colour rule (``strict=False``): grayscale (``L``, ``1``) is replicated to three channels; 16/32-bit
unsigned grayscale (``I;16``, ``I``) is scaled to 8 bits first, by its type's full range or, with ``bit_depth`` b,
by the camera's (values >> (b - 8), clipped: 12-bit sensor data stored in 16-bit files would otherwise load at
1/16 of its brightness, in 16 grey levels); 16-bit colour arrays in memory likewise, while 16-bit colour files,
which PIL decodes to their high bytes, are read at the full range and refused under a ``bit_depth`` other than 16;
signed and floating-point TIFFs have no such range, so they are refused by name (convert them first); palette
(``P``) images are expanded through their palette; alpha (``RGBA``, ``LA``, ``PA``) is dropped, not composited;
``CMYK``/``YCbCr`` are converted by PIL. With ``strict=True`` anything not already ``RGB`` raises.

An EXIF orientation tag (phone and some camera exports) is applied, to images and masks alike, so a file is read
as image viewers and annotation tools show it, and a mask drawn on what they show lines up with its image.
"""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL imports a format's plugin the first time it opens such a file. The pipeline decodes in several threads at once,
# and concurrent first imports can hand a thread a plugin module still being initialised (CPython gh-83065),
# whose format is not yet registered, and a valid file then fails as "cannot identify image file" (the likely
# cause of one such failure in nine full-size ELPV runs on an H100, Python 3.12). So every plugin is loaded here, once.
Image.init()

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ORIENTATION = 0x0112  # EXIF tag: 1 as stored; 5-8 transpose the stored width and height
TRANSPOSED = (5, 6, 7, 8)


class CorruptImageError(ValueError):
    """An image file that cannot be used as it is: PIL cannot open or fully decode it (unreadable, truncated, not an
    image), it is over PIL's size limit, its pixels have no fixed range (signed or floating-point), or its mask is
    of another size. ``data.skip_corrupt`` goes on without such files."""


class BitDepthError(ValueError):
    """Files that ``data.bit_depth`` cannot apply to (16 bits a channel in colour, or in grayscale with alpha). Not a
    ``CorruptImageError``: skipping every such file (``data.skip_corrupt``) would drop the whole dataset."""


def _too_large(path: str) -> CorruptImageError:
    return CorruptImageError(f"image {path!r} is larger than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} pixels (a "
                             f"guard against decompression bombs): resize it, or raise PIL.Image.MAX_IMAGE_PIXELS")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: as stored), read without decoding the pixels: PIL's PNG ``getexif`` decodes the
    whole image to look for an eXIf chunk after the pixel data, so a PNG counts only one found before it."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return img.getexif().get(ORIENTATION, 1)


def _decode(path: str, bit_depth: int = 0) -> Image.Image:
    """The file's image, EXIF orientation applied; under ``bit_depth`` a 16-bit colour file is refused
    (``_refuse_sixteen_bit_channels``)."""
    try:
        with Image.open(path) as img:
            _refuse_sixteen_bit_channels(img, path, bit_depth)
            stored = _orientation(img)
            img.load()
            _refuse_scrambled_tiff(img, path, stored)
            return ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
    except (BitDepthError, CorruptImageError):
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path!r} does not exist") from None
    except Image.DecompressionBombError as e:
        raise _too_large(path) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image {path!r} (corrupt or truncated?): {e}") from e


def _refuse_scrambled_tiff(img: Image.Image, path: str, stored: int) -> None:
    """Pillow 13 transposes a TIFF of EXIF orientation 5-8 itself while decoding it (the tag is gone afterwards),
    which comes out right in colour but scrambled for one band (grayscale 8 or 16 bits): refused, not used."""
    if img.format == "TIFF" and stored in TRANSPOSED and _orientation(img) == 1 and len(img.getbands()) == 1:
        raise CorruptImageError(f"image {path!r} is a grayscale TIFF with EXIF orientation {stored} (transposed), "
                                f"which PIL {PIL.__version__} decodes scrambled; expected it without that tag: save "
                                f"it rotated upright, or as PNG")


_SIXTEEN_BITS_DECODED_TO_8 = re.compile(r"(RGB|RGBA|RGBX|CMYK|LA);16[BLN]?")  # PIL's raw modes of such files


def _refuse_sixteen_bit_channels(img: Image.Image, path: str, bit_depth: int) -> None:
    """PIL decodes a file of 16 bits a channel in colour, or in grayscale with alpha (PNG, TIFF), to each value's
    high byte, so a ``bit_depth`` other than 16 cannot apply to it: 12-bit colour data would load at 1/16 of its
    brightness. Read from the header, before decoding."""
    rawmodes = [t.args if isinstance(t.args, str) else t.args[0] for t in img.tile if t.args]
    sixteen = [r for r in rawmodes if isinstance(r, str) and _SIXTEEN_BITS_DECODED_TO_8.fullmatch(r)]
    if bit_depth and bit_depth != 16 and sixteen:
        _require_valid_bit_depth(bit_depth)  # before it is read into the message (``to_rgb`` checks it later)
        kind = "16-bit grayscale with alpha" if sixteen[0].startswith("LA") else "16-bit colour"
        raise BitDepthError(f"image {path!r} is {kind}, which PIL decodes to 8 bits (each value's high byte), so "
                            f"bit_depth={bit_depth} cannot apply to it; expected 8-bit colour or 16-bit grayscale "
                            f"files: convert it (its values >> {bit_depth - 8} as 8 bits a channel), or read it with "
                            f"bit_depth 0 if its values fill 16 bits")


def _require_valid_bit_depth(bit_depth: int) -> None:
    if bit_depth and not 8 <= bit_depth <= 32:
        raise ValueError(f"bit_depth={bit_depth}; expected 0 (the file type's range) or the camera's bits, 8..32")


def _signed_or_float(img: Image.Image) -> bool:
    """Floating-point pixels, or integers a TIFF's SampleFormat tag marks as signed (PIL reads int16 as mode I)."""
    if img.mode == "F":
        return True
    sample_format = getattr(img, "tag_v2", {}).get(339, 1) if img.mode.startswith("I") else 1
    return (sample_format[0] if isinstance(sample_format, tuple) else sample_format) in (2, 3)


_WARNED_BITS = set()  # the two warnings below, each once per process


def _warn_once(kind: str, message: str) -> None:
    """Warns of ``kind`` once, naming the first caller outside this module (its call depth varies by entry point)."""
    if kind not in _WARNED_BITS:
        _WARNED_BITS.add(kind)
        frame, level = sys._getframe(1), 2
        while frame.f_back is not None and frame.f_code.co_filename == __file__:
            frame, level = frame.f_back, level + 1
        warnings.warn(message, stacklevel=level)


def _set_when_training(read_with: int, advised: int) -> str:
    """How to follow a warning's advice of bit depth ``advised`` where the image was read at ``read_with``: only by
    training, since a run reads every image at the bit depth it trained with (eval.py and resuming refuse another)."""
    return (f"bit depth is a training setting: a run reads every image (resumed, evaluating or predicting) at the one "
            f"it trained with, so a run trained at {read_with} needs training anew: train.py --config=... "
            f"--workdir=<a new one> --config.data.bit_depth={advised}")


def _scaled_to_8_bits(arr: np.ndarray, type_bits: int, path: str, bit_depth: int) -> np.ndarray:
    """Unsigned pixels of a ``type_bits``-bit type as uint8, scaled by ``bit_depth`` (0: the type's full range).
    Warns once when 16-bit pixels read at their full range never reach the 13th bit, as 12-bit camera data does,
    and once when pixels have values above ``bit_depth``'s range, which turn white."""
    arr = arr.astype(np.uint64)
    bits = bit_depth or type_bits
    top = int(arr.max())
    if not bit_depth and bits == 16 and 0 < top < 4096:
        _warn_once("low", f"16-bit image {path!r} has no value above {top} (< 4096): camera data of 12 bits or "
                          f"fewer? Scaled by the 16-bit range it loads at most {top >> 8} of 255 bright; read it with "
                          f"the camera's bits (config.data.bit_depth, e.g. 12; pack: --bit-depth 12); "
                          f"{_set_when_training(0, 12)}")
    if bit_depth and top >> bit_depth:
        _warn_once("high", f"image {path!r} has values up to {top}, beyond {bit_depth}-bit data (at most "
                           f"{2 ** bit_depth - 1}), which turn white: its pixels fill more bits than bit_depth="
                           f"{bit_depth} (16-bit data, or {bit_depth}-bit data stored in the high bits: read those "
                           f"with bit_depth 0); {_set_when_training(bit_depth, 0)}")
    return np.minimum(arr >> (bits - 8), 255).astype(np.uint8)


def _to_8_bits(img: Image.Image, path: str, bit_depth: int) -> Image.Image:
    """A 16/32-bit grayscale image as 8-bit ``L`` (``_scaled_to_8_bits``)."""
    type_bits = 16 if img.mode.startswith("I;16") else 32
    return Image.fromarray(_scaled_to_8_bits(np.asarray(img), type_bits, path, bit_depth), mode="L")


def to_rgb(img: Image.Image, path: str = "<memory>", strict: bool = False, bit_depth: int = 0) -> Image.Image:
    """Applies the module's colour rule; ``strict`` raises on anything but RGB; ``bit_depth`` (0: the type's range)
    scales 16/32-bit grayscale."""
    img = _gray_or_rgb(img, path, strict, bit_depth)
    return img if img.mode == "RGB" else img.convert("RGB")


def _gray_or_rgb(img: Image.Image, path: str, strict: bool, bit_depth: int) -> Image.Image:
    """The colour rule but for its last step: grayscale images (8-bit, bilevel, with alpha, 16/32-bit scaled to 8)
    come out ``L``, to be replicated to three channels by ``to_rgb``; all others ``RGB``."""
    _require_valid_bit_depth(bit_depth)
    if img.mode == "RGB":
        return img
    if strict:
        raise ValueError(f"image {path!r} has mode {img.mode!r}; expected an RGB image (strict=True)")
    if _signed_or_float(img):
        raise CorruptImageError(f"image {path!r} has signed or floating-point pixels (mode {img.mode!r}), which have "
                                f"no fixed range to scale to 8 bits; expected 8- or 16-bit unsigned images: convert "
                                f"it first")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = _to_8_bits(img, path, bit_depth)
    if img.mode in ("L", "1", "LA"):
        return img if img.mode == "L" else img.convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def rgb_pixels(img: Image.Image, size: int | None = None, path: str = "<memory>", strict: bool = False,
               bit_depth: int = 0) -> np.ndarray:
    """``img`` after the colour rule as uint8 (H, W, 3), optionally resized (bilinear) to ``size`` x ``size``.
    Grayscale is resized before it is replicated to three channels: the same pixels, since bilinear resizing treats
    each channel alone, for a third of the work (most inspection cameras are grayscale)."""
    img = _gray_or_rgb(img, path, strict, bit_depth)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def load_image(path: str, size: int | None = None, strict: bool = False, bit_depth: int = 0) -> np.ndarray:
    """Decodes ``path`` to uint8 (H, W, 3), optionally resized (bilinear) to ``size`` x ``size``."""
    return rgb_pixels(_decode(path, bit_depth), size, path, strict, bit_depth)


def image_from_array(array, name: str = "image", bit_depth: int = 0) -> Image.Image:
    """A PIL image of pixels in memory, as a file of them would decode: (H, W) or (H, W, 1) grayscale, (H, W, 3)
    RGB or (H, W, 4) RGBA, uint8 or uint16 of either byte order. 16-bit colour, which PIL cannot hold, is scaled to
    8 bits here by ``bit_depth`` as 16-bit grayscale is later (0: the full range, its high byte). A PIL image is
    taken as its file would decode (EXIF orientation applied; palette and bilevel images through the colour rule,
    not read as their indices). Anything else raises naming ``name`` and what was expected."""
    if isinstance(array, Image.Image):
        return ImageOps.exif_transpose(array) if _orientation(array) != 1 else array
    array = np.asarray(array)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        array = array.astype(np.uint16)  # native byte order (a big-endian camera buffer from np.frombuffer)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(f"{name} has shape {array.shape}; expected one image: (height, width) grayscale, or "
                         f"(height, width, 3) RGB, or (height, width, 4) RGBA")
    if array.dtype not in (np.uint8, np.uint16):
        how = ("a float image in [0, 1]: (x * 255).round().astype(np.uint8)" if array.dtype.kind == "f" else
               "integers of 0-255: x.astype(np.uint8); of 0-65535: x.astype(np.uint16)" if array.dtype.kind in "iu"
               else "a mask: use (x * 255).astype(np.uint8) for an image of it")
        raise ValueError(f"{name} has dtype {array.dtype}; expected uint8 or uint16 pixels ({how})")
    if array.dtype == np.uint16 and array.ndim == 3:
        _require_valid_bit_depth(bit_depth)  # read here, before ``to_rgb`` checks it
        array = _scaled_to_8_bits(array[..., :3], 16, name, bit_depth)  # alpha, dropped anyway, scales nothing
    return Image.fromarray(np.ascontiguousarray(array))


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as decoded (EXIF orientation applied), from the header only; raises CorruptImageError when
    unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if _orientation(img) in TRANSPOSED and img.format == "TIFF":  # Pillow 13 may have transposed it already
                return _decode(path).size
            return (height, width) if _orientation(img) in TRANSPOSED else (width, height)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path!r} does not exist") from None
    except Image.DecompressionBombError as e:
        raise _too_large(path) from e
    except (UnidentifiedImageError, OSError) as e:
        raise CorruptImageError(f"cannot read image header of {path!r}: {e}") from e


def _palette_defects(img: Image.Image) -> np.ndarray:
    """A palette mask's defective pixels: those of any index but the background's (``load_mask``)."""
    indices = np.asarray(img)
    colours = np.asarray(img.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
    black = [i for i in np.unique(indices) if i < len(colours) and not colours[i].any()]
    return ~np.isin(indices, black) if black else indices > 0


def load_mask(path: str, size: int | None = None) -> np.ndarray:
    """Decodes a mask to float32 (H, W) in {0, 1}: any non-zero pixel is defective (MVTec 255, VisA 1).

    Resized as MambaAD's evaluation (ADer) does, so pixel metrics are taken on the same ground truth: binarised to
    0/255, resized bilinearly (PIL, which averages over the footprint when shrinking), defective where the result
    exceeds half (> 127). A defect thinner than about half a pixel at ``size`` then vanishes, as it does there.
    A mask whose alpha channel varies (an annotation tool's export: the defect drawn on a transparent layer) is read
    by its alpha, whatever the colour under it; a palette mask by its indices, background being the black entries
    it uses (a tool whose palette lists black anywhere), else index 0 (VOC-style tools: black there anyway).
    """
    img = _decode(path)
    alpha = np.asarray(img.getchannel("A")) if img.mode in ("RGBA", "LA", "PA") else None
    if alpha is not None and alpha.min() != alpha.max():
        binary = alpha > 0
    elif img.mode == "P":
        binary = _palette_defects(img)
    else:
        binary = np.asarray(img if img.mode in ("L", "1") else img.convert("L")) > 0
    if size is None or img.size == (size, size):
        return binary.astype(np.float32)
    resized = Image.fromarray(binary.astype(np.uint8) * 255, mode="L").resize((size, size), Image.BILINEAR)
    return (np.asarray(resized) > 127).astype(np.float32)
