"""The GPU device job's TensorFlow-free tools: the JAX fuser (benchmarks/jax_train.Fuser), the
pre-declared checkpoint choice (benchmarks/gpu_job/choose.py) and the packing for the trip back
(benchmarks/gpu_job/pack.py). Skipped where JAX is not installed.
"""
import json
import os
import shutil
import sys
import tarfile

import h5py
import numpy as np
import pytest

from conftest import REPO, synthetic_pair, write_pairs
from ddcgan_tf import config as C

jax = pytest.importorskip("jax")
sys.path[:0] = [os.path.join(REPO, "benchmarks"), os.path.join(REPO, "benchmarks", "gpu_job")]
import choose  # noqa: E402
import jax_train as jt  # noqa: E402
import pack  # noqa: E402
import validate_tno  # noqa: E402

SHIPPED = os.path.join(REPO, "checkpoints", "vis-ir")


@pytest.mark.parametrize("bn_mode", ["batch", "moving"])
def test_jax_fuser_gives_the_tensorflow_fuser_output(bn_mode):
    """Scoring on the GPU machine must score what ddcgan-fuse gives users: the shipped weights,
    read from the generator file and from the full training state (the run's newest state, which
    may be a later batch than the generator), fuse a pair as TF does."""
    from ddcgan_tf.checkpoint import load_generator
    from ddcgan_tf.fuse import Fuser
    from ddcgan_tf.patches import downsample_ir

    vis, ir = synthetic_pair(64, 96, seed=3)
    ir = downsample_ir(ir, 4)
    for path in ("generator.h5", "train_state.h5"):
        want = Fuser(load_generator(os.path.join(SHIPPED, path), bn_mode=bn_mode))(vis, ir)
        got = jt.Fuser(os.path.join(SHIPPED, path), bn_mode)(vis, ir)
        assert got.shape == want.shape == (64, 96)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert want.std() > 0.05  # an image, not a constant


def test_jax_fuser_rejects_what_tensorflow_would():
    with pytest.raises(ValueError, match="scale 4"):
        jt.Fuser(SHIPPED)(np.zeros((64, 96)), np.zeros((16, 20)))
    with pytest.raises(ValueError, match="bn_mode"):
        jt.Fuser(SHIPPED, "train")
    from ddcgan_tf.errors import InputError
    with pytest.raises(InputError, match="not found"):
        jt.Fuser(os.path.join(SHIPPED, "missing.h5"))


def _fake_runs(root, init):
    """Run directories as the device job leaves them: a/ with three checkpoints (different
    weights), b/ with one. Returns {(run, ckpt name): path}."""
    out = {}
    for run, seeds in (("a", (1, 2, 3)), ("b", (4,))):
        os.makedirs(os.path.join(root, run))
        for k, seed in enumerate(seeds, 1):
            path = os.path.join(root, run, f"ckpt-{1000 * k:08d}.h5")
            shutil.copy(init, path)
            with h5py.File(path, "r+") as f:  # perturb the generator: a different candidate each
                rng = np.random.default_rng(seed)
                for key in f["generator"]:
                    d = f["generator"][key]
                    if not d.attrs["path"].endswith(("moving_mean", "moving_variance")):
                        d[...] = d[()] * (1 + 0.3 * rng.standard_normal(d.shape)).astype(d.dtype)
            out[(run, os.path.basename(path))] = path
    return out


@pytest.fixture
def job(tmp_path):
    """A small TNO-like folder (the held_out_8 stems and two others), the patch set of the two
    others, and fake run directories started from the shipped state."""
    held = C.TNO_SPLITS["held_out_8"]
    tno = str(tmp_path / "tno")
    write_pairs(tno, names=held + ("t1", "t2"), size=(48, 64))
    from ddcgan_tf.patches import build_patch_set
    patches = str(tmp_path / "tno.h5")
    build_patch_set(os.path.join(tno, "vis"), os.path.join(tno, "ir"), patches, patch=32, stride=16,
                    exclude=held, log=lambda *_: None)
    runs = str(tmp_path / "runs")
    ckpts = _fake_runs(runs, os.path.join(SHIPPED, "train_state.h5"))
    return tno, patches, runs, ckpts


