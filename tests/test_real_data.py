"""The TNO path on real images (skips cleanly without ../shared)."""
import json
import os

import h5py
import numpy as np

from ddcgan_tf import config, images, metrics, shipped, ycbcr
from ddcgan_tf.checkpoint import load_generator
from ddcgan_tf.fuse import Fuser, fit_sizes, fuse_files
from ddcgan_tf.patches import build_patch_set

from conftest import shared_path

PAIRS = ("wall", "Farm")


def test_prepare_two_tno_pairs(tmp_path):
    tno = shared_path("tno")
    for side in ("vis", "ir"):
        os.makedirs(tmp_path / side)
        for name in PAIRS:
            os.symlink(os.path.join(tno, side, name + ".jpg"), tmp_path / side / (name + ".jpg"))
    out = str(tmp_path / "tno.h5")
    summary = build_patch_set(str(tmp_path / "vis"), str(tmp_path / "ir"), out, log=lambda *_: None)
    # wall 280x280 -> 15 x 15 positions; Farm 472x371 -> 28 x 21
    assert summary["patches"] == 15 * 15 + 28 * 21
    with h5py.File(out, "r") as f:
        assert f["vis"].shape[1:] == (84, 84, 1) and f["ir"].shape[1:] == (21, 21, 1)
        assert 0.0 <= float(f["ir"][:].min()) and float(f["ir"][:].max()) <= 1.0


def test_shipped_weights_fuse_a_held_out_tno_scene():
    tno = shared_path("tno")
    vis = images.read_grey(os.path.join(tno, "vis", "wall.jpg"))
    ir_full = images.read_grey(os.path.join(tno, "ir", "wall.jpg"))
    vis, ir = fit_sizes(vis, ir_full, 4)
    fused = Fuser(load_generator(shipped.default_checkpoint("vis-ir")))(vis, ir)
    assert fused.shape == vis.shape and np.isfinite(fused).all()
    # the fused image keeps the infrared content: its 4x-pooled version is closer to the
    # low-resolution infrared than the visible image's is
    assert metrics.lowres_fidelity(fused, ir, 4)["PSNR_lr"] > metrics.lowres_fidelity(vis, ir, 4)["PSNR_lr"]


def test_validation_splits_follow_their_rules():
    """The shipped weights were validated on the scenes they never saw, the split of the
    documented rule (every 4th size-matched pair in sorted order, from the 4th)."""
    tno = shared_path("tno")
    with open(os.path.join(shipped.CHECKPOINT_ROOT, "vis-ir", shipped.MANIFEST_FILE)) as f:
        assert tuple(json.load(f)["data"]["held_out"]) == config.TNO_HELD_OUT_8
    vis_files = images.list_images(os.path.join(tno, "vis"))
    ir_files = images.list_images(os.path.join(tno, "ir"))
    matched = sorted(n for n in vis_files
                     if images.read_grey(vis_files[n]).shape == images.read_grey(ir_files[n]).shape)
    assert len(matched) == 32
    assert tuple(matched[3::4]) == config.TNO_HELD_OUT_8


def test_the_near_copy_table_is_what_the_images_say():
    """config.TNO_NEAR_COPIES lists every training pair that nearly copies a scene of a split
    (houses_with_3_men is Movie_14 re-toned), and a split's training exclusions hold them."""
    from ddcgan_tf.patches import near_copies
    tno = shared_path("tno")
    pairs = images.pair_by_name(os.path.join(tno, "vis"), os.path.join(tno, "ir"))
    for split, held in config.TNO_SPLITS.items():
        found = near_copies([p for p in pairs if p[0] not in held], [p for p in pairs if p[0] in held])
        assert sorted((c[1], c[0]) for c in found) == sorted(
            (h, c) for h in held for c in config.TNO_NEAR_COPIES.get(h, ())), split
        assert set(c[0] for c in found) <= set(config.tno_training_exclude(split))
    assert config.tno_training_exclude("held_out_8") == config.TNO_HELD_OUT_8 + ("Movie_14",)


def test_colour_keeps_a_real_colour_visible_image_its_hue(tmp_path):
    """Farm (held out of training) is one of TNO's three colour visible images (with Bosnia
    and barbed_wire_1): `--colour` fuses its luminance and keeps its hue."""
    tno = shared_path("tno")
    vis_path, ir_path = os.path.join(tno, "vis", "Farm.jpg"), os.path.join(tno, "ir", "Farm.jpg")
    assert images.is_colour(vis_path)
    fuser = Fuser(load_generator(shipped.default_checkpoint("vis-ir")))
    grey_out, colour_out = str(tmp_path / "grey.png"), str(tmp_path / "colour.png")
    fuse_files(fuser, vis_path, ir_path, grey_out, resize=True)
    fuse_files(fuser, vis_path, ir_path, colour_out, resize=True, colour=True)
    written = images.read_rgb(colour_out)
    h, w = written.shape[:2]
    # the luminance is the grey output, 8-bit rounding of each channel aside
    assert np.abs(ycbcr.luminance(written) - images.read_grey(grey_out)).max() <= 1.01 / 255
    _, cb0, cr0 = ycbcr.rgb_to_ycbcr(images.read_rgb(vis_path)[:h, :w])
    _, cb, cr = ycbcr.rgb_to_ycbcr(written)
    c0, c = (cb0 - 0.5) + 1j * (cr0 - 0.5), (cb - 0.5) + 1j * (cr - 0.5)
    coloured = np.abs(c0) > 0.05  # clearly coloured pixels (grass, roofs, brick)
    assert coloured.mean() > 0.2
    kept = coloured & (np.abs(c) > 0.02)
    hue_shift = np.abs(np.angle(c[kept] / c0[kept]))
    assert np.median(hue_shift) < 0.1 and np.mean(hue_shift < 0.35) > 0.95  # radians
    assert np.percentile(np.abs(c[coloured]) / np.abs(c0[coloured]), 99) < 1.1  # desaturated at most
