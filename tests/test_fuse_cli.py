"""Fusing (library and CLI) and the prepare -> train -> fuse command line path."""
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from ddcgan_tf.checkpoint import load_generator
from ddcgan_tf.errors import InputError
from ddcgan_tf.fuse import Fuser, fit_sizes, fuse_files

from conftest import REPO, synthetic_pair, write_pairs


def cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_fuser_handles_any_multiple_of_four_and_matches_the_model(generator_file):
    g = load_generator(generator_file)
    fuser = Fuser(g)
    for h, w in ((64, 96), (40, 28)):
        vis, ir = synthetic_pair(h, w)
        out = fuser(vis, ir[::4, ::4])
        assert out.shape == (h, w) and out.dtype == np.float32
        direct = g((vis[None, ..., None], ir[::4, ::4][None, ..., None])).numpy()[0, ..., 0]
        np.testing.assert_allclose(out, direct, atol=1e-5)


def test_fuser_reads_arrays_as_images_are_read_and_refuses_others(generator_file):
    """A Jupyter user passes iio.imread arrays: 8/16-bit integers are scaled as read_grey scales
    them (they were fused as 0..255 floats, a saturated image); floats outside [0, 1], NaN and
    arrays that are not grey H x W images are refused in one line, not fused or a traceback."""
    fuser = Fuser(load_generator(generator_file))
    vis, ir = synthetic_pair(32, 48)
    ir = ir[::4, ::4]
    v8, i8 = np.round(vis * 255).astype(np.uint8), np.round(ir * 255).astype(np.uint8)
    want = fuser(v8 / 255.0, i8 / 255.0)
    np.testing.assert_array_equal(fuser(v8, i8), want)
    np.testing.assert_allclose(fuser(v8.astype(np.uint16) * 257, i8.astype(np.uint16) * 257), want, atol=1e-6)
    np.testing.assert_array_equal(fuser(v8[..., None] / 255.0, i8 / 255.0), want)  # H x W x 1
    for bad_vis, problem in ((vis * 255, "must lie in \\[0, 1\\]"), (np.where(vis > 0.5, np.nan, vis), "NaN"),
                             (np.stack([vis] * 3, -1), "shape \\(32, 48, 3\\); expected a grey"),
                             (vis[None], "shape \\(1, 32, 48\\)")):
        with pytest.raises(InputError, match=problem):
            fuser(bad_vis, ir)


def test_resize_rule_crops_and_downsamples(generator_file):
    vis, ir = synthetic_pair(66, 99)
    v, i = fit_sizes(vis, ir, 4)  # full-resolution IR of the same size
    assert v.shape == (64, 96) and i.shape == (16, 24)
    v, i = fit_sizes(vis, ir[:30, :40], 4)  # any other size is resampled
    assert i.shape == (16, 24)
    fuser = Fuser(load_generator(generator_file))
    with pytest.raises(InputError, match="must be 24x16"):
        fuser(v, ir)
    with pytest.raises(InputError, match="is 16x24 but must be 24x16"):  # the right pixel count, turned
        fuser(v, np.zeros((24, 16), np.float32))
    assert fuser(vis, ir, resize=True).shape == (64, 96)


def test_prepare_train_fuse_from_the_command_line(tmp_path):
    vis_dir, ir_dir = write_pairs(str(tmp_path / "src"), names=("a", "b", "c"))
    data, model_dir = str(tmp_path / "set.h5"), str(tmp_path / "run")
    r = cli("ddcgan_tf.cli.prepare", f"--vis_dir={vis_dir}", f"--ir_dir={ir_dir}", f"--output={data}",
            "--patch=32", "--stride=16")
    assert r.returncode == 0, r.stderr
    assert "wrote 45 patches from 3 pairs" in r.stdout
    r = cli("ddcgan_tf.cli.train", f"--data={data}", f"--model_dir={model_dir}", "--steps=2",
            "--batch_size=4", "--checkpoint_every=1", "--verbose=0")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(os.path.join(model_dir, "ckpt-00000002.h5"))
    assert os.listdir(os.path.join(model_dir, "logs"))  # TensorBoard events
    # single pair; the IR here is full resolution, so --resize downsamples it
    out = str(tmp_path / "fused.png")
    r = cli("ddcgan_tf.cli.fuse", f"--vis={vis_dir}/a.png", f"--ir={ir_dir}/a.png", f"--output={out}",
            f"--checkpoint={model_dir}", "--resize")
    assert r.returncode == 0, r.stderr
    img = iio.imread(out)
    assert img.shape == (64, 96) and img.dtype == np.uint8
    # directory mode with one bad pair: the others are fused, the bad one is reported, exit 2
    lowres = tmp_path / "ir_low"
    lowres.mkdir()
    for name in ("a", "b"):
        iio.imwrite(str(lowres / f"{name}.png"), iio.imread(f"{ir_dir}/{name}.png")[::4, ::4])
    iio.imwrite(str(lowres / "c.png"), np.zeros((5, 5), np.uint8))
    r = cli("ddcgan_tf.cli.fuse", f"--vis_dir={vis_dir}", f"--ir_dir={lowres}",
            f"--output_dir={tmp_path / 'out'}", f"--checkpoint={model_dir}")
    assert r.returncode == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png"]
    assert "c.png" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("problem", ["missing", "not_an_image", "truncated"])