def test_choose_applies_the_declared_rule(job, tmp_path):
    tno, patches, runs, ckpts = job
    out = str(tmp_path / "runs" / "choice.json")
    assert choose.main([runs, patches, tno, out, "--last", "2", "--workers", "2"]) == 0
    record = json.load(open(out))
    # candidates: the newest two checkpoints of a, the one of b, each in four fusing modes
    assert sorted({(c["run"], c["checkpoint"]) for c in record["candidates"].values()}) == [
        ("a", "ckpt-00002000.h5"), ("a", "ckpt-00003000.h5"), ("b", "ckpt-00001000.h5")]
    assert sorted({c["method"] for c in record["candidates"].values()}) == [
        "batch", "batch+stretch", "moving", "moving+stretch"]
    assert record["trained_pairs"] == ["t1", "t2"]
    # the rule: most bar numbers beaten on the training pairs, ties to the larger smallest ratio
    for c in record["candidates"].values():
        assert c["beats"] == [k for k, v in validate_tno.OFFICIAL.items() if c["mean"][k] > v]
    assert record["chosen"] == choose.pick(record["candidates"])
    chosen = record["candidates"][record["chosen"]]
    # only the winner goes to the held-out scenes, in its own mode, next to the plain average
    h = record["held_out"]
    assert h["checkpoint"] == f"{chosen['run']}/{chosen['checkpoint']}" and h["method"] == chosen["method"]
    stretch = "+stretch" if "+" in chosen["method"] else ""
    assert sorted(h["results"]) == sorted([chosen["method"], "average" + stretch])
    # ... and its held-out scores are those TensorFlow's fuser gives (another backend, same numbers)
    bn = chosen["method"].split("+")[0]
    tf_scores = validate_tno.validate(ckpts[(chosen["run"], chosen["checkpoint"])], list(C.TNO_HELD_OUT_8),
                                      os.path.join(tno, "vis"), os.path.join(tno, "ir"), modes=(bn,),
                                      stretch=bool(stretch), log=lambda *_: None)[chosen["method"]]["mean"]
    for k, v in tf_scores.items():
        assert h["mean"][k] == pytest.approx(v, rel=1e-2, abs=1e-3, nan_ok=True), k  # MS-SSIM: NaN (tiny)
    assert "Chosen by the rule" in open(out[:-5] + ".md").read()


def test_the_rule_counts_numbers_beaten_before_the_smallest_ratio():
    entry = lambda beats, ratio: {"beats": ["EN"] * beats, "min_ratio": ratio}  # noqa: E731
    assert choose.pick({"close on all": entry(12, 0.99), "far on one": entry(13, 0.2)}) == "far on one"
    assert choose.pick({"x": entry(8, 0.7), "y": entry(8, 0.8), "z": entry(7, 0.95)}) == "y"


def test_a_mean_over_fewer_scenes_says_so_and_an_undefined_number_is_not_beaten():
    """A fused image on which a metric is undefined (CC of a flat image: NaN) is left out of that
    metric's mean; the record names the scene, and the rule's ratio counts an all-NaN number as 0."""
    vis, ir = synthetic_pair(32, 32, seed=0)
    ir4 = ir[::4, ::4]
    flat = np.full((32, 32), 0.5, np.float32)
    scenes = [("textured", vis, ir4, ir), ("flat", flat, np.full((8, 8), 0.5, np.float32), flat)]
    lines = []
    r = validate_tno.validate(None, modes=(), scenes=scenes, log=lines.append)["average"]
    assert np.isnan(r["per_image"]["flat"]["CC"]) and not np.isnan(r["per_image"]["textured"]["CC"])
    assert r["mean"]["CC"] == r["per_image"]["textured"]["CC"]  # the mean of the defined one
    assert r["undefined"]["CC"] == ["flat"]
    assert any(line.startswith("average: undefined") and "CC: flat" in line for line in lines)
    beaten = {k: 2 * v for k, v in validate_tno.OFFICIAL.items()}
    assert validate_tno.margin(beaten) == pytest.approx(2.0)
    assert validate_tno.margin(dict(beaten, CC=float("nan"))) == 0.0  # Python's min would skip a NaN
    assert "CC" not in validate_tno.wins(dict(beaten, CC=float("nan")))


