"""A synthetic visible/infrared scene for the no-data demo (`ddcgan-fuse --demo`) and the tests.

The visible image is a textured scene (a sky gradient, a brick wall, a striped road, sensor
noise); the infrared image is smooth and cool except for a warm person-shaped object that the
visible image does not show - the situation fusion is for.
"""
import os

import numpy as np
import scipy.ndimage

from ddcgan_tf import images, metrics
from ddcgan_tf.patches import downsample_ir


def synthetic_scene(h=256, w=320, seed=0):
    """-> (visible, infrared) H x W float32 in [0, 1], both at full resolution."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    vis = 0.75 - 0.35 * y / h                                   # sky-to-ground gradient
    wall = (y > 0.35 * h) & (y < 0.7 * h)
    bricks = ((np.floor(y / 8) % 2 == 0) ^ (np.floor((x + 8 * (np.floor(y / 8) % 2)) / 16) % 2 == 0))
    vis = np.where(wall, 0.35 + 0.2 * bricks, vis)
    road = y >= 0.7 * h
    vis = np.where(road, 0.25 + 0.15 * (np.sin(x / 5.0 + y / 9.0) > 0.6), vis)
    vis = vis + 0.03 * rng.standard_normal((h, w))
    ir = 0.25 + 0.1 * scipy.ndimage.gaussian_filter(vis, 6)     # cool, blurry background
    cy, cx = 0.55 * h, 0.6 * w                                  # a warm person behind the wall
    body = ((x - cx) / (0.05 * w)) ** 2 + ((y - cy) / (0.16 * h)) ** 2 < 1
    head = ((x - cx) ** 2 + (y - (cy - 0.2 * h)) ** 2) < (0.035 * w) ** 2
    ir = np.where(body | head, 0.9, ir) + 0.01 * rng.standard_normal((h, w))
    return np.clip(vis, 0, 1).astype(np.float32), np.clip(ir, 0, 1).astype(np.float32)


def side_by_side(panels, gap=4):
    """Grey panels of equal height -> one image with white gaps between them."""
    h = panels[0].shape[0]
    parts = []
    for k, p in enumerate(panels):
        if k:
            parts.append(np.ones((h, gap), np.float32))
        parts.append(np.asarray(p, np.float32))
    return np.concatenate(parts, axis=1)


def run_demo(fuser, output_dir, log=print):
    """Fuses the synthetic scene; writes demo_vis.png, demo_ir.png, demo_fused.png and
    demo_side_by_side.png (visible | infrared upsampled 4x | fused); returns the metric dict of
    the fused image as written (stretched when the weights record it, Fuser.stretch)."""
    os.makedirs(output_dir, exist_ok=True)
    vis, ir_full = synthetic_scene()
    ir = downsample_ir(ir_full, fuser.scale)
    fused = fuser.to_uint8(fuser(vis, ir)) / 255.0  # as ddcgan-fuse writes it (stretched or not)
    ir_shown = np.kron(ir, np.ones((fuser.scale, fuser.scale), np.float32))
    paths = {}
    for name, img in (("vis", vis), ("ir", ir), ("fused", fused),
                      ("side_by_side", side_by_side([vis, ir_shown, fused]))):
        paths[name] = os.path.join(output_dir, f"demo_{name}.png")
        images.write_image(paths[name], img)
    scores = metrics.evaluate_triple(fused, vis, ir)
    scores.update(metrics.lowres_fidelity(fused, ir, fuser.scale))
    log(f"wrote {paths['side_by_side']} (visible | infrared x{fuser.scale} | fused)")
    log("| " + " | ".join(scores) + " |")
    log("|" + "---:|" * len(scores))
    log("| " + " | ".join(f"{v:.4g}" for v in scores.values()) + " |")
    return scores
