"""Mapper stage: bytes to an RGB image, with its metadata, or a clear reason why not."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.core.errors import DataError

logger = logging.getLogger(__name__)

# Pillow's own default (~89 Mpx); larger images are refused as potential decompression bombs.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# ISO-BMFF brands of HEIF images (HEVC-coded HEIC and its sequences); Pillow reads them only with a plugin.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
CONVERSION_ROWS = 512  # rows converted at a time from a high bit depth
# Background for transparent pixels: a catalogue photo on white is the common case.
TRANSPARENT_BACKGROUND = (255, 255, 255)


class DecodeError(DataError):
    """A file that cannot become an RGB image; the message is the reason recorded for it."""


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the encoder, with the metadata read while decoding it."""

    image: Image.Image  # RGB
    width: int
    height: int
    channels: int
    mode: str
    format: str | None


def content_id(data: bytes) -> str:
    """The id of an image: BLAKE2b-128 of its bytes, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale to 8-bit, scaled by the value range.

    Converted a band of rows at a time: a 9400x9400 16-bit PNG (allowed: under the pixel limit) took 2.3 GB
    through whole-image float64 arrays, and takes one 8-bit copy of the image and a band this way.
    """
    array = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) <= 65535):
        low, scale = 0.0, None  # floor(x / 257): 16-bit to 8-bit as x * 255 // 65535, exactly
    else:
        low, high = float(array.min(initial=0)), float(array.max(initial=0))
        scale = 255.0 / (high - low or 1.0)
    out = np.empty(array.shape, np.uint8)
    for start in range(0, array.shape[0], CONVERSION_ROWS):
        band = array[start : start + CONVERSION_ROWS]
        if scale is None:
            out[start : start + CONVERSION_ROWS] = np.clip(band.astype(np.int64) * 255 // 65535, 0, 255)
        else:
            out[start : start + CONVERSION_ROWS] = np.clip((band.astype(np.float32) - low) * scale, 0, 255)
    return Image.fromarray(out, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha over white, palette and CMYK converted, high bit depth scaled."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_bit_depth_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes fully (so truncation is caught here), apply EXIF orientation, convert to RGB."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            image_format = image.format
            source_mode = image.mode
            channels = len(image.getbands())
            image.seek(0)  # animated and multi-page files: the first frame
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        brand = data[8:12] if data[4:8] == b"ftyp" else b""
        if brand in HEIF_BRANDS:
            raise DecodeError(f"HEIF/HEIC image (brand {brand.decode('ascii', 'replace')!r}): this Pillow build cannot decode it") from exc
        raise DecodeError("not an image Pillow can identify") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated data, bad CRCs and broken headers through these.
        raise DecodeError(f"corrupt image: {exc}") from exc
    except Exception as exc:
        # Codec plugins fail in their own ways (a damaged AVIF raises RuntimeError): one bad file must
        # become an error row, not stop a whole ingest.
        logger.debug("decoder failure", exc_info=True)
        raise DecodeError(f"corrupt image ({type(exc).__name__}): {exc}") from exc
    if rgb.width == 0 or rgb.height == 0:
        raise DecodeError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return DecodedImage(rgb, rgb.width, rgb.height, channels, source_mode, image_format)
