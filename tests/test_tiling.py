"""Tiled fusion (ddcgan_tf/tiling.py): the tile grid, the receptive field, both BN modes."""
import warnings

import keras
import numpy as np
import pytest

from ddcgan_tf.errors import InputError
from ddcgan_tf.fuse import Fuser
from ddcgan_tf.generator import Generator
from ddcgan_tf.tiling import axis_plan, fuse_tiled, min_overlap, receptive_radius, tile_plan

from conftest import synthetic_pair

# Measured on this machine: "moving" tiles reproduce the whole image bit for bit (max diff 0.0);
# "batch" with whole-image statistics gathered per tile differs by float rounding of the
# per-channel moments, max |diff| 4e-6 .. 1.1e-5 over random generators.
MOVING_TOL = 1e-6
BATCH_TOL = 5e-5


def make_generator(bn_mode, official_decoder=True, seed=0):
    keras.utils.set_random_seed(seed)
    g = Generator(bn_mode=bn_mode, official_decoder=official_decoder)
    g.build()
    rng = np.random.default_rng(seed)
    for conv in [g.encoder_conv, *g.dense_convs, *g.decoder_convs]:
        if conv.bn is not None:  # BN statistics that are not the identity
            conv.bn.moving_mean.assign(rng.normal(0, 0.1, conv.bn.moving_mean.shape).astype(np.float32))
            conv.bn.moving_variance.assign(rng.uniform(0.5, 2, conv.bn.moving_variance.shape).astype(np.float32))
    return g


@pytest.fixture(scope="module")
def moving():
    return Fuser(make_generator("moving"))


@pytest.fixture(scope="module")
def batch():
    return Fuser(make_generator("batch"))


def pair(h, w, seed=0):
    vis, ir = synthetic_pair(h, w, seed=seed)
    return vis, ir[::4, ::4]


@pytest.mark.parametrize("length", [49 * 4, 100, 128, 96, 48, 20, 52])
@pytest.mark.parametrize("tile,overlap", [(48, 16), (48, 24), (48, 32), (64, 24)])
def test_axis_plan_partitions_the_axis_on_the_ir_grid(length, tile, overlap):
    plan = axis_plan(length, tile, overlap)
    assert plan[0][0] == 0 and plan[-1][1] == length
    assert [p[2] for p in plan[1:]] == [p[3] for p in plan[:-1]]  # owned parts tile [0, length)
    assert plan[0][2] == 0 and plan[-1][3] == length
    for k, (start, end, own0, own1) in enumerate(plan):
        assert start % 4 == 0 and end - start == min(tile, length)
        assert start <= own0 < own1 <= end
        if k > 0:
            assert own0 - start >= overlap // 2  # every cut lies >= overlap/2 inside the tile
        if k < len(plan) - 1:
            assert end - own1 >= overlap // 2


def test_receptive_radius_counted_from_the_architecture_is_tight():
    """A tile's output equals the whole image's output from `radius` pixels inside its cut edges
    on, and not one pixel closer."""
    vis, ir = pair(96, 96)
    for official, radius in ((True, 12), (False, 11)):
        fuser = Fuser(make_generator("moving", official_decoder=official))
        assert receptive_radius(fuser.generator) == radius
        assert min_overlap(fuser.generator) == 24  # 2 radii, up to a multiple of 4
        whole = fuser(vis, ir)
        tile = fuser(vis[24:72, 24:72], ir[6:18, 6:18])  # cut on all four sides
        r = np.arange(48)
        edge = np.minimum(r, 47 - r)
        dist = np.minimum.outer(edge, edge)  # distance to the nearest cut
        err = np.abs(tile - whole[24:72, 24:72])
        exact = err[dist >= radius].max()  # measured: 0.0
        assert exact <= MOVING_TOL
        # The cut's influence decays inwards (measured ~1e-6 at radius - 1, ~3e-5 at radius - 3)
        # but is there: one pixel closer than the radius the output already differs.
        assert err[dist == radius - 1].max() > exact
        assert err[dist == radius - 3].max() > 1e-6


@pytest.mark.parametrize("size,tile,overlap", [((96, 128), 48, 32), ((96, 128), 48, 24),
                                               ((100, 140), 48, 24), ((84, 60), 64, 32)])
def test_moving_tiles_equal_whole_image(moving, size, tile, overlap):
    vis, ir = pair(*size)
    assert len(tile_plan(size, tile, overlap)) > 1
    tiled = fuse_tiled(moving, vis, ir, tile=tile, overlap=overlap)
    assert tiled.shape == size and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, moving(vis, ir), atol=MOVING_TOL, rtol=0)


class _Recording:
    """A fuser that records the size of every image it is given (the memory bound of tiling)."""

    def __init__(self, fuser):
        self.fuser, self.sizes = fuser, []
        self.generator, self.scale, self.prepare = fuser.generator, fuser.scale, fuser.prepare

    def __call__(self, vis, ir):
        self.sizes.append(vis.shape)
        return self.fuser(vis, ir)


