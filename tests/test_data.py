
import numpy as np
import pytest
import torch
from PIL import Image

from vaehelpers import data as data_module
from vaehelpers import decode, folders
from vaehelpers.data import batches, load_images, split_indices


def _save(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


def _one(folder, image_size=16):
    loaded = load_images(folder, image_size)
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape[1:] == (3, image_size, image_size)
    return loaded


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, transparent on the left half, opaque on the right
    rgba[:, 8:, 3] = 255
    _save(tmp_path / "a.png", rgba)
    img = _one(tmp_path).images[0]
    assert img[:, :, :6].min() == 255  # transparent: white
    assert img[:, :, 10:].tolist() == torch.tensor([255, 0, 0])[:, None, None].expand(3, 16, 6).tolist()


def test_grey_is_expanded_to_three_equal_channels(tmp_path):
    _save(tmp_path / "g.png", np.full((16, 16), 77, np.uint8))
    img = _one(tmp_path).images[0]
    assert (img == 77).all()


def test_non_square_is_centre_cropped(tmp_path):
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, 16:32] = 200  # only the centre square is bright
    _save(tmp_path / "w.jpg", wide, quality=100)
    img = _one(tmp_path).images[0].int()
    assert img.min() > 180


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    _save(tmp_path / "deep.png", np.full((16, 16), 32768, np.uint16))
    img = _one(tmp_path).images[0]
    assert (img == 128).all()


def test_resize_uses_antialiasing(tmp_path):
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    _save(tmp_path / "c.png", np.stack([checker] * 3, -1))
    img = _one(tmp_path).images[0].int()
    assert (img - 128).abs().max() <= 2  # averaged, not aliased to black or white


def test_formats_and_corrupt_and_non_image_files_are_counted(tmp_path):
    face = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    for ext in ("png", "jpg", "webp", "bmp"):
        _save(tmp_path / f"ok.{ext}", face)
    (tmp_path / "sub").mkdir()
    _save(tmp_path / "sub" / "nested.png", face)
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "fake.jpg").write_text("not an image")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match=r"Skipped 3 of 8 entries in .*: 1 corrupt \(truncated.png\), 2 not an image \(fake.jpg, notes.txt\)\.$") as record:
        loaded = _one(tmp_path)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert len(loaded) == 5 and loaded.skipped == 3


def test_empty_folder_and_missing_path_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*empty"):
        load_images(tmp_path)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_images(missing)
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(ValueError, match=r"No usable images in .* \(1 not an image \(only.txt\)\): add PNG"):
        load_images(tmp_path)


def test_npz_of_the_course_shape_loads_as_is(tmp_path):
    array = (np.random.default_rng(0).random((5, 64, 64, 3)) * 255).astype(np.uint8)
    np.savez_compressed(tmp_path / "animation.npz", array)
    loaded = load_images(tmp_path / "animation.npz", 64)
    assert loaded.images.shape == (5, 3, 64, 64)
    assert torch.equal(loaded.images, torch.from_numpy(array).permute(0, 3, 1, 2))
    np.save(tmp_path / "small.npy", array)
    assert load_images(tmp_path / "small.npy", 32).images.shape == (5, 3, 32, 32)


@pytest.mark.parametrize("bad, says", [
    (np.zeros((5, 64, 64, 5), np.uint8), r"shape \(5, 64, 64, 5\); expected \(N, H, W, 3\)"),
    (np.zeros((0, 64, 64, 3), np.uint8), r"shape \(0, 64, 64, 3\); expected .* with N > 0"),
    (np.zeros((2, 5, 64, 64, 3), np.uint8), r"shape \(2, 5, 64, 64, 3\); expected"),
    (np.zeros((5, 64, 64, 3), np.int64), r"dtype int64; expected uint8 \(0..255\), uint16 \(0..65535\) or floats"),
    (np.full((5, 64, 64, 3), 200.0, np.float32), r"float32 values from 200 to 200; floating-point images must lie in "
                                                 r"\[0, 1\]: divide by 255"),
])
def test_npz_of_the_wrong_shape_or_type_is_a_clear_error(tmp_path, bad, says):
    np.savez(tmp_path / "bad.npz", images=bad)
    with pytest.raises(ValueError, match=r"bad\.npz holds .*" + says):
        load_images(tmp_path / "bad.npz")