def test_fuse_errors_are_one_line_and_leave_no_output(tmp_path, generator_file, problem):
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a",))
    bad = tmp_path / "bad.png"
    if problem == "not_an_image":
        bad.write_text("this is not a PNG")
    elif problem == "truncated":
        data = open(f"{vis_dir}/a.png", "rb").read()
        bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "fused.png"
    r = cli("ddcgan_tf.cli.fuse", f"--vis={bad}", f"--ir={ir_dir}/a.png", f"--output={out}",
            f"--checkpoint={generator_file}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in r.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


@pytest.mark.parametrize("flags", [["--tile=30"], ["--tile=0"], ["--dirs", "--tile=50"],
                                   ["--mode=pet-mri", "--tile=64"], ["--mode=pet-mri", "--resize"],
                                   ["--demo", "--tile=512"]])
def test_flags_that_cannot_apply_are_one_line_errors_before_any_output(tmp_path, generator_file, flags):
    """A tile that does not fit the scale, or a vis-ir-only flag in pet-mri mode, is refused in
    one line before anything is written (it used to be a traceback, a silent whole-image fuse,
    or a PET resize error that asked for the --resize just given)."""
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b"), ir_scale=4)
    out = tmp_path / "out"
    if "--dirs" in flags or "--demo" in flags:
        io = [f"--output_dir={out}"] + ([f"--vis_dir={vis_dir}", f"--ir_dir={ir_dir}"] if "--dirs" in flags else [])
    elif "--mode=pet-mri" in flags:
        io = [f"--mri={vis_dir}/a.png", f"--pet={ir_dir}/a.png", f"--output={out}.png"]
    else:
        io = [f"--vis={vis_dir}/a.png", f"--ir={ir_dir}/a.png", f"--output={out}.png"]
    r = cli("ddcgan_tf.cli.fuse", *io, f"--checkpoint={generator_file}", *[f for f in flags if f != "--dirs"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert ("--tile" if any(f.startswith("--tile") for f in flags) else "--resize") in lines[0]
    assert not (tmp_path / "out.png").exists() and not (out.exists() and os.listdir(out))


def test_tiled_file_fusion_matches_whole_image_fusion(generator_file, tmp_path):
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a",), size=(96, 128), ir_scale=4)
    fuser = Fuser(load_generator(generator_file, bn_mode="moving"))
    whole = fuse_files(fuser, f"{vis_dir}/a.png", f"{ir_dir}/a.png", str(tmp_path / "whole.png"))
    tiled = fuse_files(fuser, f"{vis_dir}/a.png", f"{ir_dir}/a.png", str(tmp_path / "tiled.png"), tile=64)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_array_equal(iio.imread(tmp_path / "whole.png"), iio.imread(tmp_path / "tiled.png"))


def test_weights_recorded_as_stretched_are_written_stretched_unless_told_not_to(generator_file, tmp_path):
    from ddcgan_tf import images
    from ddcgan_tf.checkpoint import save_generator

    g = load_generator(generator_file, stretch=True)
    for w in g.decoder_convs[-1].weights:  # outputs squeezed near 0.5, so a stretch shows
        w.assign(w * 0.05)
    stretched = str(tmp_path / "stretched.h5")
    save_generator(g, stretched)
    assert load_generator(stretched).stretch and not load_generator(generator_file).stretch
    assert not load_generator(stretched, stretch=False).stretch
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a",), size=(48, 64), ir_scale=4)
    args = ("ddcgan_tf.cli.fuse", "--vis", f"{vis_dir}/a.png", "--ir", f"{ir_dir}/a.png")
    for flag, name in ((None, "default"), ("--nostretch", "plain")):
        r = cli(*args, "--checkpoint", stretched, "--output", str(tmp_path / f"{name}.png"), *([flag] if flag else []))
        assert r.returncode == 0, r.stderr[-2000:]
    fused = Fuser(g)(images.read_grey(f"{vis_dir}/a.png"), images.read_grey(f"{ir_dir}/a.png"))
    apart = images.to_uint8(fused, stretch=True).astype(int) - images.to_uint8(fused)
    assert np.abs(apart).mean() > 5  # the two ways of writing it differ (the check below can fail)
    for name, stretch in (("default", True), ("plain", False)):  # to 1 grey level: another process
        diff = iio.imread(tmp_path / f"{name}.png").astype(int) - images.to_uint8(fused, stretch=stretch)
        assert np.abs(diff).max() <= 1 and np.mean(diff != 0) < 0.01


def _shipped_inputs(tmp_path, mode):
    """Small inputs for one CLI call: a 64x64 visible / MRI image and its 16x16 infrared / colour
    PET partner (8-bit PNGs); returns (flags, the two paths)."""
    vis, ir = synthetic_pair(64, 64)
    ir = ir[::4, ::4]
    big, small = str(tmp_path / f"{mode}-big.png"), str(tmp_path / f"{mode}-small.png")
    iio.imwrite(big, np.round(vis * 255).astype(np.uint8))
    if mode == "pet-mri":  # a colour PET, so the IHS colour path runs
        iio.imwrite(small, np.round(np.stack([ir, 1 - ir, 0.5 * ir], -1) * 255).astype(np.uint8))
        return ["--mode=pet-mri", f"--mri={big}", f"--pet={small}"], big, small
    iio.imwrite(small, np.round(ir * 255).astype(np.uint8))
    return [f"--vis={big}", f"--ir={small}"], big, small


@pytest.mark.parametrize("mode", ["vis-ir", "pet-mri"])
def test_without_a_checkpoint_each_mode_fuses_with_its_own_shipped_weights(tmp_path, monkeypatch, mode):
    """ddcgan-fuse with no --checkpoint writes what --checkpoint checkpoints/<mode> writes (the
    mode's shipped weights, with the BN mode and stretch they record), not what the other
    mode's weights write."""
    from ddcgan_tf import images
    from ddcgan_tf.ihs import fuse_pet_mri

    monkeypatch.delenv("DDCGAN_CHECKPOINTS", raising=False)  # the repository's checkpoints/
    flags, big, small = _shipped_inputs(tmp_path, mode)
    out = tmp_path / "default.png"
    r = cli("ddcgan_tf.cli.fuse", *flags, f"--output={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    written = iio.imread(out).astype(int)

    def expected(weights):  # what --checkpoint checkpoints/<weights> writes, fused here
        fuser = Fuser(load_generator(os.path.join(REPO, "checkpoints", weights)))
        if mode == "pet-mri":
            fused = fuse_pet_mri(fuser, images.read_grey(big), images.read_rgb(small))
        else:
            fused = fuser(images.read_grey(big), images.read_grey(small))
        return images.to_uint8(fused, stretch=fuser.stretch).astype(int)

    other = "pet-mri" if mode == "vis-ir" else "vis-ir"
    own, wrong = expected(mode), expected(other)
    assert written.shape == own.shape == ((64, 64, 3) if mode == "pet-mri" else (64, 64))
    assert np.abs(wrong - own).mean() > 5  # the two weights write other images (the check can fail)
    diff = written - own  # to 1 grey level: another process
    assert np.abs(diff).max() <= 1 and np.mean(diff != 0) < 0.01


def test_colour_output_with_the_shipped_weights_is_stretched_as_they_record(tmp_path, monkeypatch):
    """--colour with the shipped vis-ir weights (which record stretch=True) and no --stretch flag:
    the fused luminance is min-max stretched as the grey output is (it spans 0..255), not
    written as the generator gives it (here about 40..190)."""
    from ddcgan_tf import images, ycbcr
    from ddcgan_tf.shipped import default_checkpoint

    monkeypatch.delenv("DDCGAN_CHECKPOINTS", raising=False)
    vis, ir = synthetic_pair(64, 64)
    rgb = np.round(np.stack([vis, vis ** 1.5, np.sqrt(vis)], -1) * 255).astype(np.uint8)
    vis_path, ir_path, out = (str(tmp_path / n) for n in ("vis.png", "ir.png", "fused.png"))
    iio.imwrite(vis_path, rgb)
    iio.imwrite(ir_path, np.round(ir[::4, ::4] * 255).astype(np.uint8))
    r = cli("ddcgan_tf.cli.fuse", f"--vis={vis_path}", f"--ir={ir_path}", f"--output={out}", "--colour")
    assert r.returncode == 0, r.stderr[-2000:]
    written = iio.imread(out)
    assert written.shape == (64, 64, 3) and not images.is_grey(written)
    y = ycbcr.luminance(written / 255.0) * 255
    fuser = Fuser(load_generator(default_checkpoint("vis-ir")))
    assert fuser.stretch  # what the shipped weights record
    fused = fuser(ycbcr.luminance(rgb / 255.0), ir[::4, ::4])
    assert fused.max() - fused.min() < 0.8  # unstretched, it would not span the range
    assert y.min() < 2 and y.max() > 253
    np.testing.assert_allclose(y, images.stretch_range(fused) * 255, atol=2)
