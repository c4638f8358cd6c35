"""Patch sets: folders of image pairs -> aligned 84x84 visible / 21x21 infrared patches in HDF5.

Layout written by `build_patch_set` (read by `ddcgan_tf.data`):
  vis  (N, P, P, 1)          uint8 / uint16 / float32; divide by attrs['max_value'] for [0, 1]
  ir   (N, P/s, P/s, 1)      float32 in [0, 1]
  attrs: format, patch, stride, scale, mode, sources (JSON list of file pairs), skipped, value_range

Infrared downsampling (when the infrared image has the visible size) follows the official code:
each full-resolution 84x84 infrared patch is reduced by `scipy.ndimage.zoom(patch, 1/s)`
(cubic spline, order 3, then clipped to [0, 1]) - the official `train.py` does exactly this per
batch. When the infrared image is already 1/s of the visible size (PET 64x64 with MRI
256x256), patches are cut at aligned positions and the stride must be a multiple of s.
"""
import json
import os

import h5py
import numpy as np
import scipy.ndimage

from ddcgan_tf import config as C
from ddcgan_tf import images
from ddcgan_tf.errors import InputError

FORMAT = "ddcgan_tf.patches/1"
MISMATCH_RULES = ("skip", "error", "resize")


def downsample_ir(patch, scale):
    """Official IR downsampling: scipy.ndimage.zoom(patch, 1/scale) (order 3), clipped to [0, 1]."""
    if scale == 1:
        return np.asarray(patch, np.float32)
    out = scipy.ndimage.zoom(np.asarray(patch, np.float64), 1.0 / scale)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _positions(length, patch, stride):
    return range(0, length - patch + 1, stride)


