"""SavedModel export: ddcgan-export CLI -> tf.saved_model.load in a process without ddcgan_tf."""
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ddcgan_tf.checkpoint import load_generator
from ddcgan_tf.errors import InputError
from ddcgan_tf.export import CONFIG_FILE, export_saved_model, read_config
from ddcgan_tf.fuse import Fuser

from conftest import REPO, synthetic_pair

SIZES = ((64, 96), (40, 28))

# Runs in a fresh interpreter: loads the SavedModel with TensorFlow alone and fuses the pairs.
LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    assert "ddcgan_tf" not in sys.modules
    model = tf.saved_model.load(sys.argv[1])
    fn = model.signatures["serving_default"]
    pairs = np.load(sys.argv[2])
    out = {}
    for k in range(len(pairs.files) // 2):
        res = fn(vis=tf.constant(pairs[f"vis{k}"]), ir=tf.constant(pairs[f"ir{k}"]))
        out[f"fused{k}"] = res["fused"].numpy()
    out["serve_equals_default"] = np.array(all(
        np.array_equal(model.signatures["serve"](vis=tf.constant(pairs[f"vis{k}"]),
                                                 ir=tf.constant(pairs[f"ir{k}"]))["fused"].numpy(),
                       out[f"fused{k}"]) for k in range(len(pairs.files) // 2)))
    out["config"] = np.array(model.ddcgan_config[0].numpy().decode())
    out["imported"] = np.array(sorted(m for m in sys.modules if m.startswith("ddcgan")))
    np.savez(sys.argv[3], **out)
""")


def env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def export_cli(*args):
    return subprocess.run([sys.executable, "-m", "ddcgan_tf.cli.export", *args], capture_output=True,
                          text=True, env=env(), timeout=600)


def pairs_for(sizes, batch=1):
    """{vis<k>: (batch, h, w, 1), ir<k>: (batch, h/4, w/4, 1)} from the synthetic scene."""
    arrays = {}
    for k, (h, w) in enumerate(sizes):
        vis, ir = zip(*(synthetic_pair(h, w, seed=k + b) for b in range(batch)))
        arrays[f"vis{k}"] = np.stack(vis)[..., None].astype(np.float32)
        arrays[f"ir{k}"] = np.stack([i[::4, ::4] for i in ir])[..., None].astype(np.float32)
    return arrays


def load_elsewhere(saved_model, arrays, tmp_path):
    """Runs LOADER in a fresh interpreter whose PYTHONPATH does not reach ddcgan_tf."""
    inputs, outputs = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    np.savez(inputs, **arrays)
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    clean_env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    r = subprocess.run([sys.executable, "-c", LOADER, saved_model, inputs, outputs], capture_output=True,
                       text=True, env=clean_env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(outputs))


def test_cli_export_loads_without_ddcgan_tf_and_matches_keras(generator_file, tmp_path):
    out_dir = str(tmp_path / "saved")
    r = export_cli(f"--checkpoint={generator_file}", f"--output={out_dir}")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "bn_mode=batch" in r.stdout and "serve_colour: vis_rgb" in r.stdout
    assert r.stderr.strip() == ""  # the SavedModel writer's INFO lines (through absl) are not shown
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # nothing left behind

    # Two sizes, and a request of two images: "batch" BN must normalise each image by itself.
    arrays = pairs_for(SIZES)
    two = pairs_for([(40, 28)], batch=2)
    arrays.update(vis2=two["vis0"], ir2=two["ir0"])
    got = load_elsewhere(out_dir, arrays, tmp_path)
    assert got["imported"].size == 0
    assert bool(got["serve_equals_default"])

    g = load_generator(generator_file)
    for k in range(3):
        vis, ir = arrays[f"vis{k}"], arrays[f"ir{k}"]
        expected = np.concatenate([g((vis[b:b + 1], ir[b:b + 1]), training=False).numpy()
                                   for b in range(len(vis))])
        assert got[f"fused{k}"].shape == vis.shape
        np.testing.assert_allclose(got[f"fused{k}"], expected, atol=1e-5)

    config = json.loads(str(got["config"]))
    assert (config["scale"], config["official_decoder"], config["bn_mode"]) == (4, True, "batch")
    assert read_config(out_dir)["bn_mode"] == "batch"


def test_saved_model_cli_lists_the_signature(generator_file, tmp_path):
    if shutil.which("saved_model_cli") is None:
        pytest.skip("saved_model_cli is not on PATH")
    out_dir = str(tmp_path / "saved")
    export_saved_model(load_generator(generator_file), out_dir)
    r = subprocess.run(["saved_model_cli", "show", "--all", "--dir", out_dir], capture_output=True,
                       text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for signature in ("serve", "serving_default"):
        block = r.stdout.split(f"signature_def['{signature}']:", 1)[1].split("signature_def[", 1)[0]
        for name in ("vis", "ir"):
            assert f"inputs['{name}'] tensor_info:" in block
        assert "outputs['fused'] tensor_info:" in block
        assert block.count("shape: (-1, -1, -1, 1)") == 3


def test_moving_mode_export_and_config(generator_file, tmp_path):
    import tensorflow as tf

    g = load_generator(generator_file, bn_mode="moving")
    out_dir = str(tmp_path / "exported" / "moving")  # README's --output exported/ddcgan: parents are made
    config = export_saved_model(g, out_dir)
    assert config["bn_mode"] == "moving" and read_config(out_dir) == config
    assert os.path.isfile(os.path.join(out_dir, CONFIG_FILE))
    m = tf.saved_model.load(out_dir)
    arrays = pairs_for([(40, 28)], batch=2)
    got = m.signatures["serving_default"](vis=tf.constant(arrays["vis0"]), ir=tf.constant(arrays["ir0"]))
    expected = g((arrays["vis0"], arrays["ir0"]), training=False).numpy()
    np.testing.assert_allclose(got["fused"].numpy(), expected, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="1/4 of the vis"):
        m.signatures["serving_default"](vis=tf.constant(arrays["vis0"]), ir=tf.constant(arrays["vis0"]))


def test_existing_output_needs_overwrite(generator_file, tmp_path):
    out_dir = tmp_path / "saved"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("previous")
    with pytest.raises(InputError, match="already exists"):
        export_saved_model(load_generator(generator_file), str(out_dir))
    assert (out_dir / "keep.txt").read_text() == "previous"

    r = export_cli(f"--checkpoint={generator_file}", f"--output={out_dir}")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "ddcgan-export: error:" in r.stderr
    assert "already exists" in r.stderr

    # --overwrite replaces an earlier export only: this folder (a run, notes) is not one
    r = export_cli(f"--checkpoint={generator_file}", f"--output={out_dir}", "--overwrite")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "is not a previous export" in r.stderr and (out_dir / "keep.txt").read_text() == "previous"
    (out_dir / "keep.txt").unlink()
    export_saved_model(load_generator(generator_file), str(out_dir), overwrite=True)  # an empty directory
    (out_dir / "keep.txt").write_text("inside an export")

    r = export_cli(f"--checkpoint={generator_file}", f"--output={out_dir}", "--overwrite", "--bn_mode=moving")
    assert r.returncode == 0, r.stderr
    assert not (out_dir / "keep.txt").exists() and (out_dir / "saved_model.pb").is_file()
    assert read_config(str(out_dir))["bn_mode"] == "moving"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no .tmp-* left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out_dir).st_mode) == 0o777 & ~umask  # others may serve it (mkdtemp: 0700)


def test_overwrite_replaces_only_a_whole_export_at_its_own_path(generator_file, tmp_path):
    """--overwrite deletes what --output holds only when it is one of our exports: its
    saved_model.pb and our config. Another tool's SavedModel (no ddcgan_config.json), a folder
    holding our config alone, and a symlink (even to an export) are refused in one InputError,
    and every file of them, the link and its target stay as they were."""
    def tree(root):
        return sorted((str(p.relative_to(tmp_path)), p.is_symlink(), None if p.is_dir() else p.read_bytes())
                      for p in root.rglob("*"))

    other = tmp_path / "other"  # e.g. a TF Serving model of another project
    (other / "variables").mkdir(parents=True)
    (other / "saved_model.pb").write_bytes(b"another model")
    config_only = tmp_path / "config_only"
    (config_only / os.path.dirname(CONFIG_FILE)).mkdir(parents=True)
    (config_only / CONFIG_FILE).write_text("{}")
    target = tmp_path / "v1"  # what an export holds, reached through a link
    (target / os.path.dirname(CONFIG_FILE)).mkdir(parents=True)
    (target / "saved_model.pb").write_bytes(b"v1")
    (target / CONFIG_FILE).write_text("{}")
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    before = tree(tmp_path)
    g = load_generator(generator_file)
    for out in (other, config_only, link):
        with pytest.raises(InputError, match="is not a previous export"):
            export_saved_model(g, str(out), overwrite=True)
    assert tree(tmp_path) == before and link.is_symlink()


def test_a_failed_overwrite_puts_the_previous_export_back(generator_file, tmp_path, monkeypatch):
    """The new export moves into place last; when that fails (EIO here), the previous export is
    back at its path, whole, and no temporary directory is left."""
    import errno

    out_dir = tmp_path / "saved"
    generator = load_generator(generator_file)
    export_saved_model(generator, str(out_dir))
    before = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*"))
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".tmp-export-"):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(InputError, match="saved: cannot write \\(Input/output error\\)"):
        export_saved_model(generator, str(out_dir), overwrite=True)
    assert sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_a_killed_exports_directory_is_removed_by_the_next_export(generator_file, tmp_path):
    """An export killed mid-write left its `.tmp-export-*` directory (about 9 MB) for good; the
    next export beside it removes it, but never a `.tmp-old-*` (the previous export's only copy
    after a kill between the two renames)."""
    import subprocess
    import sys

    from ddcgan_tf import images

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = tmp_path / f".tmp-export-{images._host()}-{int(child.stdout)}-abc"
    (dead / "variables").mkdir(parents=True)
    (dead / "saved_model.pb").write_bytes(b"half")
    old = tmp_path / ".tmp-old-xyz" / "previous"
    old.mkdir(parents=True)
    export_saved_model(load_generator(generator_file), str(tmp_path / "saved"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-old-xyz", "saved"]


def test_output_holding_the_checkpoint_is_refused_even_with_overwrite(generator_file, tmp_path):
    """Exporting a run into its own directory (or a parent) with --overwrite would delete the
    checkpoint it reads: refused in one line, nothing touched."""
    run = tmp_path / "runs" / "tno"
    run.mkdir(parents=True)
    ckpt = run / "generator.h5"
    ckpt.write_bytes(open(generator_file, "rb").read())
    for out in (run, tmp_path / "runs"):
        r = export_cli(f"--checkpoint={run}", f"--output={out}", "--overwrite")
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
        assert "holds the checkpoint being exported" in r.stderr
    assert ckpt.read_bytes() == open(generator_file, "rb").read()


def test_missing_output_flag_is_one_line_error(generator_file):
    r = export_cli(f"--checkpoint={generator_file}")
    assert r.returncode == 2 and r.stderr.strip() == "ddcgan-export: error: flags: missing --output"


def test_without_checkpoint_uses_the_shipped_weights_of_the_mode(generator_file, tmp_path):
    root = tmp_path / "checkpoints"
    (root / "pet-mri").mkdir(parents=True)
    shutil.copy(generator_file, root / "pet-mri" / "generator.h5")
    run_env = dict(env(), DDCGAN_CHECKPOINTS=str(root))
    run = lambda *args: subprocess.run([sys.executable, "-m", "ddcgan_tf.cli.export", *args],
                                       capture_output=True, text=True, env=run_env, timeout=600)
    r = run("--mode=pet-mri", f"--output={tmp_path / 'pet'}")
    assert r.returncode == 0, r.stderr
    assert read_config(str(tmp_path / "pet"))["scale"] == 4
    r = run(f"--output={tmp_path / 'vis'}")  # --mode vis-ir: nothing shipped in this root
    assert r.returncode == 2 and "no shipped vis-ir weights; pass --checkpoint" in r.stderr
    assert not (tmp_path / "vis").exists()


def test_stretch_is_baked_in_per_image(generator_file, tmp_path):
    import tensorflow as tf
    from ddcgan_tf import images

    g = load_generator(generator_file, stretch=True)
    out_dir = str(tmp_path / "stretched")
    assert export_saved_model(g, out_dir)["stretch"] is True and read_config(out_dir)["stretch"] is True
    arrays = pairs_for([(40, 28)], batch=2)
    got = tf.saved_model.load(out_dir).signatures["serving_default"](
        vis=tf.constant(arrays["vis0"]), ir=tf.constant(arrays["ir0"]))["fused"].numpy()
    fuser = Fuser(g)
    for b in range(2):  # each image of the request stretched by itself, as ddcgan-fuse writes it
        fused = fuser(arrays["vis0"][b, ..., 0], arrays["ir0"][b, ..., 0])
        assert got[b].min() == 0 and abs(got[b].max() - 1) < 1e-6
        diff = images.to_uint8(got[b, ..., 0]).astype(int) - fuser.to_uint8(fused)  # float32 vs float64
        assert np.abs(diff).max() <= 1 and np.mean(diff != 0) < 0.01


def test_colour_signature_keeps_the_visible_chroma(generator_file, tmp_path):
    import tensorflow as tf
    from ddcgan_tf import images, ycbcr
    from test_ycbcr import colour_scene

    g = load_generator(generator_file, stretch=True)
    out_dir = str(tmp_path / "colour")
    config = export_saved_model(g, out_dir)
    assert config["serve_colour"]["outputs"]["fused"].startswith("float32 [N, H, W, 3]")
    scenes = [colour_scene(40, 28, seed) for seed in (0, 1)]
    rgb = np.stack([s[0] for s in scenes]).astype(np.float32)
    ir = np.stack([s[1][::4, ::4, None] for s in scenes]).astype(np.float32)
    got = tf.saved_model.load(out_dir).signatures["serve_colour"](
        vis_rgb=tf.constant(rgb), ir=tf.constant(ir))["fused"].numpy()
    assert got.shape == (2, 40, 28, 3)
    fuser = Fuser(g)
    for b in range(2):  # what ddcgan-fuse --colour writes, before its rounding to 8 bits
        fused = fuser(ycbcr.luminance(rgb[b]), ir[b, ..., 0])
        expected = ycbcr.keep_chroma(images.stretch_range(fused), rgb[b])
        np.testing.assert_allclose(got[b], expected, atol=2e-4)


def test_a_write_failure_during_export_is_one_line_naming_the_output(generator_file, tmp_path):
    """TensorFlow writes the SavedModel's files itself: a full disk came back as
    ResourceExhaustedError, which the CLI called "out of memory" (checked by hand on a 3 MB
    tmpfs: now "cannot write (No space left on device)"), and a file-size limit (here) as an
    OutOfRangeError traceback. One line naming --output, exit 2, nothing left behind."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))

    out_dir = tmp_path / "exp"
    r = subprocess.run([sys.executable, "-m", "ddcgan_tf.cli.export", f"--checkpoint={generator_file}",
                        f"--output={out_dir}"], capture_output=True, text=True, env=env(), timeout=600,
                       preexec_fn=limit)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert r.stderr.strip() == f"ddcgan-export: error: {out_dir}: cannot write (File too large)"
    assert os.listdir(tmp_path) == []
