"""Robustness: bad input gets a one-line error, training survives faults, nothing is lost.

One test per requirement bullet; bullets already covered elsewhere are named in the docstrings
(tests/test_fuse_cli.py, tests/test_patches.py, tests/test_training.py, tests/test_evaluate_cli.py).
CLI tests run `python -m ddcgan_tf.cli.*` in subprocesses; the ones that need no TensorFlow
(prepare, the run_main plumbing) take about a second each.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from ddcgan_tf import checkpoint as ckpt
from ddcgan_tf.errors import InputError
from ddcgan_tf.images import WriteError, atomic_write, list_images, read_grey, read_raw, read_rgb
from ddcgan_tf.patches import build_patch_set, cut_pair

from conftest import REPO, synthetic_pair, write_pairs


def cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(result, prog, *needles, status=2):
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


# A child inherits an ignored SIGINT (the whole suite ignores it when started as a background
# job, `nohup ... &`, as CI's clean-clone runs here were), and Python then installs no handler
# of its own; Ctrl-C tests start their child's script with this line to be as a command
# started from a terminal (preexec_fn would fork a process that JAX, loaded by TensorFlow, has
# made multithreaded: a deadlock warning).
AS_FROM_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def no_temp_files(*dirs):
    return not [n for d in dirs for n in os.listdir(d) if n.startswith(".tmp-")]


def quiet(*_):
    pass


def u8(x):
    return np.rint(np.asarray(x) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- bad input files

class _no_warnings:
    """Asserts that the block emits no Python warning (it would be a second stderr line)."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not self.caught, [str(w.message) for w in self.caught]
        return False


