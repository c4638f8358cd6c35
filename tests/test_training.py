"""fit() with the real input pipeline, checkpoints, resume and the NaN guard."""
import json
import os

import h5py
import numpy as np
import pytest
import tensorflow as tf

from ddcgan_tf import checkpoint as ckpt
from ddcgan_tf import config as C
from ddcgan_tf import losses
from ddcgan_tf.data import PatchSet, make_dataset
from ddcgan_tf.errors import InputError
from ddcgan_tf.patches import build_patch_set
from ddcgan_tf.train import TrainingDiverged, _train_differences, build_model, train

from conftest import write_pairs


def content_loss(model, vis, ir):
    fused = model.generator((vis, ir), training=False)
    ir_term, grad_term = losses.content_terms(fused, vis, ir, 4)
    return float(ir_term + 1.2 * grad_term)


def steps_logged(model_dir):
    with open(os.path.join(model_dir, "steps.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def test_short_run_lowers_the_content_loss(small_patch_set, tmp_path):
    ds, _ = make_dataset(small_patch_set, batch_size=4, scale=4, seed=0)
    vis, ir = next(iter(ds))
    tf.keras.utils.set_random_seed(0)
    model = build_model(patch_size=32, train_config=C.get_preset("official", learning_rate=1e-3),
                        steps_per_epoch=1000)
    before = content_loss(model, vis, ir)
    model.fit(ds, steps_per_epoch=12, epochs=1, verbose=0, shuffle=False)
    after = content_loss(model, vis, ir)
    assert after < 0.8 * before, (before, after)


def test_training_resumes_from_the_saved_step(small_patch_set, tmp_path):
    model_dir = str(tmp_path / "run")
    kw = dict(batch_size=12, checkpoint_every=2, tensorboard=False, verbose=0, seed=1)
    first = train(small_patch_set, model_dir, steps=3, **kw)
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [2, 3]
    saved_g = [v.numpy() for v in first.g_optimizer.variables]
    # a fresh model restored from disk has the same weights, slots and counters
    fresh = build_model(patch_size=32, steps_per_epoch=first.steps_per_epoch)
    ckpt.load_state(fresh, ckpt.latest_checkpoint(model_dir))
    assert int(fresh.batch_count.numpy()) == 3
    assert int(fresh.optimizer_steps.numpy()) == int(first.optimizer_steps.numpy())
    for a, b in zip(saved_g, fresh.g_optimizer.variables):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(first.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    second = train(small_patch_set, model_dir, steps=5, **kw)
    assert int(second.batch_count.numpy()) == 5
    assert steps_logged(model_dir) == [1, 2, 3, 4, 5]
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [3, 4, 5]
    # the resumed run trained on batches 4 and 5 of the data stream, not on 1 and 2 again: it
    # ends where the same run without a stop ends (3 batches an epoch here: it stopped at the
    # end of one; the straight run crosses it inside one fit)
    assert len(PatchSet(small_patch_set)) // 12 == 3
    straight = train(small_patch_set, str(tmp_path / "straight"), steps=5, **kw)
    for a, b in zip(second.weights, straight.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)


def test_resume_refuses_other_settings(small_patch_set, tmp_path):
    model_dir = str(tmp_path / "run")
    train(small_patch_set, model_dir, steps=1, batch_size=4, tensorboard=False, verbose=0)
    with open(os.path.join(model_dir, "config.json")) as f:
        seed = json.load(f)["seed"]  # drawn, and recorded so a resume keeps the batch order
    assert isinstance(seed, int)
    with pytest.raises(Exception, match="other settings"):
        train(small_patch_set, model_dir, steps=2, batch_size=4, preset="paper",
              tensorboard=False, verbose=0)
    # a model option with the same variables (the official decoder's double use of its first
    # kernel) would change the network mid-run
    with pytest.raises(InputError, match=r"other settings \(\{'official_decoder': \(True, False\)\}"):
        train(small_patch_set, model_dir, steps=2, batch_size=4, official_decoder=False,
              tensorboard=False, verbose=0)
    # another batch size would change the learning-rate decay period and the batch order
    with pytest.raises(InputError, match="holds a run with 11 batches per epoch, but .* gives 5"):
        train(small_patch_set, model_dir, steps=2, batch_size=8, tensorboard=False, verbose=0)
    # a checkpoint written before alternate_batches existed trained every net on every batch: the
    # official preset (which now alternates) would change that mid-run, and the error names it
    path = ckpt.latest_checkpoint(model_dir)
    with h5py.File(path, "r+") as f:
        old = json.loads(f.attrs["train_config"])
        del old["alternate_batches"]
        f.attrs["train_config"] = json.dumps(old)
    with pytest.raises(InputError, match=r"other settings \(\{'alternate_batches': \(False, True\)\}"):
        train(small_patch_set, model_dir, steps=2, batch_size=4, tensorboard=False, verbose=0)
    assert _train_differences(old, C.get_preset("official", alternate_batches=False)) == {}


def test_a_checkpoint_restores_every_optimizer_and_counter(tmp_path):
    """All four optimizers' slots and iteration counts, both counters and the three networks
    round-trip through a checkpoint (a resume that restored one optimizer and started the other
    three afresh stays within the resume test's tolerance after two batches, so each variable is
    checked here, set to values no fresh model has)."""
    model, fresh = build_model(patch_size=32), build_model(patch_size=32)
    assert sorted(model.optimizers) == ["di", "dv", "g", "g_adv"]
    rng = np.random.default_rng(0)
    groups = {name: list(opt.variables) for name, opt in model.optimizers.items()}
    groups["counters"] = [model.batch_count, model.optimizer_steps]
    groups["networks"] = list(model.generator.weights) + list(model.dv.weights) + list(model.di.weights)
    for variables in groups.values():
        assert variables
        for v in variables:
            dtype = np.dtype(tf.as_dtype(v.dtype).as_numpy_dtype)
            v.assign(rng.integers(1, 1000, v.shape).astype(dtype) if dtype.kind in "iu"
                     else rng.uniform(0.5, 2.0, v.shape).astype(dtype))
    path = str(tmp_path / "ckpt-00000007.h5")
    ckpt.save_state(model, path)
    ckpt.load_state(fresh, path)
    fresh_groups = {name: list(opt.variables) for name, opt in fresh.optimizers.items()}
    fresh_groups["counters"] = [fresh.batch_count, fresh.optimizer_steps]
    fresh_groups["networks"] = list(fresh.generator.weights) + list(fresh.dv.weights) + list(fresh.di.weights)
    for name, variables in groups.items():
        for a, b in zip(variables, fresh_groups[name], strict=True):
            np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()), err_msg=f"{name} {a.path}")


def test_a_resume_with_another_seed_or_no_record_says_so_and_records_it(small_patch_set, tmp_path, capfd):
    """Resuming with another --seed draws other batches from there: config.json records which
    seed ran which batches (it had kept only the newest, as if it ran them all). A resume from a
    copied checkpoint with no config.json draws a new seed: a warning names it and the fix."""
    from ddcgan_tf.record import read_record

    model_dir = str(tmp_path / "run")
    kw = dict(batch_size=12, checkpoint_every=1, tensorboard=False, verbose=0)
    train(small_patch_set, model_dir, steps=2, seed=1, **kw)
    capfd.readouterr()
    train(small_patch_set, model_dir, steps=3, seed=2, **kw)
    assert "warning: data seed 2: the batches from here on differ from the run's seed 1" in capfd.readouterr().err
    record = read_record(model_dir)
    assert [(s["first_batch"], s["seed"]) for s in record["segments"]] == [(1, 1), (3, 2)]
    assert record["seed"] == 2
    # another set (other scenes, as many patches: the batches-per-epoch check passes) is refused; it
    # went on silently, and config.json then named the new set alone. The same set, moved, resumes.
    other = str(tmp_path / "other.h5")
    vis_dir, ir_dir = write_pairs(str(tmp_path / "other"), names=("x", "y", "z"))
    build_patch_set(vis_dir, ir_dir, other, patch=32, stride=16, scale=4, log=lambda *_: None)
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(InputError, match=f"^{other}: is not the patch set {model_dir} was trained on "
                                         f"\\({small_patch_set}: 45 vis-ir patches of 32 pixels from 3 pairs "
                                         "\\(a, b, c\\); this one: 45 vis-ir patches of 32 pixels from 3 pairs "
                                         "\\(x, y, z\\)\\)"):
        train(other, model_dir, steps=4, **kw)
    assert (tmp_path / "run" / "config.json").read_text() == before
    moved = str(tmp_path / "moved.h5")
    os.rename(small_patch_set, moved)
    train(moved, model_dir, steps=4, **kw)  # no --seed: the run's newest one, one segment
    assert "warning" not in capfd.readouterr().err
    assert [(s["first_batch"], s["seed"]) for s in read_record(model_dir)["segments"]] == [(1, 1), (3, 2)]
    copied = tmp_path / "copied"
    copied.mkdir()
    os.link(ckpt.latest_checkpoint(model_dir), copied / os.path.basename(ckpt.latest_checkpoint(model_dir)))
    train(moved, str(copied), steps=5, **kw)
    err = capfd.readouterr().err
    assert f"warning: {copied} records no data seed (no readable config.json)" in err
    assert "pass the run's --seed to keep its batch order" in err


def test_a_state_of_another_patch_size_is_refused_by_name(tmp_path):
    """The discriminators' dense kernels depend on the patch size: restoring a 32x32 run into a
    48x48 model names the variable and both shapes, instead of a TensorFlow assign error."""
    path = str(tmp_path / "ckpt-00000001.h5")
    ckpt.save_state(build_model(patch_size=32), path)
    with pytest.raises(InputError, match=r"ckpt-00000001\.h5: variable \S*dv\S*dense\S*kernel has shape "
                                         r"\(1024, 1\), the model expects \(2304, 1\)"):
        ckpt.load_state(build_model(patch_size=48), path)


def test_a_state_missing_a_variable_is_refused_not_restored_in_part(tmp_path):
    """A checkpoint group with fewer variables than the model (a damaged file, or one written
    before optimizer_steps was saved) is refused with both counts, instead of restoring the
    variables it has and leaving the rest (here the learning-rate counter) as they were."""
    path = str(tmp_path / "ckpt-00000001.h5")
    ckpt.save_state(build_model(patch_size=32), path)
    with h5py.File(path, "r+") as f:
        del f["counters"][sorted(f["counters"])[-1]]
    with pytest.raises(InputError, match=r"ckpt-00000001\.h5: '/counters' holds 1 variables, the model has 2"):
        ckpt.load_state(build_model(patch_size=32), path)


@pytest.mark.parametrize("retries", [0, 2])
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, retries):
    path = str(tmp_path / "nan.h5")
    rng = np.random.default_rng(0)
    vis = rng.random((8, 32, 32, 1)).astype(np.float32)
    vis[4:] = 0.25  # marks the second half of an unshuffled pass, poisoned on its way in
    with h5py.File(path, "w") as f:  # (a NaN stored in the set is refused as bad input)
        f["vis"] = vis
        f["ir"] = rng.random((8, 8, 8, 1)).astype(np.float32)
    model_dir = str(tmp_path / "run")
    import ddcgan_tf.train as train_module

    def poisoned(*a, **k):
        ds, patches = make_dataset(*a, **{**k, "shuffle": False})
        marked = lambda v: tf.reduce_all(tf.equal(v, 0.25))
        return ds.map(lambda v, i: (tf.where(marked(v), v * np.nan, v), i)), patches

    monkeypatch.setattr(train_module, "make_dataset", poisoned)
    # every other batch is poisoned: each retry restores checkpoint 1 and meets the same
    # poisoned batch 2 again (a retry replays the batches); once the retries are spent the run stops
    last = 2
    expected = "non-finite .* at batch 2" + (f" \\(after {retries} retries\\)" if retries else "; training")
    with pytest.raises(TrainingDiverged, match=expected):
        train(path, model_dir, steps=6, batch_size=4, checkpoint_every=1, tensorboard=False, verbose=0,
              nan_retries=retries)
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == list(range(1, last))[-3:]
    assert steps_logged(model_dir) == list(range(1, last + 1))
    model = build_model(patch_size=32)
    ckpt.load_state(model, ckpt.latest_checkpoint(model_dir))
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_nan_retries_restore_the_last_checkpoint_after_a_transient_fault(small_patch_set, tmp_path,
                                                                        monkeypatch, capsys):
    import ddcgan_tf.train as train_module

    passes = []

    def flaky_dataset(*a, **k):  # the third batch of the first pass only is non-finite
        ds, patches = make_dataset(*a, **k)

        def batches():
            passes.append(1)
            for n, (vis, ir) in enumerate(ds):
                yield (vis * np.nan if len(passes) == 1 and n == 2 else vis), ir

        return tf.data.Dataset.from_generator(batches, output_signature=ds.element_spec), patches

    monkeypatch.setattr(train_module, "make_dataset", flaky_dataset)
    model_dir = str(tmp_path / "run")
    model = train(small_patch_set, model_dir, steps=5, batch_size=4, checkpoint_every=2, tensorboard=False,
                  verbose=0, seed=0, nan_retries=1)
    assert "non-finite" in capsys.readouterr().err and len(passes) == 2
    assert int(model.batch_count.numpy()) == 5
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)
    assert steps_logged(model_dir) == [1, 2, 3, 4, 5]  # the failed batch 3 was logged, then trimmed
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [2, 4, 5]
    # the retry trained batches 3-5 again, the same batches: the run ends as one without the fault
    clean = train(small_patch_set, str(tmp_path / "clean"), steps=5, batch_size=4, checkpoint_every=2,
                  tensorboard=False, verbose=0, seed=0)
    for a, b in zip(model.weights, clean.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)


