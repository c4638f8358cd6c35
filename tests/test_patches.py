import json
import os
import subprocess
import sys

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import scipy.ndimage

from ddcgan_tf.data import PatchSet, make_dataset
from ddcgan_tf.errors import InputError
from ddcgan_tf.patches import build_patch_set, cut_pair, source_names

from conftest import REPO, write_pairs


def quiet(*_):
    pass


def test_patches_are_aligned_and_ir_is_downsampled_the_official_way(tmp_path):
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a",), size=(64, 96))
    out = str(tmp_path / "set.h5")
    summary = build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, scale=4, log=quiet)
    # (64 - 32) / 16 + 1 = 3 rows, (96 - 32) / 16 + 1 = 5 columns
    assert summary["patches"] == 15
    vis = iio.imread(os.path.join(vis_dir, "a.png")) / 255.0
    ir = iio.imread(os.path.join(ir_dir, "a.png")) / 255.0
    with h5py.File(out, "r") as f:
        assert f["vis"].shape == (15, 32, 32, 1) and f["ir"].shape == (15, 8, 8, 1)
        assert f["vis"].dtype == np.uint8  # 8-bit sources are stored exactly
        assert f.attrs["stride"] == 16 and f.attrs["scale"] == 4
        assert '"a"' in f.attrs["sources"]
        k = 1 * 5 + 2  # row 1, column 2 -> origin (16, 32)
        np.testing.assert_allclose(f["vis"][k, ..., 0] / 255.0, vis[16:48, 32:64], atol=1e-7)
        expected = np.clip(scipy.ndimage.zoom(ir[16:48, 32:64], 0.25), 0, 1)
        np.testing.assert_allclose(f["ir"][k, ..., 0], expected, atol=1e-6)


def test_noclip_ir_keeps_the_official_splines_overshoot(tmp_path):
    """The official train.py downsamples each 84x84 infrared patch with scipy zoom and does not
    clip; our default clips to [0, 1]. `ddcgan-prepare --noclip_ir` stores the official values:
    next to a saturated hot square the spline overshoots above 1 (and undershoots below 0)."""
    vis_dir, ir_dir = os.path.join(tmp_path, "vis"), os.path.join(tmp_path, "ir")
    os.makedirs(vis_dir)
    os.makedirs(ir_dir)
    rng = np.random.default_rng(0)
    ir = np.zeros((64, 64), np.uint8)
    ir[20:44, 24:40] = 255  # a hot object with sharp edges
    iio.imwrite(os.path.join(vis_dir, "a.png"), rng.integers(0, 256, (64, 64), dtype=np.uint8))
    iio.imwrite(os.path.join(ir_dir, "a.png"), ir)
    official = [scipy.ndimage.zoom(ir[y:y + 32, x:x + 32] / 255.0, 0.25)
                for y in range(0, 33, 16) for x in range(0, 33, 16)]
    assert max(o.max() for o in official) > 1.02 and min(o.min() for o in official) < -0.02
    env = dict(os.environ, PYTHONPATH=REPO)
    stored = {}
    for flag in ("--clip_ir", "--noclip_ir"):
        out = str(tmp_path / f"{flag}.h5")
        r = subprocess.run([sys.executable, "-m", "ddcgan_tf.cli.prepare", "--vis_dir", vis_dir, "--ir_dir", ir_dir,
                            "--output", out, "--patch", "32", "--stride", "16", flag],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        with h5py.File(out, "r") as f:
            stored[flag] = (f["ir"][..., 0], f.attrs["ir_downsampling"])
        _, read_ir = PatchSet(out, 4).take(np.arange(9))  # what training reads
        np.testing.assert_array_equal(read_ir[..., 0], stored[flag][0])
    clipped, official_set = stored["--clip_ir"][0], stored["--noclip_ir"][0]
    np.testing.assert_allclose(official_set, np.stack(official), atol=1e-6)
    np.testing.assert_allclose(clipped, np.clip(np.stack(official), 0, 1), atol=1e-6)
    assert "not clipped" in stored["--noclip_ir"][1] and "clipped to [0, 1]" in stored["--clip_ir"][1]


def test_low_resolution_ir_is_cut_at_aligned_positions():
    for shape in ((64, 64), (64, 96), (96, 64)):  # square too: there rows and columns could swap
        vis = np.random.default_rng(0).random(shape).astype(np.float32)
        ir = vis[::4, ::4].copy()
        v, i = cut_pair(vis, ir, patch=32, stride=16, scale=4)
        assert len(v) == len(i) == ((shape[0] - 32) // 16 + 1) * ((shape[1] - 32) // 16 + 1)
        for k in range(len(v)):  # every infrared patch is its visible patch's own low-resolution cut
            np.testing.assert_array_equal(i[k], v[k][::4, ::4], err_msg=f"{shape} patch {k}")
        np.testing.assert_array_equal(i[4], ir[4:12, 4:12]) if shape == (64, 64) else None
    with pytest.raises(InputError, match="multiple of the scale"):
        cut_pair(vis, ir, patch=32, stride=14, scale=4)


def test_mismatched_pairs_are_skipped_reported_or_resized(tmp_path):
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b"))
    iio.imwrite(os.path.join(ir_dir, "b.png"), np.zeros((50, 70), np.uint8))
    out = str(tmp_path / "set.h5")
    summary = build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, log=quiet)
    assert [s["name"] for s in summary["skipped"]] == ["b"]
    assert source_names(out) == ["a"]  # what validate_tno --names trained:FILE scores
    with pytest.raises(InputError, match="b.png"):
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, on_mismatch="error", log=quiet)
    summary = build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, on_mismatch="resize", log=quiet)
    assert summary["pairs"] == 2 and not summary["skipped"] and source_names(out) == ["a", "b"]
    # resized to the size it is nearest: a 62x94 infrared to the visible 64x96 (then downsampled
    # per patch), a 15x23 one to 1/4 of it, 16x24 (then cut)
    from ddcgan_tf.images import read_grey
    from ddcgan_tf.patches import _resize

    vis = read_grey(os.path.join(vis_dir, "b.png"))
    ir_full = np.random.default_rng(1).random((62, 94))
    for ir, target in ((ir_full, (64, 96)), (ir_full[::4, ::4], (16, 24))):
        iio.imwrite(os.path.join(ir_dir, "b.png"), (ir * 255).round().astype(np.uint8))
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, on_mismatch="resize", log=quiet)
        _, expected = cut_pair(vis, _resize(read_grey(os.path.join(ir_dir, "b.png")), target), 32, 16, 4)
        with h5py.File(out, "r") as f:
            np.testing.assert_allclose(f["ir"][-len(expected):, ..., 0], expected, atol=1e-6, err_msg=str(target))
    with h5py.File(tmp_path / "plain.h5", "w") as f:  # e.g. the official layout: no sources
        f["data"] = np.zeros((2, 84, 84, 2), np.float32)
    with pytest.raises(InputError, match="plain.h5.*no list of source pairs"):
        source_names(str(tmp_path / "plain.h5"))