def _bad_file(tmp_path, kind):
    """A file of the given kind of badness, with an image extension."""
    good = tmp_path / "good.png"
    iio.imwrite(good, u8(synthetic_pair(32, 48)[0]))
    data = good.read_bytes()
    path = {"missing": tmp_path / "missing.png", "empty": tmp_path / "empty.png",
            "text_png": tmp_path / "notes.png", "text_tif": tmp_path / "notes.tif",
            "truncated_png": tmp_path / "cut.png", "truncated_jpg": tmp_path / "cut.jpg",
            "truncated_tif": tmp_path / "cut.tif", "directory": tmp_path / "folder.png"}[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("text"):
        path.write_text("this is not an image\n")
    elif kind == "truncated_png":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_jpg":
        iio.imwrite(tmp_path / "full.jpg", u8(synthetic_pair(64, 64)[0]))
        full = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif kind == "truncated_tif":
        iio.imwrite(tmp_path / "full.tif", synthetic_pair(64, 64)[0].astype(np.float32))
        full = (tmp_path / "full.tif").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif kind == "directory":
        path.mkdir()
    return str(path)


@pytest.mark.parametrize("kind", ["missing", "empty", "text_png", "text_tif", "truncated_png",
                                  "truncated_jpg", "truncated_tif", "directory"])
def test_missing_unreadable_truncated_and_non_image_files_raise_input_error(tmp_path, kind):
    """Bullets: missing file; unreadable or truncated image; non-image file with an image
    extension (library side; the fuse CLI side is tests/test_fuse_cli.py
    test_fuse_errors_are_one_line_and_leave_no_output, the prepare CLI side is below)."""
    path = _bad_file(tmp_path, kind)
    with _no_warnings():
        with pytest.raises(InputError) as info:
            read_grey(path)
    assert info.value.where == path and "\n" not in str(info.value)
    expected = {"missing": "not found", "empty": "empty", "directory": "directory"}.get(kind)
    if expected:
        assert expected in info.value.problem
    elif kind.startswith("text"):
        assert "not a readable image" in info.value.problem
    else:
        assert "cannot read image" in info.value.problem


def test_empty_directory_is_an_error_naming_it(tmp_path):
    """Bullet: an empty directory (library; the prepare CLI side is in the next test)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no image files") as info:
        list_images(str(empty))
    assert info.value.where == str(empty)
    with pytest.raises(InputError, match="is not a directory"):
        list_images(str(empty / "notes.txt"))


def test_prepare_cli_reports_bad_pairs_at_the_end_and_single_errors_in_one_line(tmp_path):
    """Bullets: directory run continues past bad pairs, reports them at the end, exits non-zero
    (prepare); empty directory and a single bad pair give one line, exit 2, no output file."""
    vis_dir, ir_dir = write_pairs(str(tmp_path / "src"), names=("a", "b", "c", "d", "e"))
    with open(os.path.join(vis_dir, "b.png"), "r+b") as f:  # truncated
        f.truncate(200)
    with open(os.path.join(ir_dir, "c.png"), "w") as f:  # not an image
        f.write("not a PNG")
    os.remove(os.path.join(vis_dir, "d.png"))  # NaN in a float TIFF
    iio.imwrite(os.path.join(vis_dir, "d.tif"), np.full((64, 96), np.nan, np.float32))
    iio.imwrite(os.path.join(vis_dir, "e.png"), np.zeros((20, 20), np.uint8))  # too small
    iio.imwrite(os.path.join(ir_dir, "e.png"), np.zeros((20, 20), np.uint8))
    out = tmp_path / "set.h5"
    prepare = ["-m", "ddcgan_tf.cli.prepare", f"--vis_dir={vis_dir}", f"--ir_dir={ir_dir}",
               "--patch=32", "--stride=16"]
    r = cli(*prepare, f"--output={out}")
    assert r.returncode == 2, r.stderr
    assert "wrote 15 patches from 1 pairs" in r.stdout and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert err[0] == "ddcgan-prepare: error: 4 pair(s) failed and were left out:"
    for needle in ("b.png", "c.png", "d.tif", "e.png"):
        assert sum(needle in line for line in err[1:]) == 1, (needle, err)
    assert "NaN" in next(line for line in err if "d.tif" in line)
    assert "smaller than one 32x32 patch" in next(line for line in err if "e.png" in line)
    with h5py.File(out, "r") as f:
        assert f["vis"].shape[0] == 15
        assert [x["name"] for x in json.loads(f.attrs["failed"])] == ["b", "c", "d", "e"]
    assert no_temp_files(tmp_path)

    # every pair bad -> one line, exit 2, no file
    lone_vis, lone_ir = tmp_path / "lone_vis", tmp_path / "lone_ir"
    lone_vis.mkdir()
    lone_ir.mkdir()
    iio.imwrite(lone_vis / "x.png", np.zeros((64, 96), np.uint8))
    (lone_ir / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = cli("-m", "ddcgan_tf.cli.prepare", f"--vis_dir={lone_vis}", f"--ir_dir={lone_ir}",
            f"--output={tmp_path / 'none.h5'}", "--patch=32", "--stride=16")
    assert_one_line_error(r, "ddcgan-prepare", lone_ir / "x.png", "no patches were cut")
    assert not (tmp_path / "none.h5").exists() and no_temp_files(tmp_path)

    # an empty directory
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("-m", "ddcgan_tf.cli.prepare", f"--vis_dir={empty}", f"--ir_dir={ir_dir}",
            f"--output={tmp_path / 'none.h5'}")
    assert_one_line_error(r, "ddcgan-prepare", empty, "no image files")
    assert not (tmp_path / "none.h5").exists()


def test_prepare_cli_refuses_a_near_copy_of_an_excluded_pair_in_one_line(tmp_path):
    """A held-out scene must not reach training under another name (TNO: houses_with_3_men is
    Movie_14); --allow_near_copies keeps it on request."""
    vis_dir, ir_dir = write_pairs(str(tmp_path / "src"), names=("a", "b"))
    iio.imwrite(os.path.join(vis_dir, "c.png"), iio.imread(os.path.join(vis_dir, "a.png")))
    iio.imwrite(os.path.join(ir_dir, "c.png"), iio.imread(os.path.join(ir_dir, "a.png")))
    out = tmp_path / "set.h5"
    prepare = ["-m", "ddcgan_tf.cli.prepare", f"--vis_dir={vis_dir}", f"--ir_dir={ir_dir}",
               f"--output={out}", "--patch=32", "--stride=16", "--exclude=a"]
    r = cli(*prepare)
    assert_one_line_error(r, "ddcgan-prepare", os.path.join(vis_dir, "c.png"), "nearly copies excluded pair 'a'")
    assert not out.exists() and no_temp_files(tmp_path)
    r = cli(*prepare, "--allow_near_copies")
    assert r.returncode == 0 and "wrote 30 patches from 2 pairs" in r.stdout, r.stderr


def test_sizes_that_do_not_match_the_scale_are_rejected_unless_a_resize_rule_is_asked_for(tmp_path):
    """Bullet: visible/infrared sizes that do not fit the scale factor. Fusing: check_sizes
    (the --resize rule is tests/test_fuse_cli.py test_resize_rule_crops_and_downsamples);
    prepare: --on_mismatch error|skip|resize (also tests/test_patches.py)."""
    from ddcgan_tf.generator import check_sizes

    with pytest.raises(InputError, match="must be 24x16") as info:
        check_sizes((64, 96), (17, 24), 4, "v.png", "i.png")
    assert info.value.where == "i.png"
    with pytest.raises(InputError, match="not a multiple of the scale factor 4.*--resize"):
        check_sizes((66, 96), (16, 24), 4, "v.png", "i.png")
    vis, ir = synthetic_pair(64, 96)
    with pytest.raises(InputError, match="neither the visible size"):
        cut_pair(vis, ir[:50, :70], patch=32, stride=16, where="v.png / i.png")
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a",))
    iio.imwrite(os.path.join(ir_dir, "a.png"), np.zeros((17, 24), np.uint8))
    out = str(tmp_path / "set.h5")
    with pytest.raises(InputError, match="a.png.*neither the visible size"):
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, on_mismatch="error", log=quiet)
    assert not os.path.exists(out) and no_temp_files(tmp_path)
    assert build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, on_mismatch="resize",
                           log=quiet)["patches"] == 15


def test_images_too_small_for_the_network_say_the_minimum():
    """Bullet: images too small for the network (the minimum is in the message)."""
    from ddcgan_tf.generator import check_sizes

    with pytest.raises(InputError, match="at least 8x8"):
        check_sizes((4, 4), (1, 1), 4, "tiny.png", "tiny_ir.png")
    with pytest.raises(InputError, match="at least 4x4"):
        check_sizes((1, 1), (1, 1), 1, "px.png", "px_ir.png")
    with pytest.raises(InputError, match="smaller than one 84x84 patch"):
        cut_pair(np.zeros((80, 200), np.float32), np.zeros((80, 200), np.float32), where="small.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30, -0.5])
def test_nan_inf_and_out_of_range_float_tiffs_are_rejected(tmp_path, bad):
    """Bullet: NaN/Inf in float TIFFs (and floats outside [0, 1])."""
    image = np.full((16, 16), 0.5, np.float32)
    image[3, 5] = bad
    path = str(tmp_path / "float.tif")
    iio.imwrite(path, image)
    with pytest.raises(InputError, match="NaN or Inf" if not np.isfinite(bad) else r"\[0, 1\]") as info:
        read_grey(path)
    assert info.value.where == path


def test_16_bit_and_rgb_inputs_are_converted(tmp_path):
    """16-bit PNG/TIFF are divided by 65535, RGB reduced to luminance, float TIFF kept."""
    ramp = np.linspace(0, 65535, 12 * 16).reshape(12, 16).astype(np.uint16)
    for ext in (".png", ".tif"):
        iio.imwrite(tmp_path / f"g16{ext}", ramp)
        np.testing.assert_allclose(read_grey(tmp_path / f"g16{ext}"), ramp / 65535.0, atol=1e-7)
    rgb16 = np.stack([ramp, ramp[::-1], np.full_like(ramp, 1000)], axis=-1)
    iio.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    np.testing.assert_allclose(read_grey(tmp_path / "rgb16.tif"),
                               (rgb16 / 65535.0) @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    rgb8 = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgb8.png", rgb8)
    grey = read_grey(tmp_path / "rgb8.png")
    assert grey.shape == (12, 16) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, (rgb8 / 255.0) @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    assert read_rgb(tmp_path / "g16.png").shape == (12, 16, 3)
    iio.imwrite(tmp_path / "wide.tif", ramp.astype(np.uint32))
    with pytest.raises(InputError, match="8- or 16-bit"):
        read_grey(tmp_path / "wide.tif")


def _png_chunk(kind, body):
    """One PNG chunk: length, type, data, CRC-32 of type + data (ISO/IEC 15948 section 5.3)."""
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16(path, samples, colour, filters=(0, 1, 2, 3, 4), interlace=0, split=3):
    """A 16-bit PNG written from the spec (ISO/IEC 15948 sections 8-11), independently of the
    reader: row y of each (sub-)image uses filter filters[y % len], computed forward from the raw
    bytes; interlace=1 writes the seven Adam7 passes (section 8.2: each pass's pixels are every
    dy-th row from y0 and every dx-th column from x0, filtered as an image of its own, an empty
    pass written as nothing); the zlib stream is cut into `split` IDAT chunks (consecutive, as
    section 5.6 requires) after a tEXt chunk."""
    import struct
    import zlib

    h, w = samples.shape[:2]
    bpp = 2 * (samples.shape[2] if samples.ndim == 3 else 1)
    adam7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    rows = []
    for x0, y0, dx, dy in (adam7 if interlace else [(0, 0, 1, 1)]):
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw = sub.astype(">u2").reshape(sub.shape[0], -1).view(np.uint8).astype(np.int32)
        for y in range(sub.shape[0]):
            x = raw[y]
            a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])  # left
            b = raw[y - 1] if y else np.zeros_like(x)  # up
            c = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])  # up-left
            kind = filters[y % len(filters)]
            p = a + b - c
            paeth = np.where((abs(p - a) <= abs(p - b)) & (abs(p - a) <= abs(p - c)), a,
                             np.where(abs(p - b) <= abs(p - c), b, c))
            pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2, 4: paeth}[kind]
            rows.append(bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes())
    stream = zlib.compress(b"".join(rows))

    cut = [stream[k * len(stream) // split:(k + 1) * len(stream) // split] for k in range(split)]
    body = [_png_chunk(b"IDAT", part) for part in cut]
    body.insert(0, _png_chunk(b"tEXt", b"Comment\x00made by the test"))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, interlace))
                + b"".join(body) + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("colour, channels", [(2, 3), (6, 4), (4, 2)])
def test_16_bit_colour_pngs_keep_their_depth(tmp_path, colour, channels):
    """Pillow reads 16-bit RGB, RGBA and grey+alpha PNGs at 8 bits (a dark image came out
    black); they are decoded with their 16 bits, every PNG row filter exercised."""
    rng = np.random.default_rng(colour)
    dark = rng.integers(0, 300, (9, 13, channels)).astype(np.uint16)  # under 1/255 of full scale
    full = rng.integers(0, 65536, (9, 13, channels)).astype(np.uint16)
    few = rng.choice(np.array([0, 2, 6, 0x0206, 0x0600], np.uint16), (40, 30, channels))  # Paeth ties
    for name, samples in (("dark", dark), ("full", full), ("few", few)):
        path = str(tmp_path / f"{name}.png")
        _png16(path, samples, colour)
        np.testing.assert_array_equal(read_raw(path), samples)
    rgb = read_rgb(str(tmp_path / "dark.png"))
    expected = dark[..., :3] if channels >= 3 else np.repeat(dark[..., :1], 3, axis=-1)
    np.testing.assert_allclose(rgb, expected / 65535.0, atol=1e-7)
    assert rgb.max() > 0
    # interlaced (Adam7): sizes where passes are empty (1 x 1: only pass 1) or one column wide
    sizes = ((9, 13), (1, 1), (2, 3), (5, 1), (8, 8), (17, 11))
    for k, (h, w) in enumerate(sizes):
        path = str(tmp_path / f"laced{k}.png")
        samples = rng.integers(0, 65536, (h, w, channels)).astype(np.uint16)
        _png16(path, samples, colour, interlace=1, filters=(4, 3, 1, 2, 0)[k % 5:] + (4, 3, 1, 2, 0)[:k % 5])
        np.testing.assert_array_equal(read_raw(path), samples)
    # libpng (TensorFlow's decoder) reads the same pixels from the writer's files
    import tensorflow as tf

    for name in ("dark", "full", "few", "laced0", "laced5"):
        with open(tmp_path / f"{name}.png", "rb") as f:
            libpng = tf.io.decode_png(f.read(), channels=0, dtype=tf.uint16).numpy()
        np.testing.assert_array_equal(read_raw(str(tmp_path / f"{name}.png")), libpng)
    with open(tmp_path / "full.png", "rb") as f:
        data = f.read()
    with open(tmp_path / "cut.png", "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(InputError, match="corrupt PNG data|truncated PNG data"):
        read_raw(str(tmp_path / "cut.png"))
    # a corrupt header (height byte 9 -> 7) fails its CRC rather than giving a cropped image
    with open(tmp_path / "short.png", "wb") as f:
        f.write(data[:23] + b"\x07" + data[24:])
    with pytest.raises(InputError, match="the IHDR chunk fails its CRC"):
        read_raw(str(tmp_path / "short.png"))


def test_16_bit_colour_png_bombs_and_animations_are_refused(tmp_path):
    """A 1 MB file declaring 14000 x 14000 16-bit RGB (4.5 GB decoded) is refused before it is
    inflated, as Pillow refuses its 8-bit kind; an animated 16-bit PNG (acTL) goes to imageio,
    which reads its frames, and is refused as several frames, not read as its first."""
    import struct
    import zlib

    def png(path, w, h, chunks):
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                    + b"".join(_png_chunk(*c) for c in chunks) + _png_chunk(b"IEND", b""))

    bomb = str(tmp_path / "bomb.png")
    png(bomb, 14000, 14000, [(b"IDAT", zlib.compress(bytes(1 << 20)))])
    with pytest.raises(InputError, match="image too large \\(14000 x 14000 pixels"):
        read_raw(bomb)
    w, h = 5, 4
    frame = zlib.compress(b"".join(b"\0" + np.full((w, 3), v, ">u2").tobytes() for v in range(h)))

    def control(seq):
        return b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0)

    anim = str(tmp_path / "anim.png")
    png(anim, w, h, [(b"acTL", struct.pack(">II", 2, 0)), control(0), (b"IDAT", frame), control(1),
                     (b"fdAT", struct.pack(">I", 2) + frame)])
    with pytest.raises(InputError, match="unsupported image layout \\(2, 4, 5, 3\\)"):
        read_raw(anim)


def test_outputs_never_overwrite_the_inputs_and_names_pair_unambiguously(tmp_path):
    """Fusing into the input directory, or onto an input file, would destroy the sources: refused
    before anything is read or written. Two files with one stem would pair by a guess: refused."""
    from ddcgan_tf.fuse import fuse_dirs, fuse_files
    from ddcgan_tf.images import list_images

    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b"), ir_scale=4)
    before = {p: open(os.path.join(vis_dir, p), "rb").read() for p in os.listdir(vis_dir)}
    for out_dir in (vis_dir, ir_dir):
        with pytest.raises(InputError, match="input directory: the fused images would overwrite"):
            fuse_dirs(None, vis_dir, ir_dir, out_dir, log=quiet)
    with pytest.raises(InputError, match="is an input image"):
        fuse_files(None, os.path.join(vis_dir, "a.png"), os.path.join(ir_dir, "a.png"),
                   os.path.join(vis_dir, ".", "a.png"))
    assert {p: open(os.path.join(vis_dir, p), "rb").read() for p in os.listdir(vis_dir)} == before
    iio.imwrite(os.path.join(vis_dir, "a.jpg"), np.zeros((64, 96), np.uint8))
    with pytest.raises(InputError, match="a.png: shares its name with a.jpg"):
        list_images(vis_dir)


def test_pairing_skips_hidden_files_and_names_an_infrared_image_with_no_visible_partner(tmp_path):
    """Hidden files (macOS's ._a.png, a killed write's .tmp-*.png) are not images to pair; an
    image on either side with no partner is an error naming it, not a pair left out."""
    from ddcgan_tf.images import pair_by_name

    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b"), ir_scale=4)
    for name in ("._a.png", ".tmp-x1.png"):
        with open(os.path.join(vis_dir, name), "wb") as f:
            f.write(b"\x00\x05\x16\x07 AppleDouble or a partial write")
    assert [stem for stem, _, _ in pair_by_name(vis_dir, ir_dir)] == ["a", "b"]
    iio.imwrite(os.path.join(ir_dir, "z.png"), np.zeros((16, 24), np.uint8))
    with pytest.raises(InputError, match=f"{os.path.join(ir_dir, 'z.png')}: no vis partner named 'z.*'"):
        pair_by_name(vis_dir, ir_dir)
    os.remove(os.path.join(ir_dir, "z.png"))
    iio.imwrite(os.path.join(vis_dir, "y.png"), np.zeros((64, 96), np.uint8))
    with pytest.raises(InputError, match=f"{os.path.join(vis_dir, 'y.png')}: no ir partner named 'y.*'"):
        pair_by_name(vis_dir, ir_dir)


def test_grey_alpha_png_reads_as_its_grey_channel(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    path = str(tmp_path / "la.png")
    iio.imwrite(path, np.stack([grey, np.full_like(grey, 200)], axis=-1))  # grey + alpha
    assert read_raw(path).shape == (8, 8, 2)
    np.testing.assert_allclose(read_grey(path), grey / 255.0, atol=1e-7)
    np.testing.assert_allclose(read_rgb(path), np.repeat(grey[..., None] / 255.0, 3, axis=-1), atol=1e-7)


def test_8_bit_output_is_rounded_not_truncated():
    from ddcgan_tf.images import to_uint8

    np.testing.assert_array_equal(to_uint8(np.array([0.999, 0.5, 0.2, 254.6 / 255, 0.0, 1.0])),
                                  [255, 128, 51, 255, 0, 255])
    np.testing.assert_array_equal(to_uint8(np.array([0.25, 0.5, 0.75]), stretch=True), [0, 128, 255])


def test_atomic_write_syncs_the_data_before_the_rename_and_gives_the_usual_mode(tmp_path, monkeypatch):
    """The rename must never publish a file whose bytes are still only in the page cache (a power
    loss would leave an empty checkpoint under the good name); and the file gets the mode any
    new file gets (0666 less the umask), not mkstemp's 0600: checkpoints, fused images and
    config.json are read by other users and services."""
    import ddcgan_tf.images as images_module

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(images_module.os, "fsync",
                        lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(images_module.os, "replace",
                        lambda a, b: (events.append(("replace", os.fspath(a))), real_replace(a, b))[1])
    target = tmp_path / "out.json"
    old = os.umask(0o027)
    try:
        atomic_write(target, lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(old)
    kinds = [k for k, _ in events]
    tmp = events[kinds.index("replace")][1]
    assert ("fsync", tmp) in events[:kinds.index("replace")], events
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o640)


def test_atomic_write_interrupted_by_any_exception_leaves_no_temporary_file(tmp_path):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write: not an OSError

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "fused.png", write)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_images_are_read_as_their_colours(tmp_path, ext):
    """imageio returns CMYK files as 4 stored channels; read as RGBA they gave an inverted,
    wrong luminance. They are converted to RGB (Pillow) like any colour image."""
    from PIL import Image

    from ddcgan_tf.images import read_grey, read_rgb

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (200, 30, 30)
    rgb[8:] = (20, 120, 230)
    path = str(tmp_path / f"cmyk{ext}")
    Image.fromarray(rgb).convert("CMYK").save(path, **({"quality": 95} if ext == ".jpg" else {}))
    np.testing.assert_allclose(read_rgb(path), rgb / 255.0, atol=4 / 255)
    truth = str(tmp_path / "rgb.png")
    iio.imwrite(truth, rgb)
    np.testing.assert_allclose(read_grey(path), read_grey(truth), atol=3 / 255)


def test_hdf5_with_wrong_layout_or_patch_sizes_is_rejected(tmp_path):
    """Bullet: an HDF5 file with the wrong layout or patch sizes. Unknown layout, patch sizes
    that do not fit the scale and a non-HDF5 file: tests/test_patches.py
    test_wrong_layouts_are_rejected_with_the_file_name; here the rest."""
    from ddcgan_tf.data import PatchSet, make_dataset

    path = str(tmp_path / "bad.h5")
    rng = np.random.default_rng(0)

    def write(**datasets):
        with h5py.File(path, "w") as f:
            for name, value in datasets.items():
                if isinstance(value, str) and value == "group":
                    f.create_group(name)
                else:
                    f[name] = value

    cases = [
        (dict(vis="group", ir=np.zeros((2, 8, 8, 1))), "must be a dataset"),
        (dict(vis=np.zeros((2, 32, 32)), ir=np.zeros((2, 8, 8, 1))), "must be N x P x P x 1"),
        (dict(vis=np.zeros((2, 32, 32, 1)), ir=np.zeros((3, 8, 8, 1))), "'ir' has 3"),
        (dict(vis=np.zeros((2, 32, 32, 1)), ir=np.zeros((2, 16, 16, 1))), "do not match scale 4"),
        (dict(vis=np.array([[[[b"x"]]]] * 2), ir=np.zeros((2, 8, 8, 1))), "unsupported type"),
        (dict(vis=np.zeros((0, 32, 32, 1)), ir=np.zeros((0, 8, 8, 1))), "empty"),
        (dict(data=np.zeros((4, 30, 30, 2))), "square multiples of 4"),
    ]
    for datasets, message in cases:
        write(**datasets)
        with pytest.raises(InputError, match=message) as info:
            PatchSet(path)
        assert info.value.where == path
    write(vis=rng.random((4, 32, 32, 1)), ir=rng.random((4, 8, 8, 1)))
    with h5py.File(path, "a") as f:
        f["vis"].attrs["max_value"] = 0.0
    with pytest.raises(InputError, match="max_value must be a positive number"):
        PatchSet(path)
    with h5py.File(path, "a") as f:
        f["vis"].attrs["max_value"] = 1.0
    with pytest.raises(InputError, match="fewer than one batch of 24"):
        make_dataset(path, batch_size=24)
    with pytest.raises(InputError, match="--batch_size"):
        make_dataset(path, batch_size=0)
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # truncated (a copy that stopped half way)
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match="HDF5"):
        PatchSet(path)
    with pytest.raises(InputError, match="patch set not found"):
        PatchSet(str(tmp_path / "nope.h5"))


# --------------------------------------------------------------------------------------- training

def kill_mid_atomic_write(target):
    """A process that SIGKILLs itself half way through `atomic_write(target, ...)`."""
    script = (
        "import os, signal\n"
        "from ddcgan_tf.images import atomic_write\n"
        "def write(tmp):\n"
        "    with open(tmp, 'wb') as f:\n"
        "        f.write(b'half of a file')\n"
        "        f.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(target)!r}, write)\n"
    )
    r = cli("-c", script, timeout=60)
    assert r.returncode == -signal.SIGKILL


def test_atomic_write_killed_mid_write_leaves_the_previous_file(tmp_path):
    """Checkpoints are written atomically: SIGKILL while a new version is half written leaves
    the old file intact; the stale temporary file is removed by the next CheckpointManager."""
    target = tmp_path / "ckpt-00000001.h5"
    with h5py.File(target, "w") as f:
        f["x"] = np.arange(10)
    kill_mid_atomic_write(target)
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(10))
    assert not no_temp_files(tmp_path)  # the kill left the temporary file ...
    ckpt.CheckpointManager(str(tmp_path), log=quiet)
    assert no_temp_files(tmp_path)  # ... which the next run removes
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [1]


def test_a_killed_writers_temporary_file_goes_with_the_next_write_beside_it(tmp_path):
    """A writer killed mid-write (a patch set can be GBs) left its temporary file for good in
    any folder but a run's. The name now says which machine and process wrote it, and the next
    write into the folder removes the ones whose process is gone, and nothing else."""
    from ddcgan_tf import images

    kill_mid_atomic_write(tmp_path / "set.h5")
    (killed,) = [p.name for p in tmp_path.iterdir()]
    assert killed.startswith(f".tmp-{images._host()}-")  # this machine, the dead process's id
    other_host = f".tmp-{(int(images._host(), 16) ^ 1):08x}-{os.getpid() + 1}-x.h5"  # a shared disk
    live = f"{images.temp_prefix()}y.h5"  # this process: alive
    dead_export = tmp_path / f".tmp-export-{images._host()}-{killed.split('-')[2]}-z"
    dead_export.mkdir()
    (dead_export / "saved_model.pb").write_bytes(b"half")
    keep = [other_host, live, ".tmp-old-abc", ".tmp-abc123.h5", "notes.txt"]
    for name in keep:
        (tmp_path / name).write_bytes(b"keep")
    images.write_text(str(tmp_path / "table.txt"), "EN 7.1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["table.txt"])


def test_a_temporary_file_from_another_pid_namespace_is_never_taken_for_a_dead_writers(tmp_path, monkeypatch):
    """A container with the host's name (host networking) but its own process ids writes into a
    shared folder: a process id that does not exist here may be a live writer there, whose file
    the sweep deleted under it (found by a review, with unshare). The pid namespace is part of
    the machine's mark, so such a file counts as another machine's."""
    from ddcgan_tf import images

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    name = f".tmp-{images._host()}-{int(child.stdout)}-x.h5"  # a gone process of this namespace
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / name).write_bytes(b"half")
    real = os.readlink
    monkeypatch.setattr(images.os, "readlink",
                        lambda p, *a, **k: "pid:[4026532999]" if p == "/proc/self/ns/pid" else real(p, *a, **k))
    images.write_text(str(tmp_path / "there" / "table.txt"), "x\n")  # a writer in another pid namespace
    assert (tmp_path / "there" / name).exists()
    monkeypatch.undo()
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / name).write_bytes(b"half")
    images.write_text(str(tmp_path / "here" / "table.txt"), "x\n")  # the same namespace: the writer is gone
    assert not (tmp_path / "here" / name).exists()
    (tmp_path / "here2").mkdir()
    odd = tmp_path / "here2" / f".tmp-{images._host()}-99999999999999999999-x"  # not a pid: left alone
    odd.write_bytes(b"")
    images.write_text(str(tmp_path / "here2" / "table.txt"), "x\n")
    assert odd.exists()


def test_sigkill_mid_training_then_resume_keeps_every_checkpoint_loadable(small_patch_set, tmp_path):
    """Bullet: checkpoints are atomic, so a kill at any moment leaves every checkpoint on disk
    loadable, and a resumed run continues the step count (steps.jsonl and batch_count).
    Two training subprocesses: this is the expensive test (about 2 x 15 s on an idle 2-core CPU)."""
    from ddcgan_tf.callbacks import read_step_log
    from ddcgan_tf.train import build_model

    model_dir = str(tmp_path / "run")
    args = ["-m", "ddcgan_tf.cli.train", f"--model_dir={model_dir}", "--batch_size=4",
            "--checkpoint_every=1", "--verbose=0", "--tensorboard=false"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, *args, f"--data={small_patch_set}", "--steps=40"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while len(ckpt.list_checkpoints(model_dir)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no two checkpoints within 240 s"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    left = ckpt.list_checkpoints(model_dir)
    killed_at = left[-1][0]
    assert 2 <= killed_at < 40 and len(left) <= 4  # 4: killed between a save and its pruning

    model = build_model(patch_size=32)

    def check_all_load():
        found = ckpt.list_checkpoints(model_dir)
        for step, path in found:
            ckpt.load_state(model, path)
            assert int(model.batch_count.numpy()) == step
        return [s for s, _ in found]

    check_all_load()
    target = killed_at + 2
    r = cli(*args, f"--data={small_patch_set}", f"--steps={target}")
    assert r.returncode == 0, r.stderr
    assert check_all_load() == [target - 2, target - 1, target]
    assert [row["step"] for row in read_step_log(os.path.join(model_dir, "steps.jsonl"))] == \
        list(range(1, target + 1))
    assert no_temp_files(model_dir)


def test_sigterm_mid_training_saves_the_batch_reached_and_exits_143(small_patch_set, tmp_path):
    """Bullet: training never loses work. SIGTERM (a scheduler's stop, `kill`) finishes the batch
    in flight and saves the full state there, with no periodic checkpoint due (every 1000), then
    exits 143 with one line naming the checkpoint; that state loads at the batch the step log
    reached. (One training subprocess, ~15 s on an idle 2-core CPU.)"""
    from ddcgan_tf.callbacks import read_step_log
    from ddcgan_tf.train import build_model

    model_dir = str(tmp_path / "run")
    step_log = os.path.join(model_dir, "steps.jsonl")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "ddcgan_tf.cli.train", f"--model_dir={model_dir}",
                             f"--data={small_patch_set}", "--batch_size=4", "--steps=500",
                             "--checkpoint_every=1000", "--verbose=0", "--tensorboard=false"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while not (os.path.exists(step_log) and len(read_step_log(step_log)) >= 2):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no two logged batches within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, lines
    steps = [row["step"] for row in read_step_log(step_log)]
    reached = steps[-1]
    assert steps == list(range(1, reached + 1)) and 2 <= reached < 500
    saved = ckpt.list_checkpoints(model_dir)
    assert [s for s, _ in saved] == [reached]
    assert lines == [f"ddcgan-train: stopped by SIGTERM after batch {reached}; the full state is saved in "
                     f"{saved[0][1]}; the same command resumes from it"]
    model = build_model(patch_size=32)
    ckpt.load_state(model, saved[0][1])
    assert int(model.batch_count.numpy()) == reached
    assert no_temp_files(model_dir)


def test_graceful_stop_takes_the_first_signal_and_a_second_acts_as_before():
    """The stop callback's handlers: the first SIGINT (Ctrl-C) or SIGTERM only asks fit to stop;
    a second one goes at once to the handler that was there before fit (Python's own raises
    KeyboardInterrupt; here a recorder stands in for it, so no interrupt can land in a garbage
    collector callback); fit's end puts that handler back."""
    import types

    from ddcgan_tf.callbacks import GracefulStop

    for sig in (signal.SIGINT, signal.SIGTERM):
        calls = []
        original = signal.signal(sig, lambda s, f: calls.append(s))
        before = signal.getsignal(sig)
        try:
            stop = GracefulStop()
            stop.set_model(types.SimpleNamespace(stop_training=False))
            stop.on_train_begin()
            os.kill(os.getpid(), sig)
            time.sleep(0.05)  # the handler runs at the next bytecode
            assert calls == [] and stop.received == sig and stop.model.stop_training
            stop.model.stop_training = False
            stop.on_train_batch_end(0)  # Keras resets the flag between epochs
            assert stop.model.stop_training
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            assert calls == [sig] and signal.getsignal(sig) is before
            stop.on_train_begin()
            stop.on_train_end()
            assert signal.getsignal(sig) is before
        finally:
            signal.signal(sig, original)


def test_nan_loss_in_the_cli_is_one_line_and_exit_3(tmp_path):
    """Bullet: a NaN/Inf loss stops training with a clear message and keeps the last good
    checkpoint. The library behaviour (stop, keep the checkpoint, TrainingDiverged) is
    tests/test_training.py test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint; here
    the CLI turns it into one line and exit status 3 (train() replaced by one that diverges, to
    spare a third training subprocess)."""
    script = (
        "import sys\n"
        "from ddcgan_tf.cli.common import import_tensorflow_quietly\n"
        "import_tensorflow_quietly()\n"
        "import ddcgan_tf.train as T\n"
        "def diverging(*a, **k):\n"
        "    raise T.TrainingDiverged('non-finite g_loss at batch 6; training stopped, '\n"
        "                             'last good checkpoint kept: /m/ckpt-00000005.h5')\n"
        "T.train = diverging\n"
        "sys.argv = ['ddcgan-train', '--data=x.h5', '--model_dir=/m', '--verbose=0']\n"
        "from ddcgan_tf.cli.train import run\n"
        "run()\n")
    r = cli("-c", script, timeout=120)
    assert_one_line_error(r, "ddcgan-train", "non-finite g_loss at batch 6", "ckpt-00000005.h5", status=3)


def _unwritable_dir(tmp_path):
    """A model directory that cannot be written: chmod 0o555 where that works (not as root),
    else a path under a regular file (os.makedirs fails with ENOTDIR even for root)."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("x")
    except OSError:
        return str(ro / "run")
    (ro / "probe").unlink()
    ro.chmod(0o755)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    return str(blocker / "run")


def test_read_only_model_directory_fails_with_one_line(small_patch_set, tmp_path):
    """Bullet: a read-only model directory fails with a clear message, not a traceback."""
    from ddcgan_tf.train import train

    model_dir = _unwritable_dir(tmp_path)
    with pytest.raises(WriteError, match="cannot"):
        train(small_patch_set, model_dir, steps=1, batch_size=4, verbose=0, tensorboard=False)
    r = cli("-m", "ddcgan_tf.cli.train", f"--data={small_patch_set}", f"--model_dir={model_dir}",
            "--steps=1", "--batch_size=4", "--verbose=0")
    assert_one_line_error(r, "ddcgan-train", os.path.dirname(model_dir))


def test_full_disk_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Bullet: a full disk fails with a clear message (WriteError, one line in the CLI) and
    leaves the previous checkpoint loadable and no temporary file."""
    import ddcgan_tf.images as images_module
    from ddcgan_tf.callbacks import StepLog
    from ddcgan_tf.train import build_model

    model = build_model(patch_size=32)
    manager = ckpt.CheckpointManager(str(tmp_path / "run"), log=quiet)
    first = manager.save(model)
    model.batch_count.assign(1)

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:  # the rename fails
        m.setattr(images_module.os, "replace", no_space)
        with pytest.raises(WriteError, match="ckpt-00000001.h5: cannot write \\(No space left on device\\)"):
            manager.save(model)
    with monkeypatch.context() as m:  # HDF5 fails half way through the file (built in memory)
        m.setattr(ckpt, "_write_vars", lambda group, variables: no_space() if group.name == "/dv" else None)
        with pytest.raises(WriteError, match="No space left on device"):
            manager.save(model)
    assert ckpt.list_checkpoints(manager.model_dir) == [(0, first)]
    assert no_temp_files(manager.model_dir)
    ckpt.load_state(model, first)
    assert int(model.batch_count.numpy()) == 0

    log = StepLog(str(tmp_path / "run" / "steps.jsonl"))
    log.set_model(model)
    with monkeypatch.context() as m:
        m.setattr("builtins.open", no_space)
        with pytest.raises(WriteError, match="steps.jsonl: cannot append"):
            log.on_train_batch_end(0, {"loss": 1.0})


def test_cli_turns_write_and_os_errors_into_one_line():
    """The CLI plumbing (run_main) shared by every CLI: WriteError and an OSError such as ENOSPC
    or ENOTDIR become `PROG: error: FILE: problem`, exit 2, no traceback."""
    for raised, needle in (
            ("WriteError('/m/ckpt-1.h5', 'cannot write (No space left on device)')", "/m/ckpt-1.h5: cannot write"),
            ("OSError(errno.ENOSPC, 'No space left on device', '/m/steps.jsonl')", "/m/steps.jsonl: No space"),
            ("NotADirectoryError(errno.ENOTDIR, 'Not a directory', '/f/run')", "/f/run: Not a directory")):
        script = ("import errno\n"
                  "from ddcgan_tf.cli.common import run_main\n"
                  "from ddcgan_tf.images import WriteError\n"
                  "def main(argv):\n"
                  f"    raise {raised}\n"
                  "run_main(main, 'ddcgan-x', needs_tensorflow=False)\n")
        assert_one_line_error(cli("-c", script, timeout=60), "ddcgan-x", needle)


def test_damaged_newest_checkpoint_is_skipped_on_restore(tmp_path):
    """A newest checkpoint that does not load (copied in half, say) is reported and the next
    older one is restored; when none loads, one InputError."""
    from ddcgan_tf.train import build_model

    model = build_model(patch_size=32)
    manager = ckpt.CheckpointManager(str(tmp_path / "run"), log=quiet)
    manager.save(model)
    model.batch_count.assign(7)
    newest = manager.save(model)
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 3])
    messages = []
    manager.log = messages.append
    assert manager.restore_latest(model).endswith("ckpt-00000000.h5")
    assert int(model.batch_count.numpy()) == 0 and "ckpt-00000007.h5" in messages[0]
    # the resumed run saves batch 5 with --keep 1: the damaged 7 must not count, or pruning
    # would delete 0 and the new 5, leaving nothing that loads
    manager.keep = 1
    model.batch_count.assign(5)
    manager.save(model)
    assert [s for s, _ in ckpt.list_checkpoints(manager.model_dir)] == [5, 7]
    assert manager.restore_latest(model).endswith("ckpt-00000005.h5")
    os.remove(ckpt.list_checkpoints(manager.model_dir)[0][1])
    with pytest.raises(InputError, match="none of the 1 checkpoint"):
        manager.restore_latest(model)


