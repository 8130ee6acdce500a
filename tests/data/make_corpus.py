"""Regenerate tests/data/corpus: real sample images in odd modes, and broken files.

Run from the repository root: python tests/data/make_corpus.py. The output is committed; this
script records how each file was made. Sources are the Fashion-MNIST samples in data/samples.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "corpus"
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def sample(name: str, size: int = 64) -> Image.Image:
    """A real sample garment, upscaled and tinted so that colour modes carry colour."""
    gray = Image.open(sorted((SAMPLES / name).glob("*.png"))[0]).convert("L").resize((size, size), Image.BICUBIC)
    array = np.asarray(gray, dtype=np.float32)
    rgb = np.stack([array, array * 0.7, 255 - array * 0.5], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main() -> None:
    good, bad = ROOT / "good", ROOT / "bad"
    for folder in (good / "garments", good / "bags", bad):
        folder.mkdir(parents=True, exist_ok=True)
    shirt, bag, boot = sample("shirt"), sample("bag"), sample("ankle_boot")

    shirt.save(good / "garments" / "rgb.jpg", quality=90)
    shirt.convert("L").save(good / "garments" / "gray.png")
    rgba = shirt.convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    rgba.save(good / "garments" / "rgba.png")
    palette = bag.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(good / "bags" / "palette_transparent.png", transparency=0)
    bag.convert("CMYK").save(good / "bags" / "cmyk.jpg", quality=90)
    sixteen = (np.asarray(bag.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(good / "bags" / "sixteen_bit.png")
    # Stored landscape 64x32 with EXIF orientation 6 (rotate 90 CW): decoders must show it 32x64.
    exif = Image.Exif()
    exif[0x0112] = 6
    boot.resize((64, 32)).save(good / "garments" / "exif_rotated.jpg", exif=exif.tobytes(), quality=90)
    frames = [boot, shirt]
    frames[0].save(good / "garments" / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    boot.copy().save(good / "garments" / "multipage.tif", save_all=True, append_images=[shirt.copy()])
    Image.new("RGB", (1, 1), (200, 30, 30)).save(good / "garments" / "one_pixel.png")

    (bad / "zero_byte.jpg").write_bytes(b"")
    jpeg = (good / "garments" / "rgb.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "text_named.jpg").write_text("this is not an image\n")
    (bad / "html_named.png").write_text("<!doctype html><html><body>404 Not Found</body></html>\n")
    png = bytearray((good / "garments" / "gray.png").read_bytes())
    idat = png.index(b"IDAT")
    png[idat + 10] ^= 0xFF  # corrupt the compressed data; the stored CRC no longer matches
    (bad / "bad_crc.png").write_bytes(bytes(png))
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 900 Mpx, 8-bit grayscale
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    (bad / "bomb.png").write_bytes(bomb)


if __name__ == "__main__":
    main()
