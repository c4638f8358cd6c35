"""Fusing with a trained generator: arrays, files and directories.

Size rule: the visible image is H x W with H, W multiples of the scale s, and the infrared
image is (H/s) x (W/s). With `resize=True` other sizes are made to fit, documented here:
the visible image is cropped at the bottom/right to the nearest multiple of s; an infrared
image of the visible size is downsampled the official way (scipy zoom 1/s, as for training);
any other infrared size is resampled bicubically to (H/s) x (W/s).
"""
import os

import tensorflow as tf

from ddcgan_tf import images, ycbcr
from ddcgan_tf.errors import InputError
from ddcgan_tf.patches import check_sizes, fit_sizes  # noqa: F401 (fit_sizes: the --resize rule)


class Fuser:
    """Wraps a generator in one compiled function that accepts any image size. `stretch`: how
    its outputs are written (the generator's option; fuse_files, `to_uint8`)."""

    def __init__(self, generator, jit_compile=False):
        self.generator = generator
        self.scale = generator.scale
        self.stretch = bool(getattr(generator, "stretch", False))
        spec = tf.TensorSpec((None, None, None, 1), tf.float32)
        self._fn = tf.function(lambda v, i: generator((v, i), training=False),
                               input_signature=(spec, spec), jit_compile=jit_compile)

    def prepare(self, vis, ir, resize=False, vis_name="visible image", ir_name="infrared image"):
        """H x W float32 arrays in [0, 1] of valid sizes (the resize rule applied if asked) from
        grey arrays (floats in [0, 1], or 8/16-bit integers, scaled); InputError otherwise."""
        vis, ir = images.grey_array(vis, vis_name), images.grey_array(ir, ir_name)
        if resize:
            vis, ir = fit_sizes(vis, ir, self.scale)
        check_sizes(vis.shape, ir.shape, self.scale, vis_name, ir_name)
        return vis, ir

    def __call__(self, vis, ir, resize=False, vis_name="visible image", ir_name="infrared image"):
        """vis (H, W) and ir (H/s, W/s) grey arrays (floats in [0, 1], or uint8/uint16) -> fused
        (H, W) float32 in [0, 1]."""
        vis, ir = self.prepare(vis, ir, resize, vis_name, ir_name)
        out = self._fn(vis[None, ..., None], ir[None, ..., None])
        return out.numpy()[0, ..., 0]

    def to_uint8(self, fused, stretch=None):
        """The 8-bit image fuse_files writes for `fused` (stretched if `stretch`, default the
        generator's option)."""
        return images.to_uint8(fused, stretch=self.stretch if stretch is None else stretch)

    def to_colour(self, fused, rgb, stretch=None):
        """RGB float image for `fused`, the fused luminance of the colour visible image `rgb`:
        stretched first if `stretch` (default the generator's option), then given the visible
        chroma (ddcgan_tf.ycbcr.keep_chroma); what `ddcgan-fuse --colour` writes."""
        stretch = self.stretch if stretch is None else stretch
        return ycbcr.keep_chroma(images.stretch_range(fused) if stretch else fused, rgb)


def fuse_files(fuser, vis_path, ir_path, output, resize=False, stretch=None, tile=None, colour=False):
    """Reads a pair, fuses it (in overlapping tiles of side `tile` if given; see tiling.py) and
    writes an 8-bit image, min-max stretched if `stretch` (default: fuser.stretch, what the
    weights record). With `colour`, a colour visible image keeps its colour: its luminance is
    fused and its chroma kept (ddcgan_tf.ycbcr; an RGB file is written); a grey one is fused as
    usual. Returns the fused float image (grey, unstretched)."""
    vis_path, ir_path = os.fspath(vis_path), os.fspath(ir_path)
    for source in (vis_path, ir_path):
        if os.path.exists(output) and os.path.exists(source) and os.path.samefile(output, source):
            raise InputError(output, "is an input image; writing the fused image there would destroy it")
    rgb = images.read_rgb(vis_path) if colour else None
    if rgb is not None and images.is_grey(rgb):
        rgb = None
    vis = ycbcr.luminance(rgb) if rgb is not None else images.read_grey(vis_path)
    vis, ir = fuser.prepare(vis, images.read_grey(ir_path), resize, vis_path, ir_path)
    if tile is not None:
        from ddcgan_tf.tiling import fuse_tiled
        fused = fuse_tiled(fuser, vis, ir, tile=tile)
    else:
        fused = fuser(vis, ir)
    if rgb is None:
        images.write_image(output, fused, stretch=fuser.stretch if stretch is None else stretch)
    else:  # --resize crops the visible image at the bottom/right: crop its colour the same way
        images.write_image(output, fuser.to_colour(fused, rgb[:vis.shape[0], :vis.shape[1]], stretch))
    return fused


def fuse_dirs(fuser, vis_dir, ir_dir, output_dir, resize=False, stretch=None, tile=None, log=print,
              colour=False):
    """Fuses every pair (paired by file stem); a bad pair is reported and skipped.

    Returns (written paths, [(name, error message)]).
    """
    pairs = images.pair_by_name(vis_dir, ir_dir)
    for label, source in (("visible", vis_dir), ("infrared", ir_dir)):
        if os.path.isdir(output_dir) and os.path.samefile(output_dir, source):
            raise InputError(output_dir, f"is the {label} input directory: the fused images would "
                                         f"overwrite or mix with the sources; choose another --output_dir")
    os.makedirs(output_dir, exist_ok=True)
    written, failed = [], []
    for stem, vpath, ipath in pairs:
        out = os.path.join(output_dir, stem + ".png")
        try:
            fuse_files(fuser, vpath, ipath, out, resize=resize, stretch=stretch, tile=tile, colour=colour)
            written.append(out)
            log(f"{stem}: {out}")
        except InputError as e:
            failed.append((stem, str(e)))
            log(f"{stem}: FAILED: {e}")
    return written, failed