@pytest.fixture
def sigterm_recorder():
    """SIGTERM goes to a recorder while a test runs: a trainer that did not take a signal shows
    up in the list instead of killing pytest."""
    import signal

    calls = []

    def recorder(signum, frame):
        calls.append(signum)

    original = signal.signal(signal.SIGTERM, recorder)
    yield calls
    signal.signal(signal.SIGTERM, original)


def test_a_signal_during_the_final_save_is_taken_and_the_save_completes(small_patch_set, tmp_path,
                                                                       monkeypatch, sigterm_recorder):
    """SIGTERM while the run's last checkpoint is being written (a stop that lands as the run
    ends): the stop handler still holds it (the stop callback ends after the Checkpoint one),
    so the save completes and the run returns, every batch kept. (The handlers came off before
    the save once, and the run was killed with no checkpoint.)"""
    import signal

    real_save = ckpt.CheckpointManager.save

    def save_with_a_stop(self, model):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(self, model)

    monkeypatch.setattr(ckpt.CheckpointManager, "save", save_with_a_stop)
    model_dir = str(tmp_path / "run")
    model = train(small_patch_set, model_dir, steps=3, batch_size=4, checkpoint_every=1000, tensorboard=False,
                  verbose=0)
    assert sigterm_recorder == [] and signal.getsignal(signal.SIGTERM).__name__ == "recorder"
    assert int(model.batch_count.numpy()) == 3
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [3]


