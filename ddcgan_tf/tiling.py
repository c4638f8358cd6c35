"""Fusing images too large for memory in one piece: overlapping tiles, exact, no seams.

`fuse_tiled(fuser, vis, ir, tile=512, overlap=32)` cuts the H x W visible image into tiles of
at most `tile` x `tile` pixels that overlap by at least `overlap` pixels, fuses each tile (with
its (tile/s) x (tile/s) infrared tile) through `Fuser.__call__`, and keeps only the *valid
centre* of each tile: the image is partitioned at the middle of every overlap and each part is
taken from the tile it lies in. Peak memory is that of fusing one tile (plus the input and
output arrays), whatever the image size.

Tile grid: tile starts are multiples of `tile - overlap`; the last tile along each axis is
shifted to end at the image border (so any H, W work, not only multiples of the tile).
`tile` and `overlap` are in visible pixels and must be multiples of the scale s, so every tile
starts on the infrared grid. An image no larger than one tile is fused whole.

Receptive field (why the result is exact): the generator is the 3x3 transposed conv of the
visible image (SAME: 1 pixel of zero padding), the s x s transposed conv of the infrared image
(3x3 kernel, stride s: each output pixel comes from exactly one infrared pixel, no padding), then
3x3 reflect-padded convs: conv1_1, four dense-block convs and the decoder's five, plus the
official decoder's second use of conv2_1, i.e. 11 convs (10 with official_decoder=False). A
tile's cut edge therefore disturbs the output within `receptive_radius(generator)` = 12 pixels
of it (11 with official_decoder=False; scale 1 has no deconvs: 11 or 10); further inside, a
tile's output equals the whole image's output exactly (up to float rounding). Cutting at the
middle of the overlap thus needs overlap >= 2 * 12 = 24 (`min_overlap`, rounded up to a multiple
of s); the default 32 leaves 16 pixels on each side. A smaller overlap is allowed but warns: the
output is then wrong within a few pixels of the cuts (max error ~1e-4 at overlap 16, ~2e-3 at 8).
(Scale 2: the IR deconv also reaches 1 pixel across a cut, no more than deconv_vis; scale 4 and 8:
none.) Measured (tests/test_tiling.py, random generators): with bn_mode="moving" the tiled
output equals whole-image fusion bit for bit (max |diff| 0.0); with "batch" and global
statistics it differs by the float32 rounding of the per-channel moments, max |diff| 4e-6 to
1.1e-5 (the tests allow 5e-5; 8-bit output steps are 3.9e-3).

Memory (benchmarks/bench_tiling.py, 2-core CPU): tiled 2048x2048 at tile 512 peaks at 1.36 GB
RSS, the same as fusing one 512x512 image (1.33 GB); a whole 1024x1024 fuse peaks at 4.38 GB.

BN statistics:
  * bn_mode="moving": the generator is a fixed function of a local window, so the above holds
    as is. This is the mode tiling is meant for.
  * bn_mode="batch" (per-image statistics, the official way and `load_generator`'s default):
    a tile normalised with its own statistics differs from the whole image (visible seams).
    `batch_stats="global"` (default) computes the *whole image's* per-channel statistics of
    every BN layer exactly, tile by tile: BN layer k's statistics depend on those of the
    layers before it, so there is one tiled pass per BN layer (9), each layer's moments
    gathered over the tiles' valid parts and combined in float64 (Chan et al.); the passes stop
    at the layer they measure (the rest of the graph is pruned), so they cost about 4 full
    passes; a final tiled pass fuses with those statistics frozen (a "moving"-mode copy of the
    generator). The result equals whole-image "batch" fusion up to float rounding, at about
    5x the time of one tiled pass. `batch_stats="tile"` normalises each tile with its own
    statistics (one pass, seams: not the official output; it warns).
"""
import math
import warnings
import weakref

import numpy as np
import tensorflow as tf

from ddcgan_tf.errors import InputError
from ddcgan_tf.fuse import Fuser
from ddcgan_tf.generator import Generator
from ddcgan_tf.layers import BatchNorm

BATCH_STATS = ("global", "tile")


def receptive_radius(generator):
    """Pixels (visible resolution) by which a cut edge reaches into a tile's output."""
    convs = 1 + len(generator.dense_convs) + len(generator.decoder_convs)
    convs += 1 if generator.official_decoder else 0
    return convs + (1 if generator.scale > 1 else 0)  # + deconv_vis (3x3, SAME)


def min_overlap(generator):
    """The smallest overlap that makes tiled fusion exact: 2 radii, a multiple of the scale."""
    s = generator.scale
    return int(math.ceil(2 * receptive_radius(generator) / s) * s)


