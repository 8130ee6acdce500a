"""Regenerate tests/data/corpus: real sample images in odd modes, and broken files.

Run from the repository root: python tests/data/make_corpus.py. The output is committed; this
script records how each file was made. Sources are the Fashion-MNIST samples in data/samples.

Kinds that git cannot hold or that depend on the file system (non-UTF-8 and very long names, symlink
loops, permission 000, named pipes) are made at test time by :func:`filesystem_cases`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, features

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


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def ycck_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """A genuine Adobe YCCK JPEG (APP14 transform 2): CMY as YCbCr, K apart, as Photoshop writes them.

    Pillow writes CMYK only, inverted (Adobe convention): the YCCK planes are built so that a
    decoder's YCCK -> CMYK step gives back the inverted CMYK a CMYK file would hold, then the APP14
    transform flag is set.
    """
    cmyk = np.asarray(image.convert("CMYK"), dtype=np.float64)
    red, green, blue, black = (cmyk[..., i] for i in range(4))
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    cb = 128 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    cr = 128 + 0.5 * red - 0.418688 * green - 0.081312 * blue
    planes = np.stack([255 - luma, 255 - cb, 255 - cr, black], axis=-1).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(planes, "CMYK").save(buffer, "JPEG", quality=quality)
    data = bytearray(buffer.getvalue())
    adobe = data.index(b"Adobe\x00")
    data[adobe + 11] = 2  # transform: 0 = CMYK, 1 = YCbCr, 2 = YCCK
    return bytes(data)


def filesystem_cases(folder: Path, image: Path) -> dict[str, Path]:
    """Make the file-system kinds in ``folder`` (with ``image`` as content); returns kind -> path made.

    A kind the file system refuses (a non-UTF-8 name on a UTF-8-only mount) is left out. Each file
    gets its own content (the kind's name after the image's end) so that each is stored as its own row.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_bytes = Path(image).read_bytes()
    data = image_bytes
    made: dict[str, Path] = {}

    def attempt(kind: str, make) -> None:
        nonlocal data
        data = image_bytes + kind.encode()  # decoders ignore bytes after the image's end marker
        try:
            made[kind] = make()
        except OSError:  # refused by this file system: the test reports the kind as not made
            made.pop(kind, None)

    def non_utf8_name() -> Path:
        path = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9_latin1.png"))
        path.write_bytes(data)
        return path

    def non_utf8_folder() -> Path:
        sub = Path(os.fsdecode(os.fsencode(folder) + b"/\xff\xfe_class"))
        sub.mkdir(exist_ok=True)
        (sub / "in_bad_folder.png").write_bytes(data)
        return sub / "in_bad_folder.png"

    def long_name() -> Path:
        path = folder / ("long_" + "x" * (255 - len("long_.png")) + ".png")  # 255 bytes: the usual limit
        path.write_bytes(data)
        return path

    def symlink_loop_file() -> Path:
        a, b = folder / "loop_a.png", folder / "loop_b.png"
        a.symlink_to(b.name)
        b.symlink_to(a.name)
        return a

    def symlink_loop_folder() -> Path:
        link = folder / "loop_dir"
        link.symlink_to(".")
        return link

    def dangling() -> Path:
        link = folder / "dangling.png"
        link.symlink_to(folder / "does_not_exist.png")
        return link

    def unreadable() -> Path:
        path = folder / "mode_000.png"
        path.write_bytes(data)
        path.chmod(0)
        return path

    def named_pipe() -> Path:
        path = folder / "named_pipe.png"
        os.mkfifo(path)
        return path

    def uppercase_suffix() -> Path:
        path = folder / "UPPER.PNG"
        path.write_bytes(data)
        return path

    for kind, make in [
        ("non_utf8_name", non_utf8_name), ("non_utf8_folder", non_utf8_folder), ("long_name", long_name),
        ("symlink_loop_file", symlink_loop_file), ("symlink_loop_folder", symlink_loop_folder),
        ("dangling_symlink", dangling), ("permission_000", unreadable), ("named_pipe", named_pipe),
        ("uppercase_suffix", uppercase_suffix),
    ]:
        attempt(kind, make)
    return made


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
    # More kinds (issue 10): extreme shapes, more modes and formats, more broken headers.
    strip = np.tile(np.asarray(shirt.convert("L").resize((20, 20)))[:, :1].T, (1, 1))  # 1 x 20 column of a garment
    Image.fromarray(np.repeat(strip, 30000, axis=0).T.copy(), "L").save(good / "garments" / "wide_30000x20.png")
    boot.resize((64, 32)).save(good / "garments" / "exif_rotated_180.jpg", exif=exif_bytes(3), quality=90)
    boot.resize((64, 32)).save(good / "garments" / "exif_rotated_270.jpg", exif=exif_bytes(8), quality=90)
    (good / "bags" / "ycck.jpg").write_bytes(ycck_jpeg(bag))
    Image.fromarray(np.asarray(bag.convert("L"), dtype=np.float32) / 255.0, "F").save(good / "bags" / "float32.tif")
    bag.convert("1").save(good / "bags" / "one_bit.png")
    gray_alpha = bag.convert("LA")
    gray_alpha.putalpha(Image.new("L", bag.size, 200))
    gray_alpha.save(good / "bags" / "gray_alpha.png")
    bag.save(good / "bags" / "progressive.jpg", quality=85, progressive=True)
    bag.save(good / "bags" / "plain.bmp")
    if features.check("webp"):
        shirt.save(good / "garments" / "lossy.webp", quality=80)
    if features.check("avif"):
        shirt.save(good / "garments" / "photo.avif", quality=70)
        avif = (good / "garments" / "photo.avif").read_bytes()
        # Three bytes spliced into the coded planes: libavif fails with a RuntimeError (found by fuzzing).
        (bad / "avif_damaged.avif").write_bytes(avif[:270] + bytes.fromhex("a99a01") + avif[270:])
    # A HEIF container (ftyp brand heic) without HEVC payload: no Pillow build without a plugin reads it.
    heic_ftyp = struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic"
    (bad / "heic_unsupported.heic").write_bytes(heic_ftyp + struct.pack(">I", 16) + b"meta" + b"\x00" * 8)
    (bad / "png_signature_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (bad / "tiff_garbage.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + b"\xff" * 64)
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 900 Mpx, 8-bit grayscale
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    (bad / "bomb.png").write_bytes(bomb)
    # 667 bytes and under the pixel limit, but the resize to the model's short side would allocate gigabytes
    Image.new("RGB", (200_000, 1), (120, 40, 200)).save(bad / "extreme_aspect.png")


if __name__ == "__main__":
    main()