def test_visible_patches_keep_their_sources_depth_and_are_read_back_in_unit_range(tmp_path):
    """8-bit sources are stored as uint8 (an RGB one as its rounded luminance), 16-bit ones as
    uint16 with all their levels, and PatchSet gives both back as floats in [0, 1]."""
    rng = np.random.default_rng(0)
    for kind in ("rgb8", "grey16"):
        root = tmp_path / kind
        (root / "vis").mkdir(parents=True)
        (root / "ir").mkdir()
        if kind == "rgb8":
            vis = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
            grey = vis @ np.array([0.299, 0.587, 0.114]) / 255.0
            stored_type, full = np.uint8, 255.0
        else:
            vis = (1000 + np.arange(32 * 48).reshape(32, 48) % 201).astype(np.uint16)  # 201 levels
            grey = vis / 65535.0
            stored_type, full = np.uint16, 65535.0
        iio.imwrite(root / "vis" / "a.png", vis)
        iio.imwrite(root / "ir" / "a.png", rng.integers(0, 256, (8, 12), dtype=np.uint8))
        out = str(root / "set.h5")
        build_patch_set(str(root / "vis"), str(root / "ir"), out, patch=32, stride=16, scale=4, log=quiet)
        with h5py.File(out, "r") as f:
            stored = f["vis"][:, ..., 0]
        assert stored.dtype == stored_type, kind
        np.testing.assert_array_equal(stored[0], np.rint(grey[:, :32] * full).astype(stored_type), err_msg=kind)
        if kind == "grey16":
            assert len(np.unique(stored)) == 201
        patches = PatchSet(out)
        v, _ = patches.take(np.arange(len(patches)))
        np.testing.assert_allclose(v[0, ..., 0], np.rint(grey[:, :32] * full) / full, atol=1e-7, err_msg=kind)