@pytest.mark.parametrize("size", [(84, 60), (60, 84), (96, 128)])
def test_no_tile_is_larger_than_the_tile_size(moving, size):
    """--tile bounds peak memory: an image longer than the tile on one side only is still cut."""
    vis, ir = pair(*size)
    recording = _Recording(moving)
    fuse_tiled(recording, vis, ir, tile=64, overlap=32)
    assert len(recording.sizes) > 1 and all(h <= 64 and w <= 64 for h, w in recording.sizes)


def test_small_overlap_warns_and_is_only_approximate(moving):
    vis, ir = pair(96, 128)
    with pytest.warns(RuntimeWarning, match="overlap 16 < 24"):
        tiled = fuse_tiled(moving, vis, ir, tile=48, overlap=16)
    err = np.abs(tiled - moving(vis, ir)).max()
    assert 1e-6 < err < 1e-2  # cut 8 < 12 pixels from the tile edges
    with pytest.warns(RuntimeWarning, match="overlap 20 < 24"):  # one step of the scale short
        fuse_tiled(moving, vis, ir, tile=48, overlap=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at min_overlap: exact, no warning
        fuse_tiled(moving, vis, ir, tile=48, overlap=24)


def test_image_within_one_tile_is_fused_whole(moving, batch):
    vis, ir = pair(40, 44)
    for fuser in (moving, batch):
        np.testing.assert_array_equal(fuse_tiled(fuser, vis, ir, tile=48, overlap=32), fuser(vis, ir))


def test_batch_mode_global_statistics_equal_whole_image(batch):
    """bn_mode="batch": per-tile statistics give seams; the default whole-image statistics,
    gathered tile by tile, reproduce the whole-image (official, per-image) fusion."""
    vis, ir = pair(96, 128)
    whole = batch(vis, ir)
    with pytest.warns(RuntimeWarning, match="seams"):
        per_tile = fuse_tiled(batch, vis, ir, tile=48, overlap=24, batch_stats="tile")
    assert np.abs(per_tile - whole).max() > 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path warns about nothing
        tiled = fuse_tiled(batch, vis, ir, tile=48, overlap=24)
    np.testing.assert_allclose(tiled, whole, atol=BATCH_TOL, rtol=0)
    # A second image (another size) through the same Fuser: statistics are measured afresh.
    vis2, ir2 = pair(72, 100, seed=3)
    np.testing.assert_allclose(fuse_tiled(batch, vis2, ir2, tile=48, overlap=24), batch(vis2, ir2),
                               atol=BATCH_TOL, rtol=0)
    # The generator's weights change (training between two calls, in a notebook): the cached
    # statistics copy takes the current weights, not those of its first use.
    kernel = batch.generator.decoder_convs[-1].conv.kernel
    saved = kernel.numpy()
    try:
        kernel.assign(-saved)
        np.testing.assert_allclose(fuse_tiled(batch, vis, ir, tile=48, overlap=24), batch(vis, ir),
                                   atol=BATCH_TOL, rtol=0)
    finally:
        kernel.assign(saved)


def test_global_statistics_are_the_whole_images_population_moments():
    """The per-BN-layer statistics gathered tile by tile are the mean and *population* variance
    (BN's, m2 / n) of that layer's input over the whole image, as the batch-mode forward pass
    sees it; measured against the inputs captured from that pass, in float64. On a small image
    (4320 pixels) Bessel's correction would be 2.3e-4 relative; float32 rounding is ~1e-6."""
    from ddcgan_tf.tiling import _bn_sites, global_statistics_generator

    g = make_generator("batch")
    vis, ir = pair(60, 72)
    seen = []
    for bn in _bn_sites(g):
        def call(x, training=False, update=True, _orig=bn.call):
            seen.append(np.asarray(x, np.float64))
            return _orig(x, training=training, update=update)
        object.__setattr__(bn, "call", call)
    g((vis[None, ..., None], ir[None, ..., None]), training=False)
    copy = global_statistics_generator(g, vis, ir, tile_plan(vis.shape, 48, 24))
    assert len(seen) == len(_bn_sites(copy)) == 9
    for x, bn in zip(seen, _bn_sites(copy)):
        np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=(0, 1, 2)), rtol=0, atol=2e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=(0, 1, 2)), rtol=2e-5)


def test_bad_arguments(moving):
    vis, ir = pair(96, 128)
    with pytest.raises(InputError, match="--tile: must be a multiple of the scale 4 larger than the overlap 24, got 50"):
        fuse_tiled(moving, vis, ir, tile=50, overlap=24)
    with pytest.raises(InputError, match="larger than the overlap 48, got 48"):
        fuse_tiled(moving, vis, ir, tile=48, overlap=48)
    with pytest.raises(InputError, match="overlap: must be a non-negative multiple of the scale 4, got 26"):
        fuse_tiled(moving, vis, ir, tile=48, overlap=26)
    with pytest.raises(ValueError, match="batch_stats"):
        fuse_tiled(moving, vis, ir, tile=48, overlap=24, batch_stats="none")
    with pytest.raises(InputError, match="must be 32x24"):
        fuse_tiled(moving, vis, ir[:20], tile=48, overlap=24)