def axis_plan(length, tile, overlap):
    """[(start, end, own_start, own_end)] along one axis: tiles and the parts each one supplies.

    Tiles start at multiples of tile - overlap; the last one ends at `length`. Consecutive
    tiles' parts meet at the middle of their overlap. One tile of `length` if length <= tile.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    step = tile - overlap
    starts = [min(k * step, length - tile) for k in range(math.ceil((length - tile) / step) + 1)]
    cuts = [0] + [(b + a + tile) // 2 for a, b in zip(starts, starts[1:])] + [length]
    return [(a, a + tile, cuts[k], cuts[k + 1]) for k, a in enumerate(starts)]


def tile_plan(shape, tile, overlap):
    """[((y0, y1, x0, x1), (oy0, oy1, ox0, ox1))]: tile extent and owned part, image coords."""
    rows, cols = axis_plan(shape[0], tile, overlap), axis_plan(shape[1], tile, overlap)
    return [((y0, y1, x0, x1), (oy0, oy1, ox0, ox1))
            for y0, y1, oy0, oy1 in rows for x0, x1, ox0, ox1 in cols]


OVERLAP = 32  # pixels each tile reaches past its valid centre: >= min_overlap (24, official G)


def check_tile(tile, scale, overlap=OVERLAP):
    """InputError unless tiles of side `tile` overlapping by `overlap` fit the scale: both
    multiples of it, 0 <= overlap < tile."""
    def whole(v):
        return not isinstance(v, bool) and isinstance(v, (int, np.integer))

    if not whole(overlap) or overlap < 0 or overlap % scale:
        raise InputError("overlap", f"must be a non-negative multiple of the scale {scale}, got {overlap!r}")
    if not whole(tile) or tile % scale or tile <= overlap:
        raise InputError("--tile", f"must be a multiple of the scale {scale} larger than the overlap "
                                   f"{overlap}, got {tile!r}")


def fuse_tiled(fuser, vis, ir, tile=512, overlap=OVERLAP, batch_stats="global"):
    """Fuses vis (H, W) with ir (H/s, W/s) tile by tile; returns (H, W) float32 in [0, 1].

    Equal to `fuser(vis, ir)` up to float rounding when overlap >= min_overlap(generator) (24
    for the official generator), with memory bounded by the tile size. See the module docstring
    (tile grid, receptive field, BN modes). `batch_stats` matters only for bn_mode="batch".
    """
    generator, s = fuser.generator, fuser.scale
    check_tile(tile, s, overlap)
    if batch_stats not in BATCH_STATS:
        raise ValueError(f"batch_stats must be one of {BATCH_STATS}, got {batch_stats!r}")
    vis, ir = fuser.prepare(vis, ir)
    h, w = vis.shape
    if h <= tile and w <= tile:
        return fuser(vis, ir)
    if overlap < min_overlap(generator):
        warnings.warn(f"overlap {overlap} < {min_overlap(generator)} (2 x the receptive radius "
                      f"{receptive_radius(generator)}): tiled output differs from whole-image "
                      f"output near the tile cuts", RuntimeWarning, stacklevel=2)
    plan = tile_plan(vis.shape, tile, overlap)
    if generator.bn_mode == "batch":
        if batch_stats == "tile":
            warnings.warn("bn_mode='batch' with batch_stats='tile': every tile is normalised with "
                          "its own statistics, so tiles disagree (seams)", RuntimeWarning, stacklevel=2)
        else:
            fuser = _global_statistics_for(fuser).fit(vis, ir, plan)
    out = np.empty((h, w), np.float32)
    for (y0, y1, x0, x1), (oy0, oy1, ox0, ox1) in plan:
        fused = fuser(vis[y0:y1, x0:x1], ir[y0 // s:y1 // s, x0 // s:x1 // s])
        out[oy0:oy1, ox0:ox1] = fused[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
    return out


class _MomentsBatchNorm(BatchNorm):
    """"moving"-mode BN that, while `_window` is set (during tracing), also records the mean and
    the sum of squared deviations of its input over that window (rows y0:y1, columns x0:x1)."""

    def __init__(self, **kwargs):
        super().__init__(mode="moving", **kwargs)
        object.__setattr__(self, "_window", None)    # plain attributes: not tracked by Keras
        object.__setattr__(self, "_moments", None)

    def call(self, x, training=False, update=True):
        w = self._window
        if w is not None:
            crop = x[:, w[0]:w[1], w[2]:w[3], :]
            mean = tf.reduce_mean(crop, axis=[0, 1, 2])
            m2 = tf.reduce_sum(tf.square(crop - mean), axis=[0, 1, 2])
            object.__setattr__(self, "_moments", (mean, m2))
        return super().call(x, training=False)


def _bn_sites(generator):
    """The BN layers in the order the forward pass applies them (each depends on the earlier)."""
    convs = [generator.encoder_conv] + list(generator.dense_convs) + list(generator.decoder_convs)
    return [c.bn for c in convs if c.bn is not None]


def _moving_copy(generator):
    """A bn_mode="moving" Generator shaped like `generator`, BN layers = _MomentsBatchNorm."""
    copy = Generator(scale=generator.scale, official_decoder=generator.official_decoder, bn_mode="moving")
    for conv in [copy.encoder_conv] + list(copy.dense_convs) + list(copy.decoder_convs):
        if conv.bn is not None:
            conv.bn = _MomentsBatchNorm(name="bn")  # before build: ReflectConv.build builds it
    copy.build()
    return copy


def _copy_weights(src, dst):
    """Every variable of generator `src` into `dst` (same architecture), matched by role."""
    pairs = [(src.encoder_conv, dst.encoder_conv)]
    pairs += list(zip(src.dense_convs, dst.dense_convs)) + list(zip(src.decoder_convs, dst.decoder_convs))
    for a, b in pairs:
        b.conv.kernel.assign(a.conv.kernel)
        b.conv.bias.assign(a.conv.bias)
        if a.bn is not None:
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                getattr(b.bn, name).assign(getattr(a.bn, name))
    if src.scale > 1:
        dst.deconv_ir.kernel.assign(src.deconv_ir.kernel)
        dst.deconv_vis.kernel.assign(src.deconv_vis.kernel)


def _moments_function(copy, bn):
    """Concrete function (vis, ir, window) -> (mean, M2) of `bn`'s input over window, one tile."""
    spec = tf.TensorSpec((None, None, None, 1), tf.float32)

    def moments(vis, ir, window):
        object.__setattr__(bn, "_window", window)
        try:
            copy((vis, ir), training=False)  # only what `bn` needs survives graph pruning
            return bn._moments
        finally:
            object.__setattr__(bn, "_window", None)
            object.__setattr__(bn, "_moments", None)

    return tf.function(moments, autograph=False).get_concrete_function(
        spec, spec, tf.TensorSpec((4,), tf.int32))