def test_exclude_missing_partner_and_empty_directory(tmp_path):
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b"))
    out = str(tmp_path / "set.h5")
    assert build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, exclude=["b"], log=quiet)["pairs"] == 1
    assert source_names(out) == ["a"]
    with pytest.raises(InputError, match="--exclude: no pair in .* is named 'B', 'c'"):
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, exclude=["B", "c", "a"], log=quiet)
    assert source_names(out) == ["a"]  # a typo never writes a set that holds the scene
    os.remove(os.path.join(ir_dir, "b.png"))
    with pytest.raises(InputError, match="no ir partner named 'b"):
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, log=quiet)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image files"):
        build_patch_set(str(empty), ir_dir, out, log=quiet)


def _retone_copy(vis_dir, ir_dir, src, dst):
    """dst becomes src written again with a tone curve on the visible image (TNO's Movie_14 is
    houses_with_3_men so: infrared identical, visible correlated at 0.997)."""
    vis = iio.imread(os.path.join(vis_dir, src + ".png")).astype(np.float64) / 255
    iio.imwrite(os.path.join(vis_dir, dst + ".png"), np.rint(255 * vis ** 1.4).astype(np.uint8))
    iio.imwrite(os.path.join(ir_dir, dst + ".png"), iio.imread(os.path.join(ir_dir, src + ".png")))


def test_a_near_copy_of_an_excluded_pair_is_refused(tmp_path):
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b", "c"))
    _retone_copy(vis_dir, ir_dir, "a", "c")
    out = str(tmp_path / "set.h5")
    # held-out "a" would reach the training set as "c": refused, naming both, and no file
    with pytest.raises(InputError, match=r"c\.png: nearly copies excluded pair 'a' \(correlation 0\.9\d\d "
                                         r"visible, 1\.000 infrared\); add c to --exclude"):
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, exclude=["a"], log=quiet)
    assert not os.path.exists(out)
    # the other synthetic pairs are not near-copies of each other: excluding "b" keeps a and c
    assert source_names(build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, exclude=["b"],
                                        log=quiet)["output"]) == ["a", "c"]
    # on request it is kept, and the set records what was left out
    build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, exclude=["a"], log=quiet, allow_near_copies=True)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["excluded"]) == ["a"]
    assert source_names(out) == ["b", "c"]
    build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, exclude=["a", "c"], log=quiet)
    assert source_names(out) == ["b"]


def _patch_ids(path):
    """Each patch of a ddcgan_tf set by its 8-bit visible bytes -> (index, its infrared patch)."""
    with h5py.File(path, "r") as f:
        vis, ir = f["vis"][:], f["ir"][:]
    ids = {v.tobytes(): k for k, v in enumerate(vis)}
    assert len(ids) == len(vis)  # the synthetic patches are all different
    return ids, ir


def _indices(batch, ids, ir_all):
    vis, ir = (np.asarray(t) for t in batch)
    index = [ids[np.round(v * 255).astype(np.uint8).tobytes()] for v in vis]
    np.testing.assert_array_equal(ir, ir_all[index])  # each visible patch with its own infrared one
    return index


def test_each_epoch_is_one_permutation_and_a_resumed_stream_goes_on_with_the_same_batches(small_patch_set):
    """The official order (a reshuffle of the whole set every epoch, consecutive batches), and
    batch k a function of the seed alone: a run resumed at k gets the batches it would have got."""
    ids, ir_all = _patch_ids(small_patch_set)
    ds, patches = make_dataset(small_patch_set, batch_size=4, seed=0)
    n, per_epoch = len(patches), len(patches) // 4
    assert per_epoch >= 3
    it = iter(ds)
    run = [next(it) for _ in range(2 * per_epoch + 2)]
    vis, ir = run[0]
    assert vis.shape == (4, 32, 32, 1) and ir.shape == (4, 8, 8, 1)
    assert 0.0 <= float(np.min(vis)) and float(np.max(vis)) <= 1.0
    order = [_indices(b, ids, ir_all) for b in run]
    epochs = [sum(order[e * per_epoch:(e + 1) * per_epoch], []) for e in (0, 1)]
    for e in epochs:  # no patch twice in an epoch; only the remainder (n % 4) left out
        assert len(set(e)) == len(e) == per_epoch * 4
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])  # shuffled, and anew
    for start in (2, per_epoch - 1, per_epoch + 1):
        resumed = iter(make_dataset(small_patch_set, batch_size=4, seed=0, start=start)[0])
        for k in range(start, len(run)):
            for a, b in zip(next(resumed), run[k]):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = iter(make_dataset(small_patch_set, batch_size=4, seed=1)[0])
    assert [_indices(next(other), ids, ir_all) for _ in range(per_epoch)] != order[:per_epoch]
    # one pass, batch 1: every patch once
    ds, _ = make_dataset(small_patch_set, batch_size=1, seed=0, repeat=False)
    seen = [_indices(b, ids, ir_all)[0] for b in ds]
    assert sorted(seen) == list(range(n))


