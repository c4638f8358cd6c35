import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")

# The longest tests in CI (--durations, 2026-11-28: 40-275 s each) start first, so that neither
# xdist worker is left running one of them alone at the end (that CI run: 822 s of wall for
# 653 s of CPU per worker). The rest keep their order. A renamed test just loses its place.
LONG_FIRST = ("test_xla_compiles_the_pieces",
              "test_training_resumes_from_the_saved_step", "test_one_jax_batch_equals_the_tf_train_step",
              "test_nan_retries_restore", "test_a_resume_with_another_seed", "test_init_from_fine_tunes",
              "test_prepare_train_fuse_from_the_command_line", "test_mixed_precision_trains_on_the_cpu",
              "test_sigkill_mid_training_then_resume", "test_explore_notebook_executes")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.name.startswith(LONG_FIRST))


def synthetic_pair(h=64, w=96, seed=0):
    """The demo's scene at a small size: (visible, full-resolution infrared)."""
    from ddcgan_tf.demo import synthetic_scene

    return synthetic_scene(h, w, seed)


def write_pairs(root, names=("a", "b"), size=(64, 96), ir_scale=1, ext=".png"):
    """Writes 8-bit synthetic pairs into root/vis and root/ir; returns (vis_dir, ir_dir). Pair k is
    the demo scene (seed k) shifted by k / len(names) of its width, so that no two are near-copies
    (patches.near_copy: the scene is the same for every seed, only its noise differs)."""
    vis_dir, ir_dir = os.path.join(root, "vis"), os.path.join(root, "ir")
    os.makedirs(vis_dir, exist_ok=True)
    os.makedirs(ir_dir, exist_ok=True)
    for k, name in enumerate(names):
        vis, ir = (np.roll(a, k * size[1] // len(names), axis=1) for a in synthetic_pair(*size, seed=k))
        if ir_scale > 1:
            ir = ir[::ir_scale, ::ir_scale]
        iio.imwrite(os.path.join(vis_dir, name + ext), (vis * 255).round().astype(np.uint8))
        iio.imwrite(os.path.join(ir_dir, name + ext), (ir * 255).round().astype(np.uint8))
    return vis_dir, ir_dir


@pytest.fixture
def pair_dirs(tmp_path):
    return write_pairs(str(tmp_path))


@pytest.fixture
def small_patch_set(tmp_path):
    """A 32x32 / 8x8 patch set built by the real preprocessing from synthetic pairs."""
    from ddcgan_tf.patches import build_patch_set

    vis_dir, ir_dir = write_pairs(str(tmp_path / "src"), names=("a", "b", "c"))
    out = str(tmp_path / "small.h5")
    build_patch_set(vis_dir, ir_dir, out, patch=32, stride=16, scale=4, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def generator_file(tmp_path_factory):
    """An untrained generator saved the way checkpoints/ ships one."""
    from ddcgan_tf.checkpoint import save_generator
    from ddcgan_tf.generator import Generator

    g = Generator()
    g.build()
    path = str(tmp_path_factory.mktemp("gen") / "generator.h5")
    save_generator(g, path)
    return path


def shared_path(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not available (../shared is absent)")
    return path