class _GlobalStatistics:
    """Whole-image BN statistics of a "batch"-mode generator, gathered tile by tile.

    Holds a "moving"-mode copy of the generator, one traced moments function per BN layer and a
    Fuser of the copy, so fusing many images traces nothing again. `fit` copies the generator's
    current weights, measures the image's statistics into the copy and returns its Fuser.
    """

    def __init__(self, generator):
        self.generator = generator
        self.copy = _moving_copy(generator)
        self.sites = _bn_sites(self.copy)
        self.functions = [_moments_function(self.copy, bn) for bn in self.sites]
        self.fuser = Fuser(self.copy)

    def fit(self, vis, ir, plan):
        s = self.copy.scale
        _copy_weights(self.generator, self.copy)
        for bn, moments in zip(self.sites, self.functions):
            count, mean, m2 = 0, 0.0, 0.0
            for (y0, y1, x0, x1), (oy0, oy1, ox0, ox1) in plan:
                window = tf.constant([oy0 - y0, oy1 - y0, ox0 - x0, ox1 - x0], tf.int32)
                t_mean, t_m2 = moments(tf.constant(vis[None, y0:y1, x0:x1, None]),
                                       tf.constant(ir[None, y0 // s:y1 // s, x0 // s:x1 // s, None]), window)
                t_mean, t_m2 = t_mean.numpy().astype(np.float64), t_m2.numpy().astype(np.float64)
                n = (oy1 - oy0) * (ox1 - ox0)
                delta, total = t_mean - mean, count + n
                mean = mean + delta * (n / total)               # Chan et al.'s parallel combination
                m2 = m2 + t_m2 + delta ** 2 * (count * n / total)
                count = total
            bn.moving_mean.assign(mean.astype(np.float32))
            bn.moving_variance.assign((m2 / count).astype(np.float32))  # population variance, as BN
        return self.fuser


_CACHE = weakref.WeakKeyDictionary()  # Fuser -> _GlobalStatistics (lives as long as the Fuser)


def _global_statistics_for(fuser):
    cached = _CACHE.get(fuser)
    if cached is None or cached.generator is not fuser.generator:
        cached = _CACHE[fuser] = _GlobalStatistics(fuser.generator)
    return cached


def global_statistics_generator(generator, vis, ir, plan):
    """A "moving"-mode copy of a "batch"-mode generator whose BN statistics are those the whole
    image (vis, ir) would produce, computed tile by tile over `plan` (see the module docstring)."""
    vis, ir = np.asarray(vis, np.float32), np.asarray(ir, np.float32)
    return _GlobalStatistics(generator).fit(vis, ir, plan).generator