def test_write_errors_name_the_file(tmp_path):
    """Outputs: a missing output directory, a path under a regular file, an unknown output
    extension: WriteError/InputError naming the path, nothing left behind."""
    from ddcgan_tf.images import write_image

    image = np.zeros((8, 8), np.float32)
    with pytest.raises(WriteError, match="does not exist"):
        write_image(tmp_path / "nope" / "out.png", image)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match="is not a directory"):
        atomic_write(str(blocker / "out.png"), lambda tmp: None)
    with pytest.raises(InputError, match="unsupported output format '.xyz'"):
        write_image(tmp_path / "out.xyz", image)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_second_trainer_on_a_run_directory_is_refused_and_touches_nothing(small_patch_set, tmp_path):
    """Two trainers on one --model_dir interleaved their step logs, pruned each other's
    checkpoints, and the second one's start deleted the first one's half-written checkpoint
    (a `.tmp-*` file). The second is refused in one line naming the first's process."""
    from ddcgan_tf.train import train

    run = tmp_path / "run"
    run.mkdir()
    in_flight = run / ".tmp-abc123.h5"
    in_flight.write_bytes(b"the first trainer's checkpoint, being written")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ddcgan_tf.checkpoint import run_lock\n"
                               f"with run_lock({str(run)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"{run}: is in use by another trainer \\(process {holder.pid}\\)"):
            train(small_patch_set, str(run), steps=1, batch_size=8, tensorboard=False, verbose=0)
        assert in_flight.exists() and sorted(p.name for p in run.iterdir()) == [".lock", in_flight.name]
        r = cli("-m", "ddcgan_tf.cli.train", "--data", small_patch_set, "--model_dir", str(run), "--steps", "1",
                "--batch_size", "8", "--notensorboard", "--verbose", "0", timeout=120)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
        assert f"is in use by another trainer (process {holder.pid})" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with its process: the run starts now (and removes the dead writer's file)
    train(small_patch_set, str(run), steps=1, batch_size=8, tensorboard=False, verbose=0)
    assert not in_flight.exists() and [s for s, _ in ckpt.list_checkpoints(str(run))] == [1]


def test_a_failed_write_of_a_checkpoint_or_image_is_one_write_error_and_the_old_file_stays(tmp_path):
    """A real write failure inside the kernel (RLIMIT_FSIZE's EFBIG here; a full disk's ENOSPC
    takes the same path) used to surface from HDF5 as a RuntimeError at close (on a full disk
    during a checkpoint, then a segmentation fault in the garbage collector): checkpoints are
    now built in memory and written with plain writes, so it is one WriteError naming the file,
    the previous checkpoint intact and no temporary file left."""
    script = (
        "import os, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from ddcgan_tf.checkpoint import load_generator, save_generator\n"
        "from ddcgan_tf.generator import Generator\n"
        "from ddcgan_tf.images import WriteError\n"
        "g = Generator(); g.build()\n"
        f"path = os.path.join({str(tmp_path)!r}, 'generator.h5')\n"
        "save_generator(g, path)\n"
        "before = open(path, 'rb').read()\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    save_generator(g, path)\n"
        "except WriteError as e:\n"
        "    print('WriteError', e)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "import tempfile, numpy as np\n"
        "import ddcgan_tf.images as images\n"
        "real = tempfile.mkstemp\n"
        "def full_disk(dir=None, prefix=None, suffix=None):  # the temporary file is /dev/full: ENOSPC\n"
        "    fd, tmp = real(dir=dir, prefix=prefix, suffix=suffix)\n"
        "    os.close(fd); os.remove(tmp); os.symlink('/dev/full', tmp)\n"
        "    return os.open(tmp, os.O_WRONLY), tmp\n"
        "images.tempfile.mkstemp = full_disk\n"
        "try:\n"
        f"    images.write_image(os.path.join({str(tmp_path)!r}, 'fused.png'),\n"
        "                       np.random.default_rng(0).random((64, 64)))\n"
        "except WriteError as e:\n"
        "    print('WriteError', e)\n"
        "import gc; gc.collect()\n"
        "assert open(path, 'rb').read() == before\n"
        "load_generator(path)\n"
        "print('files', sorted(os.listdir(os.path.dirname(path))))\n"
    )
    r = cli("-c", script, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"WriteError {tmp_path / 'generator.h5'}: cannot write (File too large)" in r.stdout, r.stdout
    # a fused image on a full disk (imageio's writer, left half-closed, printed tracebacks when collected)
    assert f"WriteError {tmp_path / 'fused.png'}: cannot write (No space left on device)" in r.stdout, r.stdout
    assert "files ['generator.h5']" in r.stdout and "Traceback" not in r.stderr and "Exception" not in r.stderr


def test_prepare_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path):
    """HDF5 writing a patch set straight to a disk that fills up (RLIMIT_FSIZE's EFBIG here, a
    full disk's ENOSPC takes the same path) failed in its own close and then crashed the
    interpreter (exit 139, a segmentation fault in the garbage collector). It is now the CLI's
    one-line write error, no file at --output and no temporary file."""
    vis_dir, ir_dir = write_pairs(str(tmp_path / "src"), names=("a", "b", "c"), size=(160, 200))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, resource.RLIM_INFINITY))\n"
        "from ddcgan_tf.cli import prepare\n"
        f"sys.argv = ['ddcgan-prepare', '--vis_dir', {vis_dir!r}, '--ir_dir', {ir_dir!r},\n"
        f"            '--output', {str(out_dir / 'set.h5')!r}, '--patch', '32']\n"
        "prepare.run()\n"
    )
    r = cli("-c", script, timeout=120)
    assert_one_line_error(r, "ddcgan-prepare", out_dir / "set.h5", "cannot write (File too large)")
    assert os.listdir(out_dir) == []
    # without the limit the same command writes the set
    r = cli("-c", script.replace("150_000", "resource.RLIM_INFINITY"), timeout=120)
    assert r.returncode == 0, r.stderr
    with h5py.File(out_dir / "set.h5", "r") as f:
        assert f["vis"].shape[0] > 100 and json.loads(f.attrs["sources"])[2]["name"] == "c"