def test_a_signal_with_a_nan_and_retries_left_stops_at_the_last_good_checkpoint(small_patch_set, tmp_path,
                                                                               monkeypatch, sigterm_recorder,
                                                                               capsys):
    """SIGTERM during the batch whose loss turns NaN, with --nan_retries left: the run stops as
    interrupted (exit 143 in the CLI: resume it), at the last good checkpoint, not as diverged
    (exit 3: a wrapper would give up a run that the retry would have saved), and it does not
    retry first. The signal is sent by the NaN guard as it sees the non-finite loss, so it lands
    with that batch every time (sent from the input pipeline, it landed before the NaN batch was
    trained: the input is read ahead, and the retry branch was never reached)."""
    import signal

    import ddcgan_tf.callbacks as cb_module
    import ddcgan_tf.train as train_module
    from ddcgan_tf.train import TrainingInterrupted

    def faulty_dataset(*a, **k):  # batch 3 of the run is non-finite, on every pass
        ds, patches = make_dataset(*a, **k)
        first = k.get("start", 0)

        def batches():
            for n, (vis, ir) in enumerate(ds):
                yield (vis * np.nan if first + n == 2 else vis), ir

        return tf.data.Dataset.from_generator(batches, output_signature=ds.element_spec), patches

    seen = []

    class SignallingGuard(cb_module.NaNGuard):  # the stop arrives with the non-finite batch
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if self.bad is not None and not seen:
                seen.append(self.bad[0])
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module, "make_dataset", faulty_dataset)
    monkeypatch.setattr(cb_module, "NaNGuard", SignallingGuard)
    model_dir = str(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as stop:
        train(small_patch_set, model_dir, steps=6, batch_size=4, checkpoint_every=2, tensorboard=False,
              verbose=0, nan_retries=2)
    assert seen == [3]  # the signal came with the NaN batch, so the retry branch decided
    good = os.path.join(model_dir, "ckpt-00000002.h5")
    assert (stop.value.signum, stop.value.step, stop.value.checkpoint) == (signal.SIGTERM, 2, good)
    assert str(stop.value) == (f"stopped by SIGTERM after batch 2; the full state is saved in {good}; "
                               f"the same command resumes from it")
    assert "retry" not in capsys.readouterr().err  # no retry was started before stopping
    assert sigterm_recorder == [] and [s for s, _ in ckpt.list_checkpoints(model_dir)] == [2]
    assert steps_logged(model_dir)[:2] == [1, 2]


@pytest.mark.parametrize("override", [dict(clip_value=-8.0), dict(learning_rate=0.0), dict(max_repeats=0)])
def test_settings_no_run_can_mean_are_refused_before_training(small_patch_set, tmp_path, override):
    """A negative clip bound set every weight to +8 and the run stopped as 'diverged' (exit 3)."""
    name, value = next(iter(override.items()))
    with pytest.raises(InputError, match=f"--preset: bad preset or override \\({name} must be"):
        train(small_patch_set, str(tmp_path / "run"), steps=1, batch_size=4, tensorboard=False, verbose=0,
              overrides=override)
    assert not ckpt.list_checkpoints(str(tmp_path / "run"))


def test_nan_retries_must_be_a_count(small_patch_set, tmp_path):
    with pytest.raises(InputError, match="--nan_retries"):
        train(small_patch_set, str(tmp_path / "run"), steps=1, nan_retries=-1)


def _max_gap(nets_a, nets_b):
    return max(float(np.abs(a.numpy() - b.numpy()).max())
               for na, nb in zip(nets_a, nets_b) for a, b in zip(na.trainable_weights, nb.trainable_weights))


def _first_step(model_dir):
    with open(os.path.join(model_dir, "steps.jsonl")) as f:
        return json.loads(f.readline())


def test_init_from_fine_tunes_other_weights_with_a_fresh_schedule(small_patch_set, tmp_path):
    kw = dict(batch_size=4, checkpoint_every=2, tensorboard=False, verbose=0)
    src_dir, ft_dir, fresh_dir = (str(tmp_path / n) for n in ("src", "ft", "fresh"))
    src = train(small_patch_set, src_dir, steps=3, seed=1, preset="paper", **kw)  # lr 2e-3: weights move
    ft = train(small_patch_set, ft_dir, steps=1, seed=2, init_from=src_dir, **kw)
    fresh = train(small_patch_set, fresh_dir, steps=1, seed=2, **kw)
    nets = lambda m: (m.generator, m.dv, m.di)  # noqa: E731
    # all three networks start from the source run's weights, not from a new initialisation
    assert _max_gap(nets(src), nets(ft)) < 0.1 * _max_gap(nets(src), nets(fresh))
    # ... under this run's own (official) preset, with the schedule and optimizers starting over
    assert int(ft.batch_count.numpy()) == 1
    first = _first_step(ft_dir)
    assert int(ft.optimizer_steps.numpy()) == first["dv_steps"] + first["di_steps"] + first["g_steps"]
    assert C.get_preset("official").learning_rate * 0.5 < first["lr"] <= C.get_preset("official").learning_rate
    with open(os.path.join(ft_dir, "config.json")) as f:
        assert json.load(f)["init_from"] == os.path.abspath(ckpt.latest_checkpoint(src_dir))
    # a second call resumes the fine-tuning run; --init_from no longer applies, its record stays
    again = train(small_patch_set, ft_dir, steps=2, seed=3, init_from=str(tmp_path / "gone"), **kw)
    assert int(again.batch_count.numpy()) == 2
    with open(os.path.join(ft_dir, "config.json")) as f:
        assert json.load(f)["init_from"] == os.path.abspath(ckpt.latest_checkpoint(src_dir))


def test_init_from_a_generator_file_keeps_fresh_discriminators(small_patch_set, tmp_path, generator_file):
    kw = dict(batch_size=4, tensorboard=False, verbose=0, seed=4)
    model = build_model(patch_size=32, steps_per_epoch=10)
    assert ckpt.load_networks(model, generator_file) == ["generator"]
    reference = ckpt.load_generator(generator_file)
    for a, b in zip(model.generator.weights, reference.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(train(small_patch_set, str(tmp_path / "run"), steps=1, init_from=generator_file,
                     **kw).batch_count.numpy()) == 1


def test_init_from_a_shipped_directory_reads_its_full_state(tmp_path):
    shipped = tmp_path / "vis-ir"
    shipped.mkdir()
    tf.keras.utils.set_random_seed(5)
    source = build_model(patch_size=32, steps_per_epoch=10)
    ckpt.save_state(source, str(shipped / "train_state.h5"))
    ckpt.save_generator(source.generator, str(shipped / "generator.h5"))
    target = build_model(patch_size=32, steps_per_epoch=10)
    assert ckpt.load_networks(target, str(shipped)) == ["generator", "dv", "di"]
    for a, b in zip(source.dv.weights + source.di.weights, target.dv.weights + target.di.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # a generator shipped from an earlier checkpoint of the run than its state: G is generator.h5's
    earlier = build_model(patch_size=32, steps_per_epoch=10)
    ckpt.save_generator(earlier.generator, str(shipped / "generator.h5"))
    assert ckpt.load_networks(target, str(shipped)) == ["generator", "dv", "di"]
    for a, b in zip(earlier.generator.weights, target.generator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(earlier.generator.weights[0].numpy(), source.generator.weights[0].numpy())


def test_init_from_a_run_directory_takes_its_newest_checkpoint_even_beside_a_train_state(tmp_path):
    """A run directory warm-starts from its newest checkpoint; train_state.h5 is read only from a
    directory with no checkpoint (a shipped one). A run directory that also holds a copied
    train_state.h5 (README: resuming from the shipped state) still gives its own newest one."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("train_state.h5", "ckpt-00000002.h5", "ckpt-00000009.h5"):
        (run / name).write_bytes(b"")
    assert ckpt.warm_start_file(str(run)) == str(run / "ckpt-00000009.h5")
    for name in ("ckpt-00000002.h5", "ckpt-00000009.h5"):
        (run / name).unlink()
    assert ckpt.warm_start_file(str(run)) == str(run / "train_state.h5")


def test_init_from_refuses_missing_or_mismatched_weights(small_patch_set, tmp_path, generator_file):
    kw = dict(steps=1, batch_size=4, tensorboard=False, verbose=0)
    with pytest.raises(InputError, match="not found"):
        train(small_patch_set, str(tmp_path / "a"), init_from=str(tmp_path / "missing.h5"), **kw)
    with pytest.raises(InputError, match="official_decoder=True, this run has official_decoder=False") as e:
        train(small_patch_set, str(tmp_path / "b"), official_decoder=False, init_from=generator_file, **kw)
    assert generator_file in str(e.value)


def test_a_finished_run_run_again_changes_nothing_and_a_resume_logs_each_step_once(small_patch_set, tmp_path,
                                                                                  capfd):
    """Three things a user of one small run sees. A new run (no --seed) warns about nothing: the
    'records no data seed' warning is for a resume only. The finished run's command run again
    trains no further batch: the same batch count, no new checkpoint, the step log unchanged.
    A run killed between its step-log write and its checkpoint (the newest checkpoint gone)
    resumes with each step logged once (the log is trimmed to the checkpoint first); its
    config.json gone too, that resume does warn that it draws a new data seed."""
    model_dir = str(tmp_path / "run")
    log_path = os.path.join(model_dir, "steps.jsonl")
    # 4 patches a batch: 11 batches an epoch, so the run's end is inside an epoch
    kw = dict(batch_size=4, checkpoint_every=1, tensorboard=False, verbose=0)
    capfd.readouterr()
    first = train(small_patch_set, model_dir, steps=3, **kw)
    assert int(first.batch_count.numpy()) == 3
    assert "warning" not in capfd.readouterr().err
    with open(log_path) as f:
        log_before = f.read()
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [1, 2, 3]
    again = train(small_patch_set, model_dir, steps=3, **kw)
    assert int(again.batch_count.numpy()) == 3
    assert [s for s, _ in ckpt.list_checkpoints(model_dir)] == [1, 2, 3]
    with open(log_path) as f:
        assert f.read() == log_before
    capfd.readouterr()
    # the kill: batch 3 logged, its checkpoint (and the run's record) not on disk
    os.remove(os.path.join(model_dir, "ckpt-00000003.h5"))
    os.remove(os.path.join(model_dir, "config.json"))
    resumed = train(small_patch_set, model_dir, steps=4, **kw)
    assert f"warning: {model_dir} records no data seed" in capfd.readouterr().err
    assert int(resumed.batch_count.numpy()) == 4
    assert steps_logged(model_dir) == [1, 2, 3, 4]
    from ddcgan_tf.callbacks import read_step_log
    assert [r["step"] for r in read_step_log(log_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("flag", ["steps", "epochs", "keep", "checkpoint_every"])
def test_a_zero_count_is_refused_by_name_before_any_work(small_patch_set, tmp_path, flag):
    """--steps 0 trained a whole epoch, --epochs 0 returned an untrained model as if trained,
    --keep 0 / --checkpoint_every 0 ran with 1: each is an InputError naming the flag, raised
    before the model directory is even made."""
    model_dir = str(tmp_path / "run")
    kw = dict(steps=1, batch_size=12, tensorboard=False, verbose=0, seed=1)
    kw[flag] = 0
    with pytest.raises(InputError, match=f"^--{flag}: must be a positive integer, got 0$"):
        train(small_patch_set, model_dir, **kw)
    assert not os.path.exists(model_dir)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_nan_guard_stops_on_any_non_finite_loss(value):
    """NaNGuard reads the batch's logs (Keras passes them as floats or tensors), the model's
    batch_count, and sets the model's diverged and stop_training: an infinite loss stops the
    run as a NaN does (an Inf loss is as diverged; its weights are no good either)."""
    import types

    from ddcgan_tf.callbacks import NaNGuard

    model = types.SimpleNamespace(batch_count=tf.Variable(7, dtype=tf.int64), diverged=False, stop_training=False)
    guard = NaNGuard()
    guard.set_model(model)
    guard.on_train_batch_end(0, {"g_loss": np.float32(1.5), "dv_loss": tf.constant(0.25)})
    assert guard.bad is None and not model.stop_training and not model.diverged
    guard.on_train_batch_end(1, {"g_loss": tf.constant(value, tf.float32), "dv_loss": 0.25})
    assert guard.bad == (7, ["g_loss"])
    assert model.stop_training and model.diverged

