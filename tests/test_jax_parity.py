"""benchmarks/jax_train.py (the JAX transcription for GPU machines without TensorFlow) must
update every weight, BN statistic, optimizer slot and counter as DDcGAN.train_step does.

Skipped where JAX is not installed (it is not a dependency of the package).
"""
import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ddcgan_tf import checkpoint
from ddcgan_tf import config as C
from ddcgan_tf.data import batch_stream
from ddcgan_tf.ddcgan import DDcGAN

jax = pytest.importorskip("jax")
jax.config.update("jax_default_matmul_precision", "highest")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("jax_train", os.path.join(REPO, "benchmarks", "jax_train.py"))
jt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jt)

P, N, SPE = 32, 4, 7


@pytest.fixture(autouse=True, scope="module")
def compilation_cache(tmp_path_factory):
    """A resumed run compiles the same step again: let it read the first compile back."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", None)


def _batch(seed):
    rng = np.random.default_rng(seed)
    return rng.random((N, P, P, 1), np.float32), rng.random((N, P // 4, P // 4, 1), np.float32)


def _assert_states_match(before, tf_groups, jax_groups, tol, floor=1e-5):
    """Every counter equal; every float variable's change equal to within tol (L2 norms).

    Two float32 evaluations differ in rounding, and where a ReLU input lies within that
    rounding of 0 the gradient jumps (measured: TF's fused and unfused BN paths flip one ReLU of
    decoder_conv2_4 on this state, which moves single kernel-gradient entries by 1.7 % of the
    largest). Norms over a whole variable are not thrown by one such entry; a wrong formula
    (a missed repeat, the wrong optimizer, no clipping) moves a variable by its whole change.
    """
    assert list(tf_groups) == list(jax_groups)
    for g in tf_groups:
        assert len(tf_groups[g]) == len(jax_groups[g])
        for (path, a), (path_j, b), (_, c) in zip(tf_groups[g], jax_groups[g], before[g]):
            assert path == path_j
            assert a.dtype == b.dtype, path
            if a.dtype.kind == "i":
                assert int(a) == int(b), path
            else:
                change, err = float(np.linalg.norm(a - c)), float(np.linalg.norm(a - b))
                assert err <= tol * change + floor, f"{path}: TF changed it by {change:.3g}, JAX differs by {err:.3g}"


# Measured (L2 norm of the TF/JAX difference over each variable's change, TF's default path):
# no repeat: median 0.03 %, worst 0.3 %; with 3 forced repeats: medians 0.04-0.7 %, worst 3-8.5 %
# (first generator layers and their RMSProp slots; the ReLU-kink jumps compound over the steps).
@pytest.mark.parametrize("preset,schedule,batch,expected_steps,tol", [
    # every net on every batch: one Dv, one Di, one G step
    ("official", dict(l_max=10.0, l_min=0.0, g_max=1e9, max_repeats=1, alternate_batches=False), 5,
     (1, 1, 1), 0.01),
    # the official alternation, a D batch (index 0 in the epoch): every D repeats to I_max, no G
    # step (slow, as the next but one: CI keeps this file's cheapest two, WORKSPACE "CI's length")
    pytest.param("official", dict(l_max=0.0, l_min=10.0, g_max=1e9, max_repeats=3), SPE, (3, 3, 0), 0.15,
                 marks=pytest.mark.slow),
    # ... a G batch (index 5): adversarial G steps to I_max (phase 3), no D step
    ("official", dict(l_max=0.0, l_min=10.0, g_max=1e9, max_repeats=3), 5, (0, 0, 3), 0.15),
    # every net on every batch, no D repeat; full-loss G steps (phase 4) until I_max
    pytest.param("official", dict(l_max=10.0, l_min=0.0, g_max=0.0, max_repeats=3, alternate_batches=False), 5,
                 (1, 1, 3), 0.15, marks=pytest.mark.slow),
    # the paper's numbers: no clipping, relative L_Gmax, LR decayed per batch (50 s: slow)
    pytest.param("paper", dict(max_repeats=2), 5, None, 0.15, marks=pytest.mark.slow),
])
def test_one_jax_batch_equals_the_tf_train_step(tmp_path, preset, schedule, batch, expected_steps, tol):
    cfg = C.get_preset(preset, 4, **schedule)
    tf.keras.utils.set_random_seed(3)
    model = DDcGAN(patch_size=P)
    model.compile(train_config=cfg, steps_per_epoch=SPE)
    # a state some batches into a run: counters and optimizer slots away from their start
    model.batch_count.assign(batch)
    model.optimizer_steps.assign(17)
    for opt in (model.g_optimizer, model.g_adv_optimizer):
        for v in opt._velocities:
            v.assign(tf.random.uniform(v.shape, 0.5, 2.0))
    before = str(tmp_path / "before.h5")
    checkpoint.save_state(model, before)

    vis, ir = _batch(1)
    tf_out = {k: float(v) for k, v in tf.function(model.train_step)((tf.constant(vis), tf.constant(ir))).items()}
    after = str(tmp_path / "after.h5")
    checkpoint.save_state(model, after)
    tf_groups, _ = jt.read_state(after)

    template, _ = jt.read_state(before)
    trainer = jt.Trainer(cfg, SPE)
    state, out = trainer.step(jt.unpack(template), vis, ir)
    jax_groups = jt.pack(state, template)

    if expected_steps:
        assert (tf_out["dv_steps"], tf_out["di_steps"], tf_out["g_steps"]) == expected_steps
    _assert_states_match(template, tf_groups, jax_groups, tol)
    for k, v in tf_out.items():
        assert float(out[k]) == pytest.approx(v, rel=3e-2, abs=1e-5), k


@pytest.mark.slow  # 170 s under CI's load (WORKSPACE "CI's length"): run -m slow before a GPU lease
def test_jax_run_writes_checkpoints_that_tensorflow_resumes(tmp_path, small_patch_set, monkeypatch, capsys):
    """A short JAX run from a TF state leaves ckpt-*.h5, steps.jsonl and config.json that the
    TF tools read: load_state restores it into a compiled model, batch counter included. Its
    batches are ddcgan-train's stream (data.batch_stream), resumed where the run stopped. The
    resume is stopped by SIGTERM (`timeout`, a lease ending) while its first batch is drawn: it
    finishes that batch, saves the full state there (no periodic checkpoint is due), prints one
    line and returns 143, its handler put back. (Folded in here: each jt.main compiles anew.)"""
    import signal

    streams = []

    def spy(size, batch_size, seed, start=0):
        streams.append((batch_size, seed, start))
        for k, idx in enumerate(batch_stream(size, batch_size, seed, start), start + 1):
            if k == 4 and len(streams) == 2:  # the resume's first batch
                os.kill(os.getpid(), signal.SIGTERM)
            yield idx

    monkeypatch.setattr(jt, "batch_stream", spy)
    init = str(tmp_path / "init.h5")
    jt.main(["--write_init", init, "--seed", "0", "--patch_size", "32"])
    run = str(tmp_path / "run")
    assert jt.main(["--data", small_patch_set, "--init", init, "--model_dir", run, "--steps", "3",
                    "--checkpoint_every", "2", "--log_every", "1", "--max_repeats", "2", "--seed", "5",
                    "--batch_size", "12"]) == 0
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["seed"] == 5  # what ddcgan-train resumes with
    assert sorted(os.listdir(run)) == ["ckpt-00000002.h5", "ckpt-00000003.h5", "config.json", "steps.jsonl"]
    from ddcgan_tf.callbacks import read_step_log
    rows = read_step_log(os.path.join(run, "steps.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["g_loss"]) for r in rows)
    # the official alternation (3 batches an epoch): Dv and Di on batches 1 and 3, G on 2
    assert [(r["dv_steps"] > 0, r["di_steps"] > 0, r["g_steps"] > 0) for r in rows] == [
        (True, True, False), (False, False, True), (True, True, False)]
    assert all(r["dv_steps"] <= 2 and r["g_steps"] <= 2 for r in rows)
    model_config, train = checkpoint.read_configs(os.path.join(run, "ckpt-00000003.h5"))
    assert train["max_repeats"] == 2
    model = DDcGAN(patch_size=model_config["patch_size"])
    model.compile(train_config=C.TrainConfig(**train), steps_per_epoch=10)
    checkpoint.load_state(model, os.path.join(run, "ckpt-00000003.h5"))
    assert int(model.batch_count.numpy()) == 3
    assert int(model.optimizer_steps.numpy()) >= 5  # Dv and Di, G, Dv and Di at least
    # a fresh --model_dir needs --init; resuming one does not (a lease's leftover seconds were once
    # spent on that error) and continues from the newest checkpoint, until SIGTERM (a recorder stands in for the
    # earlier handler, so a trainer that did not take the signal fails instead of killing pytest)
    calls = []

    def recorder(signum, frame):
        calls.append(signum)

    with pytest.raises(SystemExit):
        jt.main(["--data", small_patch_set, "--model_dir", str(tmp_path / "fresh"), "--steps", "1"])
    assert "--init is required: " in capsys.readouterr().err
    original = signal.signal(signal.SIGTERM, recorder)
    try:
        status = jt.main(["--data", small_patch_set, "--model_dir", run, "--steps", "50",  # no --init
                          "--checkpoint_every", "1000", "--log_every", "1000", "--batch_size", "12"])
        assert calls == [] and signal.getsignal(signal.SIGTERM) is recorder  # taken, then put back
    finally:
        signal.signal(signal.SIGTERM, original)
    assert status == 128 + signal.SIGTERM
    stopped = os.path.join(run, "ckpt-00000004.h5")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM after batch 4; the full state is saved in {stopped}; the same command resumes from it")
    assert [r["step"] for r in read_step_log(os.path.join(run, "steps.jsonl"))] == [1, 2, 3, 4]
    assert streams == [(12, 5, 0), (12, 5, 3)]  # the recorded seed, from batch 4 on
    # ddcgan-train goes on with the JAX run (a GPU lease, then a CPU) and keeps its record:
    # the seed, and which trainer ran which batches (it used to rewrite the record as its own)
    from ddcgan_tf.record import read_record
    from ddcgan_tf.train import train
    assert int(train(small_patch_set, run, steps=5, batch_size=12, overrides={"max_repeats": 2},
                     tensorboard=False, verbose=0)
               .batch_count.numpy()) == 5
    record = read_record(run)
    assert record["seed"] == 5
    assert [(s["first_batch"], s["trainer"]) for s in record["segments"]] == [
        (1, "benchmarks/jax_train.py"), (5, "ddcgan-train")]
    assert record["trainer"] == "ddcgan-train" and record["segments"][1]["device"]
    # a new run from a later state: its record holds only its own batches (it once credited
    # batches 1-4 to ddcgan-train)
    again = str(tmp_path / "again")
    assert jt.main(["--data", small_patch_set, "--init", os.path.join(run, "ckpt-00000004.h5"),
                    "--model_dir", again, "--steps", "5", "--seed", "5", "--batch_size", "12"]) == 0
    assert [(s["first_batch"], s["trainer"]) for s in read_record(again)["segments"]] == [
        (5, "benchmarks/jax_train.py")]
    # a damaged record: the data seed is unknown, so resuming needs --seed (it fell back to 0)
    with open(os.path.join(again, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(SystemExit, match="config.json: unreadable, so the run's data seed is unknown"):
        jt.main(["--data", small_patch_set, "--init", init, "--model_dir", again, "--steps", "6",
                 "--batch_size", "12"])