def test_dropping_an_iterator_needs_no_hdf5_lock(small_patch_set):
    """A thread that drops a started iterator waits for tf.data's threads (in-flight reads and the
    generator's finalizer). If they read HDF5, a drop while that thread held h5py's global lock
    (an old iterator garbage-collected during a checkpoint write) deadlocked: CI hung here. A
    subprocess, so a regression fails at the time limit instead of hanging the suite."""
    script = (
        "import sys, h5py._objects\n"
        "from ddcgan_tf.data import make_dataset\n"
        "ds, _ = make_dataset(sys.argv[1], batch_size=4, seed=0)\n"
        "it = iter(ds)\n"
        "next(it)\n"
        "with h5py._objects.phil:  # what h5py holds during any call, e.g. create_dataset\n"
        "    del it\n"
        "print('DROPPED')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", script, small_patch_set], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "DROPPED" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("matlab_order", [False, True])
def test_reads_the_official_training_dataset_layout(tmp_path, matlab_order):
    rng = np.random.default_rng(0)
    data = rng.random((6, 84, 84, 2)).astype(np.float32)
    path = str(tmp_path / "Training_Dataset.h5")
    with h5py.File(path, "w") as f:
        f["data"] = data.T if matlab_order else data
    patches = PatchSet(path)
    assert patches.layout == "official" and len(patches) == 6
    with h5py.File(path, "r") as f:
        vis, ir = patches.read(f, slice(2, 4))
    np.testing.assert_allclose(vis[..., 0], data[2:4, ..., 0])
    # as the official train.py downsamples: the spline's overshoot of [0, 1] is kept, not clipped
    np.testing.assert_allclose(ir[0, ..., 0], scipy.ndimage.zoom(data[2, ..., 1].astype(np.float64), 0.25), atol=1e-6)
    vis, ir = patches.take(np.array([4, 1]))  # from memory, in a batch's order
    np.testing.assert_allclose(vis[..., 0], data[[4, 1], ..., 0])
    np.testing.assert_allclose(ir[1, ..., 0], scipy.ndimage.zoom(data[1, ..., 1].astype(np.float64), 0.25), atol=1e-6)
    assert ir.min() < 0 or ir.max() > 1  # noise overshoots, so a clip would show


def test_wrong_layouts_are_rejected_with_the_file_name(tmp_path):
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 84, 84))
    with pytest.raises(InputError, match="bad.h5: unknown layout"):
        PatchSet(path)
    with h5py.File(path, "w") as f:
        f["vis"] = np.zeros((2, 84, 84, 1))
        f["ir"] = np.zeros((2, 84, 84, 1))
    with pytest.raises(InputError, match="do not match scale 4"):
        PatchSet(path)
    for nv, ni in ((10, 6), (6, 10)):  # one more visible patch than infrared ones, or fewer
        with h5py.File(path, "w") as f:
            f["vis"] = np.zeros((nv, 84, 84, 1), np.uint8)
            f["ir"] = np.zeros((ni, 21, 21, 1), np.float32)
        with pytest.raises(InputError, match=f"bad.h5: 'vis' has {nv} patches but 'ir' has {ni}"):
            PatchSet(path)
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("hello")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        PatchSet(str(not_h5))


def test_one_batch_needs_as_many_patches_as_the_batch(tmp_path):
    """A set of exactly one batch trains one batch an epoch; one patch fewer is refused."""
    from ddcgan_tf.data import batches_per_epoch

    path = str(tmp_path / "set.h5")
    with h5py.File(path, "w") as f:
        f["vis"] = np.zeros((24, 84, 84, 1), np.uint8)
        f["vis"].attrs["max_value"] = 255
        f["ir"] = np.zeros((24, 21, 21, 1), np.float32)
    assert batches_per_epoch(PatchSet(path), 24) == 1
    assert batches_per_epoch(PatchSet(path), 12) == 2
    with pytest.raises(InputError, match="set.h5: holds 24 patches, fewer than one batch of 25"):
        batches_per_epoch(PatchSet(path), 25)


