"""The weights shipped in checkpoints/ load, fuse, and come with a complete manifest."""
import json
import os
import subprocess
import sys

import numpy as np

from ddcgan_tf import checkpoint as ckpt
from ddcgan_tf import metrics, shipped
from ddcgan_tf.demo import synthetic_scene
from ddcgan_tf.fuse import Fuser
from ddcgan_tf.generator import Generator
from ddcgan_tf.patches import downsample_ir
from ddcgan_tf.train import build_model

from conftest import REPO

MANIFEST_KEYS = {"mode", "model", "train", "data", "patches", "steps", "wall_time_s", "machine", "validation"}


def test_ship_writes_generator_state_and_manifest(tmp_path):
    model = build_model(patch_size=32)
    state = str(tmp_path / "ckpt-00000007.h5")
    ckpt.save_state(model, state)
    out = shipped.ship(state, "vis-ir", run_info={"steps": 7}, validation={"EN": 1.0}, root=str(tmp_path / "ship"))
    gen = ckpt.load_generator(os.path.join(out, "generator.h5"))
    for a, b in zip(gen.weights, model.generator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    fresh = build_model(patch_size=32)
    ckpt.load_state(fresh, os.path.join(out, "train_state.h5"))  # resumable
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["steps"] == 7 and manifest["validation"] == {"EN": 1.0}
    assert manifest["train"]["preset"] == "official" and manifest["model"]["scale"] == 4
    assert manifest["model"]["bn_mode"] == gen.bn_mode == "batch"


def test_ship_can_set_the_bn_statistics_the_weights_fuse_with(tmp_path):
    model = build_model(patch_size=32)
    state = str(tmp_path / "ckpt-00000007.h5")
    ckpt.save_state(model, state)
    out = shipped.ship(state, "pet-mri", root=str(tmp_path / "ship"), bn_mode="moving")
    assert ckpt.load_generator(os.path.join(out, "generator.h5")).bn_mode == "moving"
    assert json.load(open(os.path.join(out, "manifest.json")))["model"]["bn_mode"] == "moving"
    assert ckpt.read_configs(os.path.join(out, "train_state.h5"))[0]["bn_mode"] == "batch"


def test_ship_takes_the_generator_of_one_checkpoint_and_the_state_of_a_later_one(tmp_path):
    import pytest
    from ddcgan_tf.errors import InputError

    early, late = build_model(patch_size=32), build_model(patch_size=32)
    ckpt.save_generator(early.generator, str(tmp_path / "ckpt-00000002.h5"))  # generator-only, as pack.py keeps
    ckpt.save_state(late, str(tmp_path / "ckpt-00000009.h5"))
    out = shipped.ship(str(tmp_path / "ckpt-00000002.h5"), "vis-ir", root=str(tmp_path / "ship"),
                       state=str(tmp_path / "ckpt-00000009.h5"), bn_mode="moving", stretch=True)
    gen = ckpt.load_generator(out)
    assert (gen.bn_mode, gen.stretch) == ("moving", True)
    for a, b in zip(gen.weights, early.generator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    fresh = build_model(patch_size=32)
    ckpt.load_state(fresh, os.path.join(out, "train_state.h5"))
    np.testing.assert_array_equal(fresh.dv.weights[0].numpy(), late.dv.weights[0].numpy())
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert (manifest["source_checkpoint"], manifest["state_checkpoint"]) == ("ckpt-00000002.h5", "ckpt-00000009.h5")
    assert manifest["model"]["stretch"] is True
    other = build_model(patch_size=32, official_decoder=False)
    ckpt.save_state(other, str(tmp_path / "ckpt-00000010.h5"))
    with pytest.raises(InputError, match="official_decoder=False"):
        shipped.ship(str(tmp_path / "ckpt-00000002.h5"), "vis-ir", root=str(tmp_path / "ship2"),
                     state=str(tmp_path / "ckpt-00000010.h5"))


def test_shipped_vis_ir_weights_fuse_better_than_an_untrained_generator():
    path = shipped.default_checkpoint("vis-ir")
    manifest = json.load(open(os.path.join(os.path.dirname(path), "manifest.json")))
    assert MANIFEST_KEYS <= set(manifest), MANIFEST_KEYS - set(manifest)
    vis, ir_full = synthetic_scene(128, 160)
    ir = downsample_ir(ir_full, 4)
    trained = Fuser(ckpt.load_generator(path))(vis, ir)
    untrained = Generator()
    untrained.build()
    baseline = Fuser(untrained)(vis, ir)
    score = lambda f: metrics.lowres_fidelity(f, ir, 4)["PSNR_lr"] + 10 * metrics.ssim(f * 255.0, vis * 255.0)
    assert score(trained) > score(baseline)


def test_demo_command_runs_on_the_shipped_weights(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-m", "ddcgan_tf.cli.fuse", "--demo", f"--output_dir={tmp_path}"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "demo_side_by_side.png")
    assert "| EN |" in r.stdout and "PSNR_lr" in r.stdout


def test_a_wheel_carries_the_shipped_generators_and_fuses_without_the_repository(tmp_path):
    """`pip install .` (not -e) must still fuse with no --checkpoint: the wheel carries each mode's
    generator.h5 and manifest.json as ddcgan_tf/checkpoints/<mode>/ (a user's report: the demo
    failed with "no shipped vis-ir weights" after a plain install)."""
    import zipfile
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), REPO], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("ddcgan_tf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for mode in shipped.MODES:
        for f in ("generator.h5", "manifest.json"):
            assert f"ddcgan_tf/checkpoints/{mode}/{f}" in names
    assert not any(n.endswith("train_state.h5") for n in names)  # training states stay in the repository
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip installs: the wheel's files, as they are
    env = {k: v for k, v in os.environ.items() if k != "DDCGAN_CHECKPOINTS"}
    env["PYTHONPATH"] = str(site)
    code = ("from ddcgan_tf import shipped, checkpoint; p = shipped.default_checkpoint('vis-ir'); "
            "print(p); print(checkpoint.load_generator(p).stretch)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    path, stretch = r.stdout.split()[-2:]
    assert path == str(site / "ddcgan_tf" / "checkpoints" / "vis-ir" / "generator.h5")
    with open(os.path.join(REPO, "checkpoints", "vis-ir", "generator.h5"), "rb") as a, open(path, "rb") as b:
        assert a.read() == b.read()
    assert stretch == "True"  # the shipped vis-ir weights record min-max stretched output