def cut_pair(vis, ir, patch=C.PATCH_SIZE, stride=C.STRIDE, scale=C.SCALE, where="pair"):
    """Aligned patches of one registered pair -> (vis (n, P, P), ir (n, P/s, P/s)) float32.

    `ir` either has the visible size (then each patch is downsampled the official way) or is
    exactly 1/scale of it (then it is cut at the aligned positions).
    """
    if patch % scale:
        raise InputError("--patch", f"patch size {patch} is not a multiple of the scale {scale}")
    h, w = vis.shape
    if h < patch or w < patch:
        raise InputError(where, f"visible image {w}x{h} is smaller than one {patch}x{patch} patch")
    low = ir.shape != vis.shape
    if low:
        if ir.shape != (h // scale, w // scale):
            raise InputError(where, f"infrared {ir.shape[1]}x{ir.shape[0]} is neither the visible size "
                                    f"{w}x{h} nor 1/{scale} of it")
        if stride % scale:
            raise InputError("--stride", f"stride {stride} must be a multiple of the scale {scale} "
                                         "when the infrared images are already low-resolution")
    p, q = patch, patch // scale
    vis_out, ir_out = [], []
    for y in _positions(h, p, stride):
        for x in _positions(w, p, stride):
            vis_out.append(vis[y:y + p, x:x + p])
            if low:
                ir_out.append(ir[y // scale:y // scale + q, x // scale:x // scale + q])
            else:
                ir_out.append(downsample_ir(ir[y:y + p, x:x + p], scale))
    return np.stack(vis_out).astype(np.float32), np.stack(ir_out).astype(np.float32)


def _vis_storage(paths):
    """Smallest exact storage type for the visible patches: uint8 for 8-bit sources, etc."""
    kinds = set()
    for p in paths:
        kinds.add(images.read_raw(p).dtype)
    if kinds <= {np.dtype(np.uint8)}:
        return np.uint8, 255.0
    if kinds <= {np.dtype(np.uint8), np.dtype(np.uint16)}:
        return np.uint16, 65535.0
    return np.float32, 1.0


def build_patch_set(vis_dir, ir_dir, output, patch=C.PATCH_SIZE, stride=C.STRIDE, scale=C.SCALE,
                    exclude=(), on_mismatch="skip", mode="vis-ir", read_ir=None, log=print):
    """Cuts every pair of vis_dir / ir_dir (paired by file stem) into one HDF5 patch set.

    on_mismatch: what to do with a pair whose sizes do not fit: "skip" it (reported, and listed
    in attrs['skipped']), stop with an "error", or "resize" the infrared image to the expected
    size (bicubic). `exclude` lists stems to leave out (e.g. held-out validation scenes).
    read_ir: function path -> grey [0, 1] image for the infrared side (PET intensity, say).
    Returns a summary dict. The file appears only when complete (written to a temp name first).
    """
    if on_mismatch not in MISMATCH_RULES:
        raise InputError("--on_mismatch", f"must be one of {MISMATCH_RULES}, got {on_mismatch!r}")
    if stride < 1:
        raise InputError("--stride", f"must be positive, got {stride}")
    read_ir = read_ir or images.read_grey
    pairs = [p for p in images.pair_by_name(vis_dir, ir_dir) if p[0] not in set(exclude)]
    if not pairs:
        raise InputError(vis_dir, "no image pairs left after --exclude")
    vis_dtype, vis_max = _vis_storage([v for _, v, _ in pairs])
    q = patch // scale
    sources, skipped = [], []

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            dv = f.create_dataset("vis", (0, patch, patch, 1), maxshape=(None, patch, patch, 1),
                                  dtype=vis_dtype, chunks=(64, patch, patch, 1))
            di = f.create_dataset("ir", (0, q, q, 1), maxshape=(None, q, q, 1), dtype=np.float32,
                                  chunks=(64, q, q, 1))
            for stem, vpath, ipath in pairs:
                vis, ir = images.read_grey(vpath), read_ir(ipath)
                try:
                    vp, ip = cut_pair(vis, ir, patch, stride, scale, where=f"{vpath} / {ipath}")
                except InputError as e:
                    if on_mismatch == "error" or not _is_size_problem(vis, ir, scale):
                        raise
                    if on_mismatch == "skip":
                        skipped.append({"name": stem, "reason": e.problem})
                        log(f"skipping {stem}: {e.problem}")
                        continue
                    target = vis.shape if ir.shape[0] > vis.shape[0] // scale + 1 else (
                        vis.shape[0] // scale, vis.shape[1] // scale)
                    ir = _resize(ir, target)
                    vp, ip = cut_pair(vis, ir, patch, stride, scale, where=f"{vpath} / {ipath}")
                n0, n = dv.shape[0], len(vp)
                dv.resize(n0 + n, axis=0)
                di.resize(n0 + n, axis=0)
                dv[n0:] = np.rint(vp[..., None] * vis_max).astype(vis_dtype) if vis_max != 1.0 else vp[..., None]
                di[n0:] = ip[..., None]
                sources.append({"name": stem, "vis": os.path.abspath(vpath), "ir": os.path.abspath(ipath),
                                "patches": n})
                log(f"{stem}: {n} patches")
            if dv.shape[0] == 0:
                raise InputError(vis_dir, "no patches were cut (every pair was skipped or too small)")
            dv.attrs["max_value"] = vis_max
            di.attrs["max_value"] = 1.0
            f.attrs.update(format=FORMAT, patch=patch, stride=stride, scale=scale, mode=mode,
                           sources=json.dumps(sources), skipped=json.dumps(skipped),
                           value_range="[0, 1] after dividing by each dataset's max_value",
                           ir_downsampling="scipy.ndimage.zoom(patch, 1/scale), order 3, clipped")
            count[0] = dv.shape[0]

    count = [0]
    images.atomic_write(output, write, suffix=".h5")
    return {"output": os.fspath(output), "patches": count[0], "pairs": len(sources), "skipped": skipped}


def _is_size_problem(vis, ir, scale):
    return ir.shape != vis.shape and ir.shape != (vis.shape[0] // scale, vis.shape[1] // scale)


def _resize(img, shape):
    factors = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = scipy.ndimage.zoom(img.astype(np.float64), factors, order=3)
    out = out[:shape[0], :shape[1]]
    if out.shape != tuple(shape):
        out = np.pad(out, [(0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])], mode="edge")
    return np.clip(out, 0, 1).astype(np.float32)
