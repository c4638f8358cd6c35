"""Colour visible images: YCbCr, keeping the visible chroma, and `--colour` in fusing."""
import imageio.v3 as iio
import numpy as np
import pytest

from ddcgan_tf import images, ycbcr
from ddcgan_tf.checkpoint import load_generator
from ddcgan_tf.fuse import Fuser, fuse_dirs, fuse_files

from conftest import synthetic_pair
from test_fuse_cli import cli


def colour_scene(h=64, w=96, seed=0):
    """A synthetic visible scene with saturated colours (and some grey), and its low-res IR."""
    vis, ir = synthetic_pair(h, w, seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([vis * (0.4 + 0.6 * xx), vis * (0.3 + 0.7 * yy), vis * (1.0 - 0.5 * xx)], -1)
    rgb[: h // 4, : w // 4] = vis[: h // 4, : w // 4, None]  # a grey corner
    return np.clip(rgb, 0, 1), ir


def test_ycbcr_is_jpegs_full_range_transform_and_its_y_is_what_read_grey_fuses(tmp_path):
    y, cb, cr = ycbcr.rgb_to_ycbcr(np.array([[1.0, 0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(y, [0.299, 0.114, 0.5], atol=1e-12)
    np.testing.assert_allclose(cr, [1.0, 0.5 - 0.114 / 1.402, 0.5], atol=1e-12)  # red: Cr at its maximum
    np.testing.assert_allclose(cb, [0.5 - 0.299 / 1.772, 1.0, 0.5], atol=1e-12)
    rgb = np.random.default_rng(0).random((7, 9, 3))
    np.testing.assert_allclose(ycbcr.ycbcr_to_rgb(*ycbcr.rgb_to_ycbcr(rgb)), rgb, atol=1e-12)
    path = str(tmp_path / "c.png")
    iio.imwrite(path, (rgb * 255).round().astype(np.uint8))
    np.testing.assert_allclose(ycbcr.luminance(images.read_rgb(path)), images.read_grey(path), atol=1e-6)


def test_keep_chroma_sets_the_luminance_and_keeps_the_hue():
    rng = np.random.default_rng(1)
    rgb = rng.random((40, 50, 3))
    fused = rng.random((40, 50))  # far from the visible luminance: many pixels leave the gamut
    out = ycbcr.keep_chroma(fused, rgb)
    assert out.shape == rgb.shape and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(ycbcr.luminance(out), fused, atol=1e-6)  # per-channel clipping fails this
    _, cb0, cr0 = ycbcr.rgb_to_ycbcr(rgb)
    _, cb, cr = ycbcr.rgb_to_ycbcr(out)
    a, b = np.stack([cb0 - 0.5, cr0 - 0.5], -1), np.stack([cb - 0.5, cr - 0.5], -1)
    np.testing.assert_allclose(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], 0, atol=1e-6)  # same hue ...
    assert np.all((a * b).sum(-1) >= -1e-9)  # ... not the opposite one
    shrink = np.hypot(*np.moveaxis(b, -1, 0)) / np.maximum(np.hypot(*np.moveaxis(a, -1, 0)), 1e-12)
    assert shrink.max() <= 1 + 1e-5 and (shrink > 1 - 1e-5).mean() > 0.2  # only desaturated, often kept
    # the visible image's own luminance gives the visible image back; a grey image stays grey
    np.testing.assert_allclose(ycbcr.keep_chroma(ycbcr.luminance(rgb), rgb), rgb, atol=1e-6)
    grey = np.repeat(rgb[..., :1], 3, -1)
    np.testing.assert_allclose(ycbcr.keep_chroma(fused, grey), np.repeat(fused[..., None], 3, -1), atol=1e-6)


@pytest.mark.parametrize("stretch", [False, True])
def test_fusing_a_colour_visible_image_keeps_its_colour_and_fuses_its_luminance(tmp_path, generator_file, stretch):
    rgb, ir = colour_scene(66, 99)  # --resize: cropped to 64x96, IR downsampled from full size
    vis_path, ir_path = str(tmp_path / "v.png"), str(tmp_path / "i.png")
    iio.imwrite(vis_path, (rgb * 255).round().astype(np.uint8))
    iio.imwrite(ir_path, (ir * 255).round().astype(np.uint8))
    fuser = Fuser(load_generator(generator_file))
    grey_out, colour_out = str(tmp_path / "grey.png"), str(tmp_path / "colour.png")
    fused = fuse_files(fuser, vis_path, ir_path, grey_out, resize=True, stretch=stretch)
    fused_c = fuse_files(fuser, vis_path, ir_path, colour_out, resize=True, stretch=stretch, colour=True)
    np.testing.assert_array_equal(fused_c, fused)  # the generator saw the same luminance
    written = iio.imread(colour_out)
    assert written.shape == (64, 96, 3) and iio.imread(grey_out).shape == (64, 96)
    # its luminance is the grey output (8-bit rounding of each channel aside) ...
    assert np.abs(images.read_grey(colour_out) - images.read_grey(grey_out)).max() <= 1.01 / 255
    # ... and its colour is the visible image's where it fits the gamut (the grey corner stays grey)
    _, cb0, cr0 = ycbcr.rgb_to_ycbcr(images.read_rgb(vis_path)[:64, :96])
    _, cb, cr = ycbcr.rgb_to_ycbcr(written / 255.0)
    kept = np.abs(cb - cb0) + np.abs(cr - cr0) < 4 / 255
    assert kept.mean() > 0.3
    assert np.hypot(cb - 0.5, cr - 0.5)[:16, :24].max() < 3 / 255
    assert np.hypot(cb - 0.5, cr - 0.5)[kept].mean() > 0.02  # the kept colour is not grey


def test_colour_leaves_grey_visible_images_grey(tmp_path, generator_file):
    rgb, ir = colour_scene()
    for d in ("v", "i", "a", "b"):
        (tmp_path / d).mkdir()
    iio.imwrite(str(tmp_path / "v" / "c.png"), (rgb * 255).round().astype(np.uint8))
    grey3 = np.repeat((rgb[..., 1:2] * 255).round().astype(np.uint8), 3, -1)  # grey stored as RGB
    iio.imwrite(str(tmp_path / "v" / "g.png"), grey3)
    for n in ("c", "g"):
        iio.imwrite(str(tmp_path / "i" / f"{n}.png"), (ir[::4, ::4] * 255).round().astype(np.uint8))
    fuser = Fuser(load_generator(generator_file))
    written, failed = fuse_dirs(fuser, tmp_path / "v", tmp_path / "i", tmp_path / "a", colour=True, log=lambda *_: None)
    assert not failed and len(written) == 2
    fuse_dirs(fuser, tmp_path / "v", tmp_path / "i", tmp_path / "b", log=lambda *_: None)
    assert iio.imread(tmp_path / "a" / "c.png").shape == (64, 96, 3)
    np.testing.assert_array_equal(iio.imread(tmp_path / "a" / "g.png"), iio.imread(tmp_path / "b" / "g.png"))


def test_colour_flag_from_the_command_line(tmp_path, generator_file):
    rgb, ir = colour_scene()
    vis_path, ir_path, out = str(tmp_path / "v.png"), str(tmp_path / "i.png"), str(tmp_path / "f.png")
    iio.imwrite(vis_path, (rgb * 255).round().astype(np.uint8))
    iio.imwrite(ir_path, (ir[::4, ::4] * 255).round().astype(np.uint8))
    r = cli("ddcgan_tf.cli.fuse", f"--vis={vis_path}", f"--ir={ir_path}", f"--output={out}",
            f"--checkpoint={generator_file}", "--colour")
    assert r.returncode == 0, r.stderr
    assert iio.imread(out).shape == (64, 96, 3) and "note:" not in r.stdout
    r = cli("ddcgan_tf.cli.fuse", f"--vis={vis_path}", f"--ir={ir_path}", f"--output={out}",
            f"--checkpoint={generator_file}")
    assert r.returncode == 0, r.stderr
    assert iio.imread(out).shape == (64, 96) and "--colour keeps its colour" in r.stdout
    r = cli("ddcgan_tf.cli.fuse", "--mode=pet-mri", f"--mri={vis_path}", f"--pet={ir_path}",
            f"--output={tmp_path / 'p.png'}", f"--checkpoint={generator_file}", "--colour")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "--colour" in r.stderr and "pet-mri" in r.stderr