def test_choose_refuses_a_patch_set_cut_from_held_out_scenes(job, tmp_path):
    tno, _, runs, _ = job
    from ddcgan_tf.patches import build_patch_set
    leaky = str(tmp_path / "leaky.h5")
    build_patch_set(os.path.join(tno, "vis"), os.path.join(tno, "ir"), leaky, patch=32, stride=16,
                    log=lambda *_: None)
    with pytest.raises(SystemExit, match="held-out scenes"):
        choose.choose(runs, leaky, tno)


def test_choose_refuses_a_patch_set_cut_from_a_held_out_scene_under_another_name(job, tmp_path):
    tno, _, runs, _ = job
    from ddcgan_tf.patches import build_patch_set
    vis_dir, ir_dir = os.path.join(tno, "vis"), os.path.join(tno, "ir")
    for d in (vis_dir, ir_dir):  # t3: held-out "wall" written again (TNO: houses_with_3_men / Movie_14)
        shutil.copy(os.path.join(d, "wall.png"), os.path.join(d, "t3.png"))
    leaky = str(tmp_path / "leaky.h5")
    build_patch_set(vis_dir, ir_dir, leaky, patch=32, stride=16, exclude=C.TNO_SPLITS["held_out_8"],
                    log=lambda *_: None, allow_near_copies=True)
    with pytest.raises(SystemExit, match=r"near-copies of held-out scenes \[\('t3', 'wall'\)\]"):
        choose.choose(runs, leaky, tno)


def test_pack_keeps_the_chosen_generator_within_the_budget_and_unpacks(job, tmp_path, monkeypatch):
    _, _, runs, ckpts = job
    with open(os.path.join(runs, "choice.json"), "w") as f:  # the oldest of a: last in line by age
        json.dump({"held_out": {"checkpoint": "a/ckpt-00001000.h5"}}, f)
    with open(os.path.join(runs, "choose.log"), "w") as f:  # what a timed-out choice leaves
        f.write("scored a/ckpt-00001000.h5 on 24 training pairs (105 s)\n")
    with open(os.path.join(runs, "a", "steps.jsonl"), "w") as f:
        f.write('{"step": 3000}\n')
    newest = {k: open(ckpts[k], "rb").read() for k in (("a", "ckpt-00003000.h5"), ("b", "ckpt-00001000.h5"))}
    sizes = sum(pack.gzipped_size(ckpts[k]) for k in newest)
    pack.generator_only(ckpts[("a", "ckpt-00002000.h5")], str(tmp_path / "g.h5"))
    gen = pack.gzipped_size(str(tmp_path / "g.h5"))  # the gzipped sizes are what the budget counts
    monkeypatch.setattr(pack, "BUDGET", int(sizes + 1.5 * gen))  # room for one earlier generator
    out = str(tmp_path / "out")
    pack.main(runs, out)
    assert sorted(os.listdir(out)) == ["a_ckpt-00003000.h5.gz", "a_gens.tar.gz", "b_ckpt-00001000.h5.gz",
                                       "logs.tar.gz"]
    with tarfile.open(os.path.join(out, "a_gens.tar.gz")) as t:
        assert t.getnames() == ["a/ckpt-00001000.h5"]
    with tarfile.open(os.path.join(out, "logs.tar.gz")) as t:
        assert {"choice.json", "choose.log", "a/steps.jsonl"} <= set(t.getnames())

    back = str(tmp_path / "back")
    written = pack.unpack(out, back)
    assert written == [os.path.join(back, "a", n) for n in ("ckpt-00001000.h5", "ckpt-00003000.h5")] + [
        os.path.join(back, "b", "ckpt-00001000.h5")]
    for (run, name), data in newest.items():  # the newest whole, byte for byte
        assert open(os.path.join(back, run, name), "rb").read() == data
    with h5py.File(os.path.join(back, "a", "ckpt-00001000.h5")) as f:
        assert list(f) == ["generator"]
    assert os.path.exists(os.path.join(back, "a", "steps.jsonl")) and os.path.exists(os.path.join(back, "choice.json"))