def test_cache_hit_skips_decoding_and_a_changed_file_misses(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(30):
        _save(folder / f"{i}.png", np.full((40, 40, 3), i, np.uint8))
    first = load_images(folder, 32)
    calls = []
    real_decode = folders.decode_file
    monkeypatch.setattr(folders, "decode_file", lambda p: calls.append(p) or real_decode(p))
    second = load_images(folder, 32)
    assert calls == [] and torch.equal(first.images, second.images)
    _save(folder / "0.png", np.full((40, 40, 3), 250, np.uint8))  # new content, new size
    third = load_images(folder, 32)
    assert len(calls) == 30 and third.images[0].min() == 250


def test_second_load_reads_the_cache_instead_of_drawing_again(monkeypatch):
    first = load_images("builtin:300", 64)
    monkeypatch.setattr(data_module.faces, "make_faces", lambda *a, **k: pytest.fail("drew the faces again"))
    second = load_images("builtin:300", 64)  # how much faster: python -m vaehelpers bench
    assert torch.equal(first.images, second.images) and first.factors.keys() == second.factors.keys()


def test_builtin_source_names():
    assert len(load_images("builtin:12", 32)) == 12
    with pytest.raises(ValueError, match="builtin:N"):
        load_images("builtin:many")


def test_split_is_seeded_disjoint_and_five_percent():
    train, val = split_indices(1000, 0.05, seed=3)
    assert len(val) == 50 and len(train) == 950
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(set(train.tolist()) | set(val.tolist())) == 1000
    assert torch.equal(split_indices(1000, 0.05, seed=3)[1], val)
    assert not torch.equal(split_indices(1000, 0.05, seed=4)[1], val)


def test_batches_cover_every_image_once_as_floats():
    images = torch.arange(7 * 3 * 2 * 2, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(7, 3, 2, 2)
    got = list(batches(images, 3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in got] == [3, 3, 1]
    assert all(b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1 for b in got)
    stacked = torch.cat(got)
    assert sorted((stacked * 255).round().flatten(1).sum(1).tolist()) == sorted(images.flatten(1).float().sum(1).tolist())


def _png_declaring(path, width, height):
    """A tiny PNG file whose header declares width × height pixels (a 'decompression bomb')."""
    import struct
    import zlib

    buffer = bytearray((_save(path, np.zeros((1, 1, 3), np.uint8))).read_bytes())
    buffer[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    buffer[29:33] = struct.pack(">I", zlib.crc32(bytes(buffer[12:29])))  # its CRC over type and data
    path.write_bytes(bytes(buffer))


def test_each_skipped_entry_is_counted_with_its_true_reason(tmp_path, monkeypatch):
    tmp_path = tmp_path / "faces"  # beside the test's data cache, not around it
    tmp_path.mkdir()
    face = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    _save(tmp_path / "ok.png", face)
    _png_declaring(tmp_path / "bomb.png", 12_000, 12_000)
    _save(tmp_path / "tiny.png", face[:4, :4])
    (tmp_path / "locked.png").write_bytes((tmp_path / "ok.png").read_bytes())
    (tmp_path / "private").mkdir()
    _save(tmp_path / "private" / "hidden.png", face)
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder that contains itself
    real_open, real_scandir = Image.open, folders.os.scandir

    def open_image(path, *args):  # as root, chmod does not stop reading: refuse it here
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args)

    def scandir(path):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(decode.Image, "open", open_image)
    monkeypatch.setattr(folders.os, "scandir", scandir)
    with pytest.warns(UserWarning) as record:  # bomb.png, a 1-pixel file, would be "corrupt" had it been decoded
        loaded = _one(tmp_path)
    message = str(record[0].message)
    assert message == (f"Skipped 5 of 6 entries in {tmp_path}: 2 unreadable (locked.png, private), 1 too large "
                       "(bomb.png), 1 too small (tiny.png), 1 symlink loop (loop).")
    assert len(loaded) == 1 and loaded.skipped == 5
    with pytest.warns(UserWarning, match="Skipped 5 of 6 entries") as again:  # a cached load says it too
        assert load_images(tmp_path, 16).key == loaded.key
    assert len(again) == 1


def test_a_file_that_becomes_readable_is_decoded_again(tmp_path, monkeypatch):
    tmp_path = tmp_path / "faces"  # beside the test's data cache, not around it
    tmp_path.mkdir()
    face = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    _save(tmp_path / "a.png", face)
    _save(tmp_path / "b.png", face)
    real_open = Image.open
    monkeypatch.setattr(decode.Image, "open",
                        lambda p, *a: (_ for _ in ()).throw(PermissionError(13, "denied")) if str(p).endswith("b.png")
                        else real_open(p, *a))
    (tmp_path / "b.png").chmod(0o000)
    with pytest.warns(UserWarning, match="1 unreadable"):
        assert len(_one(tmp_path)) == 1
    monkeypatch.undo()
    (tmp_path / "b.png").chmod(0o644)  # same size and modification time; its ctime changes
    assert len(_one(tmp_path)) == 2


def test_npz_of_python_objects_names_the_file(tmp_path):
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=f"Cannot read the arrays in {tmp_path / 'objects.npz'}"):
        load_images(tmp_path / "objects.npz")


def test_a_cache_entry_it_cannot_read_is_built_again(tmp_path):
    first = load_images("builtin:40", 16, cache_dir=tmp_path)
    (meta,) = tmp_path.glob("*.json")
    meta.write_text('{"source": "builtin:40", "skipped": 0, "count": 40}')  # an entry of an older version
    again = load_images("builtin:40", 16, cache_dir=tmp_path)
    assert torch.equal(again.images, first.images) and "skipped_entries" in meta.read_text()


def _png16(path, rgb):
    """A 16-bit RGB PNG, written by hand (Pillow writes no 16-bit colour PNG): rgb is (H, W, 3) uint16."""
    import struct
    import zlib

    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:16] = 255  # stored: white on top; tag 6 says "rotate 90° clockwise to show", so white is on the right
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(folder / "phone.jpg", exif=exif, quality=100)
    with pytest.warns(decode.Converted, match=r"Converted 1 of 1 images in .*photos: 1 turned upright by their EXIF "
                                              r"orientation \(phone.jpg\)\.$"):
        img = _one(folder).images[0].int()
    assert img[:, :, -5:].min() > 200 and img[:, :, :5].max() < 55  # right half white, left half black
    assert img[:, :5, :].float().std() > 50  # the top row runs black to white, not all white


def test_gif_tiff_16_bit_and_palette_images_load_like_any_other(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    grey = np.full((16, 16, 3), 77, np.uint8)
    _save(folder / "a.png", grey)
    _save(folder / "b.gif", grey)
    _save(folder / "c.tif", grey)
    _save(folder / "d.tiff", grey, compression="tiff_lzw")
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (77, 200, 10)]
    frames[0].save(folder / "e-animated.gif", save_all=True, append_images=frames[1:], duration=100)
    _png16(folder / "f-rgb16.png", np.full((16, 16, 3), 77 * 257, np.uint16))
    _save(folder / "g-grey16.png", np.full((16, 16), 77 * 257, np.uint16))
    palette = Image.fromarray(np.indices((16, 16))[1].astype(np.uint8) // 8, "P")  # left: entry 0, right: entry 1
    palette.putpalette([0, 0, 0, 77, 77, 77] + [0] * 762)
    palette.save(folder / "h-palette.png", transparency=0)  # entry 0 transparent: white on the left
    with pytest.warns(decode.Converted) as notes:
        loaded = _one(folder)
    assert len(loaded) == 8 and loaded.skipped == 0
    by_name = dict(zip(sorted(p.name for p in folder.iterdir()), loaded.images))
    for name in ("a.png", "b.gif", "c.tif", "d.tiff", "e-animated.gif", "f-rgb16.png", "g-grey16.png"):
        assert (by_name[name].int() - 77).abs().max() <= 1, name  # the animated GIF by its first frame
    assert (by_name["h-palette.png"][:, :, :7] == 255).all() and (by_name["h-palette.png"][:, :, 9:] == 77).all()
    (line,) = [str(w.message) for w in notes]
    assert "1 animated: first frame used (e-animated.gif)" in line and "1 alpha composited on white (h-palette.png)" in line
    assert line.startswith(f"Converted 3 of 8 images in {folder}:") and "8 bits (g-grey16.png)" in line
    assert loaded.converted == {decode.FIRST_FRAME: 1, decode.ALPHA: 1, decode.GREY: 1, decode.DEEP: 1}
    with pytest.warns(decode.Converted, match="1 animated: first frame used"):  # a cached load says it too
        load_images(folder, 16)


@pytest.mark.parametrize("array, note", [
    (np.concatenate([np.full((5, 16, 16, 3), 77, np.uint8), np.zeros((5, 16, 16, 1), np.uint8)], -1),
     "alpha composited on white"),
    (np.full((5, 16, 16, 1), 77, np.uint8), "grey expanded to RGB"),
    (np.full((5, 16, 16), 77, np.uint8), "grey expanded to RGB"),
    (np.full((5, 16, 16, 3), 77 * 257, np.uint16), "16-bit or floating-point values scaled to 8 bits"),
    (np.full((5, 16, 16, 3), 77 / 255, np.float32), "16-bit or floating-point values scaled to 8 bits"),
])
def test_arrays_are_converted_like_files_and_say_so(tmp_path, array, note):
    np.save(tmp_path / "faces.npy", array)
    with pytest.warns(decode.Converted, match=rf"Converted all 5 images of .*faces.npy: {note}\.$"):
        loaded = load_images(tmp_path / "faces.npy", 16)
    assert loaded.converted == {note: 5}
    expected = 255 if note.startswith("alpha") else 77  # fully transparent: white
    assert loaded.images.shape == (5, 3, 16, 16) and (loaded.images.int() - expected).abs().max() <= 1


def test_channels_first_array_says_how_to_transpose(tmp_path):
    np.save(tmp_path / "chw.npy", np.zeros((5, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"chw.npy holds an array of shape \(5, 3, 64, 64\), channels first; .*"
                                         r"array.transpose\(0, 2, 3, 1\)"):
        load_images(tmp_path / "chw.npy")