def test_ctrl_c_while_hdf5_writes_a_patch_set_stops_it_cleanly_between_pairs(tmp_path):
    """HDF5 calls into the patch writer's Python file object; a KeyboardInterrupt raised in
    there became an HDF5 error (a RuntimeError traceback from its close, found by a review).
    Ctrl-C is held while HDF5 runs and stops the build between pairs: KeyboardInterrupt, no
    file and no temporary file left."""
    vis_dir, ir_dir = write_pairs(str(tmp_path / "src"), names=("a", "b", "c"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    script = (
        AS_FROM_A_TERMINAL +
        "import os, signal\n"
        "from ddcgan_tf import patches\n"
        "real = patches._DiskSink.write\n"
        "def write(self, data):  # the signal lands inside HDF5's call into the sink\n"
        "    if len(data) > 4096 and not hasattr(write, 'sent'):\n"
        "        write.sent = os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(self, data)\n"
        "patches._DiskSink.write = write\n"
        "try:\n"
        f"    patches.build_patch_set({vis_dir!r}, {ir_dir!r}, {str(out_dir / 'set.h5')!r}, patch=32, stride=16)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "interrupted", (r.stdout, r.stderr[-2000:])
    assert "patches" in r.stdout and "Traceback" not in r.stderr  # stopped after a pair, quietly
    assert os.listdir(out_dir) == []


def test_the_patch_sink_reads_back_what_it_kept_in_memory_after_a_failed_write(tmp_path, monkeypatch):
    """After a failed write the sink keeps writes in memory: HDF5 reads its metadata back, and
    must see what it wrote, across the disk / memory boundary and page boundaries."""
    from ddcgan_tf import patches

    path = tmp_path / "sink.bin"
    path.write_bytes(b"")
    sink = patches._DiskSink(str(path))
    rng = np.random.default_rng(0)
    expected = bytearray()
    real, budget = os.pwrite, [100_000]

    def pwrite(fd, data, offset):  # the disk fills after 100 kB, part way through a write
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), budget[0])
        budget[0] -= n
        return real(fd, bytes(data[:n]), offset)

    monkeypatch.setattr(patches.os, "pwrite", pwrite)
    for size in (70_000, 70_000, 150_000):
        chunk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert sink.write(chunk) == size
        expected += chunk
    assert isinstance(sink.error, OSError) and sink.error.errno == errno.ENOSPC
    assert path.stat().st_size == 100_000  # what reached the disk
    sink.seek(40_000)  # overwrite across the boundary: memory wins over the disk's bytes
    patch = bytes(range(256)) * 400
    sink.write(patch)
    expected[40_000:40_000 + len(patch)] = patch
    sink.seek(0)
    assert sink.read() == bytes(expected)
    sink.seek(0, os.SEEK_END)
    sink.write(b"x")
    sink.seek(-5, os.SEEK_END)
    buffer = bytearray(b"\xff" * 10)
    assert sink.readinto(buffer) == 5 and bytes(buffer) == bytes(expected[-4:]) + b"x" + bytes(5)  # zeros past the end
    # shrunk after the failure (the disk keeps its bytes), then written past: the gap reads as zeros
    sink.truncate(50_000)
    sink.seek(120_000)
    sink.write(b"y")
    sink.seek(49_990)
    assert sink.read() == bytes(expected[49_990:50_000]) + bytes(70_000) + b"y"
    sink.close()


def test_a_damaged_byte_in_the_step_log_costs_its_line_only(tmp_path):
    """A non-UTF-8 byte in steps.jsonl (a disk error, an editor) stopped every resume with a
    UnicodeDecodeError traceback; like a torn line, the damaged line is dropped."""
    from ddcgan_tf.callbacks import read_step_log, trim_step_log
    from ddcgan_tf.images import write_text

    log = tmp_path / "steps.jsonl"
    log.write_bytes(b'{"step": 1}\n{"step": 2, "note": "\xff\xfe"}\n{"step": 3}\n\xff\xfe\n')
    assert [r["step"] for r in read_step_log(str(log))] == [1, 2, 3]  # row 2's damage is in a string
    trim_step_log(str(log), 2, write_text)
    assert [r["step"] for r in read_step_log(str(log))] == [1, 2] and log.read_text().count("\n") == 2


def test_a_patch_set_with_nan_or_unscaled_integers_is_bad_input_not_a_divergence(small_patch_set, tmp_path):
    """A NaN in a patch set ended training as a "divergence" at the batch that drew it (exit 3,
    the data file unnamed; --nan_retries replayed it); an integer dataset without max_value was
    read as 0..255 "in [0, 1]" (a first L_G of 66,494 instead of 289). Both are one-line
    InputErrors naming the file."""
    import shutil

    from ddcgan_tf.data import PatchSet

    nan = str(tmp_path / "nan.h5")
    shutil.copy(small_patch_set, nan)
    with h5py.File(nan, "r+") as f:
        f["ir"][5, 1, 2, 0] = np.nan
    with pytest.raises(InputError, match=f"^{nan}: dataset 'ir' holds NaN or Inf \\(patch 5\\)"):
        PatchSet(nan, 4).load()
    unscaled = str(tmp_path / "unscaled.h5")
    shutil.copy(small_patch_set, unscaled)
    with h5py.File(unscaled, "r+") as f:
        del f["vis"].attrs["max_value"]
    with pytest.raises(InputError, match=f"^{unscaled}: dataset '/vis' holds integers \\(uint8\\) but has no "
                                         "max_value"):
        PatchSet(unscaled, 4)
    r = cli("-m", "ddcgan_tf.cli.train", "--data", nan, "--model_dir", str(tmp_path / "run"), "--steps", "2",
            "--batch_size", "8", "--notensorboard", "--verbose", "0", timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert f"{nan}: dataset 'ir' holds NaN or Inf" in r.stderr


def test_ctrl_c_outside_a_commands_own_handling_is_one_line_and_exit_130():
    """Ctrl-C during a CLI's start-up (the seconds-long TensorFlow import, building a model) or
    an export printed a 40-70 line KeyboardInterrupt traceback; it is one line and the shell's
    status for SIGINT. (A real signal at a chosen moment is not deterministic here: the
    TensorFlow import sometimes loses one; so a command's main raises the interrupt.)"""
    script = ("from ddcgan_tf.cli.common import run_main\n"
              "def main(argv):\n"
              "    raise KeyboardInterrupt\n"
              "run_main(main, 'ddcgan-x', needs_tensorflow=False)\n")
    r = cli("-c", script, timeout=60)
    assert (r.returncode, r.stderr.strip()) == (130, "ddcgan-x: interrupted"), r.stderr[-2000:]


def cli_importing_a_stand_in_tensorflow(tmp_path, source):
    """(command, env) of a CLI `ddcgan-x` (run_main; its main prints "ran on") whose
    `import tensorflow` runs `source`, started as from a terminal (`AS_FROM_A_TERMINAL`)."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(source)
    script = (AS_FROM_A_TERMINAL +
              "from ddcgan_tf.cli.common import run_main\n"
              "def main(argv):\n"
              "    print('ran on')\n"
              "run_main(main, 'ddcgan-x')\n")
    return [sys.executable, "-c", script], dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))


def test_a_second_ctrl_c_stops_a_tensorflow_import_that_hangs(tmp_path):
    """The first Ctrl-C during the import is held until the import ends; an import that never
    ends (a hung network file system, a stuck driver) is stopped by the second."""
    command, env = cli_importing_a_stand_in_tensorflow(tmp_path, "import time\n"
                                                                f"open({str(tmp_path / 'importing')!r}, 'w').close()\n"
                                                                "time.sleep(60)\n")
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "importing").exists():
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert p.poll() is None  # held: the import goes on
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (p.returncode, err.strip(), out) == (130, "ddcgan-x: interrupted", "")


@pytest.mark.parametrize("command, advice", [
    ("fuse", "out of memory: the image is too large to process in one piece (--tile 512 fuses it in tiles)"),
    ("train", "out of memory: a training step at this --batch_size does not fit on the device (start the run "
              "with a smaller --batch_size)"),
    ("export", "out of memory")])
def test_running_out_of_memory_is_one_line_with_the_commands_own_advice(command, advice):
    """TensorFlow's ResourceExhaustedError is one line; ddcgan-train used to be told to fuse in
    tiles, the advice of ddcgan-fuse."""
    argv = ["prog", "--data=d.h5", "--model_dir=run"] if command == "train" else ["prog"]  # required flags
    script = (f"from ddcgan_tf.cli import {command} as cli\n"
              "def main(argv):\n"
              "    import tensorflow as tf  # imported quietly by then, as the commands import it\n"
              "    raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')\n"
              "cli.main = main\n"
              f"import sys; sys.argv = {argv!r}\n"
              "cli.run()\n")
    r = cli("-c", script, timeout=120)
    assert (r.returncode, r.stderr.strip()) == (2, f"ddcgan-{command}: error: {advice}"), r.stderr[-2000:]


def test_ctrl_c_landing_in_a_garbage_collector_callback_during_the_tensorflow_import_stops_the_command(tmp_path):
    """A real Ctrl-C during the TensorFlow import was lost about once in eight: TensorFlow
    imports JAX where it is installed, JAX registers a garbage-collector callback, and Python
    drops an exception raised inside one, so the command ran on. The signal is now held until
    the import ends. A stand-in `tensorflow` receives the signal inside such a callback."""
    command, env = cli_importing_a_stand_in_tensorflow(tmp_path, (
        "import gc, logging, os, signal\n"
        "def _callback(phase, info):\n"
        "    if phase == 'start':\n"
        "        gc.callbacks.remove(_callback)\n"
        "        os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside the callback\n"
        "gc.callbacks.append(_callback)\n"
        "gc.collect()\n"
        "def get_logger():\n"
        "    return logging.getLogger('tensorflow')\n"))
    r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stderr.strip(), r.stdout) == (130, "ddcgan-x: interrupted", ""), r.stderr[-2000:]