def test_cut_pair_refuses_values_outside_the_unit_range_on_either_side():
    """An array of 0..255 levels passed as is, or one with a negative value, is an InputError
    naming the image; values within RANGE_TOLERANCE of [0, 1] (a computed PET intensity's
    rounding) are clipped and cut."""
    rng = np.random.default_rng(0)
    vis, ir = rng.random((32, 32)).astype(np.float32), rng.random((8, 8)).astype(np.float32)
    for label, bad_vis, bad_ir, low, high in (("visible", vis * 255, ir, r"0\.0\d+", r"25\d\.\d"),
                                              ("infrared", vis, ir - 0.5, r"-0\.\d+", r"0\.\d+"),
                                              ("visible", vis + 0.5, ir, r"0\.\d+", r"1\.\d+")):
        with pytest.raises(InputError, match=rf"^p\.png: {label} image values must lie in \[0, 1\], "
                                             rf"got \[{low}, {high}\]$"):
            cut_pair(bad_vis, bad_ir, patch=32, stride=16, scale=4, where="p.png")
    edge = vis.copy()
    edge[0, 0], edge[0, 1] = 1.0009, -0.0009
    v, _ = cut_pair(edge, ir, patch=32, stride=16, scale=4)
    assert v[0, 0, 0] == 1.0 and v[0, 0, 1] == 0.0


def test_a_stride_that_no_low_resolution_pair_can_use_stops_the_run_naming_the_flag(tmp_path):
    """A low-resolution infrared image needs a stride that is a multiple of the scale: that is the
    flag's fault, not a pair's, so even in the default "skip" mode the run stops at once with the
    flag named, rather than reporting every pair as failed (or cutting only the full-size ones)."""
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("a", "b"), ir_scale=4)
    out = str(tmp_path / "set.h5")
    logged = []
    with pytest.raises(InputError, match="^--stride: stride 14 must be a multiple of the scale 4") as info:
        build_patch_set(vis_dir, ir_dir, out, patch=32, stride=14, log=logged.append)
    assert info.value.where == "--stride" and not logged and not os.path.exists(out)
    assert build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, log=quiet)["pairs"] == 2


@pytest.mark.parametrize("matlab_order", [False, True])
def test_a_nan_in_an_official_set_names_its_patch_in_either_axis_order(tmp_path, matlab_order):
    """MATLAB writes the official layout as 2 x P x P x N: the patch number is then the last index."""
    data = np.random.default_rng(0).random((5, 8, 8, 2)).astype(np.float32)
    data[3, 2, 1, 1] = np.nan
    path = str(tmp_path / "Training_Dataset.h5")
    with h5py.File(path, "w") as f:
        f["data"] = data.T if matlab_order else data
    with pytest.raises(InputError, match=r"dataset 'data' holds NaN or Inf \(patch 3\)"):
        PatchSet(path).load()


def test_the_remainder_of_a_set_is_dropped_every_epoch(tmp_path):
    """24 patches in batches of 10: two whole batches an epoch (the official loop drops the last
    4), so a one-pass dataset ends after 2 batches and never repeats a patch."""
    from ddcgan_tf.data import batches_per_epoch

    path = str(tmp_path / "set.h5")
    with h5py.File(path, "w") as f:
        f["vis"] = np.arange(24, dtype=np.uint8).reshape(24, 1, 1, 1) * np.ones((1, 8, 8, 1), np.uint8)
        f["vis"].attrs["max_value"] = 255
        f["ir"] = np.zeros((24, 2, 2, 1), np.float32)
    assert batches_per_epoch(PatchSet(path), 10) == 2
    ds, _ = make_dataset(path, batch_size=10, seed=0, repeat=False)
    seen = [np.rint(np.asarray(v)[:, 0, 0, 0] * 255).astype(int) for v, _ in ds]
    assert len(seen) == 2 and len(set(np.concatenate(seen))) == 20


def test_8_and_16_bit_sources_together_are_stored_as_16_bit(tmp_path):
    """The smallest exact storage type of a mixed set is uint16 (an 8-bit level v is 257 v), not
    float32 at twice the size."""
    rng = np.random.default_rng(0)
    (tmp_path / "vis").mkdir()
    (tmp_path / "ir").mkdir()
    eight = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    iio.imwrite(tmp_path / "vis" / "a.png", eight)
    iio.imwrite(tmp_path / "vis" / "b.png", rng.integers(0, 65536, (32, 32), dtype=np.uint16))
    for name in ("a", "b"):
        iio.imwrite(tmp_path / "ir" / f"{name}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    out = str(tmp_path / "set.h5")
    build_patch_set(str(tmp_path / "vis"), str(tmp_path / "ir"), out, patch=32, stride=16, log=quiet,
                    allow_near_copies=True)
    with h5py.File(out, "r") as f:
        assert f["vis"].dtype == np.uint16 and f["vis"].attrs["max_value"] == 65535.0
        np.testing.assert_array_equal(f["vis"][0, ..., 0], eight.astype(np.uint16) * 257)
