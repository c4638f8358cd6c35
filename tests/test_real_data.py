"""The TNO path on real images (skips cleanly without ../shared)."""
import os

import h5py
import numpy as np

from ddcgan_tf import images, metrics, shipped
from ddcgan_tf.checkpoint import load_generator
from ddcgan_tf.fuse import Fuser, fit_sizes
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