def test_room_names_the_committed_checkpoints_to_set_aside_for_a_device_call(tmp_path):
    """What a device call sends (tracked, untracked-not-ignored and carried files) against its
    limit: the third lease's call was over it (55 MB of committed checkpoints plus the 20 MB
    carry). Only unmodified committed files under checkpoints/ are named, largest first, until
    the rest fits; where even that is not enough it says so."""
    import subprocess

    repo = tmp_path / "repo"
    (repo / "checkpoints" / "a").mkdir(parents=True)
    (repo / ".gpu").mkdir()

    def write(rel, n):
        (repo / rel).write_bytes(b"x" * n)

    write("checkpoints/a/big one.h5", 5000)
    write("checkpoints/a/mid.h5", 3000)
    write("checkpoints/a/gone.h5", 7000)  # committed, then deleted: not sent, not offered
    write("checkpoints/a/edited.h5", 8000)
    write("code.py", 1000)
    (repo / ".gitignore").write_text(".gpu/\nruns/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    (repo / "checkpoints/a/gone.h5").unlink()
    write("checkpoints/a/edited.h5", 8001)  # modified: never offered (its change would be lost)
    write("checkpoints/a/big", 9000)  # untracked (what `rm checkpoints/a/big one.h5` once hit): never offered
    write("notes.txt", 500)  # untracked, not ignored: travels
    write(".gpu/init.h5", 4000)  # carried
    (repo / "runs").mkdir()
    write("runs/big.h5", 10**6)  # ignored and not carried: stays
    # a tracked file named in carry, spelt another way, was once counted twice
    listed = pack.travelling(str(repo), [".gpu/init.h5", "./code.py"])
    sizes = dict((p, n) for n, p in listed)
    assert len(listed) == len(sizes) and sizes.keys() == {
        "checkpoints/a/big one.h5", "checkpoints/a/mid.h5", "checkpoints/a/edited.h5", "checkpoints/a/big",
        "code.py", ".gitignore", "notes.txt", ".gpu/init.h5"}
    total = sum(sizes.values())
    assert pack.room(str(repo), [".gpu/init.h5"], limit=total) == (total, [])
    assert pack.room(str(repo), [".gpu/init.h5"], limit=total - 1) == (total, ["checkpoints/a/big one.h5"])
    assert pack.room(str(repo), [".gpu/init.h5"], limit=total - 6000)[1] == [
        "checkpoints/a/big one.h5", "checkpoints/a/mid.h5"]
    with pytest.raises(SystemExit, match=r"the device call would send .* even without the committed"):
        pack.room(str(repo), [".gpu/init.h5"], limit=total - 9000)
    # the printed commands, run as printed, set aside exactly the named files and restore them
    report = pack.room_report(str(repo), [".gpu/init.h5"], limit=total - 1).splitlines()
    assert report[2:] == ["  rm -- 'checkpoints/a/big one.h5'", "  git checkout -- 'checkpoints/a/big one.h5'"]
    subprocess.run(report[2], shell=True, cwd=repo, check=True)
    assert not (repo / "checkpoints/a/big one.h5").exists() and (repo / "checkpoints/a/big").exists()
    subprocess.run(report[3], shell=True, cwd=repo, check=True)
    assert (repo / "checkpoints/a/big one.h5").read_bytes() == b"x" * 5000
