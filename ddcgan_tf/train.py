"""Training entry point as a library function (the `ddcgan-train` CLI is a thin wrapper)."""
import contextlib
import json
import math
import os
import signal
import sys
import time

import keras
import tensorflow as tf

from ddcgan_tf import callbacks as cb
from ddcgan_tf import config as C
from ddcgan_tf.checkpoint import (CheckpointManager, latest_checkpoint, list_checkpoints, load_networks,
                                  read_steps_per_epoch, run_lock, state_variables, warm_start_file)
from ddcgan_tf.data import PatchSet, batch_stream, batches_per_epoch, check_seed, make_dataset, new_seed
from ddcgan_tf.ddcgan import DDcGAN
from ddcgan_tf.errors import InputError
from ddcgan_tf.images import check_output_dir, probe_writable, write_text
from ddcgan_tf.record import TF_TRAINER, add_segment, cpu_name, read_record, write_record

SCALES = (1, 2, 4, 8)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


class PeerLost(RuntimeError):
    """--strategy multiworker: another worker stopped or became unreachable in the middle of a
    batch (killed, crashed, its machine gone). Nothing is saved at that point (the batch may be
    half applied); every worker resumes from the chief's newest checkpoint when started again."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped training after a whole batch; the full state at that batch is
    saved (`checkpoint`), and the same call resumes from it. A KeyboardInterrupt, so a notebook
    or script treats it as the interrupt it was. `signum`: the signal; SIGTERM on a worker that
    stopped because another worker was signalled (--strategy multiworker)."""

    def __init__(self, request, step, checkpoint):
        self.signum = request.received if request.received is not None else signal.SIGTERM
        self.step, self.checkpoint = step, checkpoint
        super().__init__(request.message(step, checkpoint))


def _check_count(flag, value, allow_none=False, allow_zero=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise InputError(flag, f"must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def build_model(scale=C.SCALE, patch_size=C.PATCH_SIZE, official_decoder=True, bn_mode="batch",
                train_config=None, steps_per_epoch=1000, jit_compile=False):
    model = DDcGAN(scale=scale, patch_size=patch_size, official_decoder=official_decoder, bn_mode=bn_mode)
    model.compile(train_config=train_config or C.get_preset("official", scale),
                  steps_per_epoch=steps_per_epoch, jit_compile=jit_compile)
    return model


STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name="default"):
    """tf.distribute strategy by name: default (one device), mirrored (all local GPUs, or the
    CPU), multiworker (MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise InputError("--strategy", "multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise InputError("--strategy", f"must be one of {', '.join(STRATEGIES)}, got {name!r}")


def is_chief():
    """True unless TF_CONFIG names this process a non-chief worker (only the chief writes)."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cluster.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    has_chief = "chief" in cluster.get("cluster", {})
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


class StartTogether:
    """Under MultiWorkerMirroredStrategy, a worker that fails while setting up (a missing data
    file, a resume refused for other settings, a damaged checkpoint or warm-start file) must not
    leave the others waiting for it in their next collective. At each agreement point every
    worker all-reduces whether it failed: `ready()` raises on the others if one did, and the
    failing one calls `fail()` instead, which joins the next agreement. Two points: before the
    model is built (the first collective: the weights' broadcast) and after the weights are
    restored or warm-started (`last=True`; then the chief's state is shared). One collective each.
    A worker that fails inside the model's build joins the others' weight broadcast with its
    all-reduce instead, which aborts it there (`building`). A failure after the last agreement
    is not covered (training's own collectives then fail: PeerLost)."""

    PEER_FAILED = "another worker failed to start (its own error says why); every worker stops"

    def __init__(self, strategy):
        self._any = cb.any_worker(strategy)
        self._open = True  # the next agreement is still ahead (fail() must join it)

    def ready(self, last=False):
        self._open = not last
        if bool(self._any(tf.constant(0.0))):
            self._open = False
            raise InputError("--strategy multiworker", self.PEER_FAILED)

    @contextlib.contextmanager
    def building(self):
        """Around the model's build (its first collective, the weights' broadcast): a collective
        op that fails there because a peer failed (its fail() does not match the broadcast, or
        the peer is gone) is that peer's failure, one line; this worker then joins nothing
        more. Any other error is this worker's own (fail() tells the peers)."""
        try:
            yield
        except (tf.errors.InternalError, tf.errors.UnavailableError, tf.errors.CancelledError,
                tf.errors.AbortedError) as e:
            if "collective" not in str(e.message).lower():
                raise
            self._open = False
            raise InputError("--strategy multiworker", self.PEER_FAILED) from None

    def fail(self):
        if self._open:
            self._open = False
            try:
                self._any(tf.constant(1.0))
            except Exception:  # noqa: BLE001 - the worker's own error is the one to report
                pass


def share_chief_state(model, strategy):
    """Sets every worker's training state (`checkpoint.state_variables`) to the chief's.

    Under MultiWorkerMirroredStrategy only the chief writes checkpoints, so on a resume with a
    model_dir per machine only the chief restores one; a worker that started afresh would train
    other weights from another batch (and wait in the collectives when the chief's run ends).
    One all-reduce per variable: the chief's replicas contribute their value / replicas per
    worker, the others 0 (float64: exact for float32 weights and the integer counters).
    """
    chief = is_chief()
    local = len(strategy.extended.worker_devices)  # the same on every worker

    variables = state_variables(model)

    @tf.function(autograph=False)
    def share():  # the variables captured, not passed (Keras variables would become tensors)
        for v in variables:
            mine = tf.cast(v, tf.float64) / local if chief else tf.zeros(v.shape, tf.float64)
            total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda x=mine: tf.identity(x)),
                                    axis=None)
            dtype = tf.as_dtype(v.dtype)  # a Keras variable's dtype is a string
            v.assign(tf.cast(tf.round(total) if dtype.is_integer else total, dtype))

    share()


def train(data, model_dir, steps=None, epochs=1, batch_size=C.BATCH_SIZE, preset="official",
          overrides=None, scale=C.SCALE, official_decoder=True, bn_mode="batch",
          checkpoint_every=100, keep=3, jit_compile=False, seed=None, tensorboard=True,
          verbose=1, sample_every=100, strategy="default", mixed_precision=None, nan_retries=0,
          init_from=None):
    """Trains (or resumes) a DDcGAN on an HDF5 patch set; returns the model.

    A model_dir that already holds checkpoints is resumed: the newest checkpoint restores the
    weights, optimizer slots and schedule counters, and its stored configuration is used (a
    different --preset or model option is an error, so two runs never mix silently).
    Training stops after `steps` batches in all (across resumes), or after `epochs` passes.

    Faults: bad data or flags raise InputError; a model_dir that cannot be written (read-only,
    full, a path under a regular file) raises `ddcgan_tf.images.WriteError` (an InputError) before
    training starts or, when a checkpoint/log write fails later, as soon as it fails (the previous
    checkpoints stay intact); a NaN/Inf loss raises TrainingDiverged, keeping the last good
    checkpoint. SIGTERM or SIGINT (Ctrl-C) finishes the batch in flight, saves the full state and
    raises TrainingInterrupted (a KeyboardInterrupt); a second signal, or SIGKILL, kills at
    once. A run killed at any moment resumes from its newest complete checkpoint; the
    step log is trimmed to that checkpoint so each step appears once. model_dir/config.json
    (`ddcgan_tf.record`) holds the settings, the data seed and, per start, the trainer and
    device that ran the batches from there (`segments`; the JAX trainer adds its own).

    strategy: "mirrored" / "multiworker" train replicated (batch_size is the global batch; the
    losses are averaged over it and every replica takes the same schedule decisions). With
    multiworker only the chief writes checkpoints and logs.
    mixed_precision: None, "mixed_bfloat16" or "mixed_float16" (with loss scaling): the Keras
    global dtype policy, set before the model is built. Variables, BN, losses and the fused
    image stay float32; the convolutions run in 16 bit. Meant for GPUs; works on the CPU.
    nan_retries: after a non-finite loss, restore the last good checkpoint and train on from
    there with the same batches, up to this many times in this call (each one reported on
    stderr); 0 stops at the first. For transient faults (the bfloat16 CPU kernels, WORKSPACE.md),
    which then leave the run as it would have been; a divergence that the batches cause recurs
    and still ends in TrainingDiverged.
    seed: the data seed (the batch order, `ddcgan_tf.data`) and Keras's (initial weights). None:
    a resumed run keeps the seed recorded in config.json, a new run draws one and records it, so
    every run resumes with the batches it would have had without stopping.
    init_from: a checkpoint, generator file, run directory or shipped directory (checkpoints/vis-ir,
    whose train_state.h5 is read) whose network weights start a *new* run (fine-tuning): the
    generator, and Dv/Di when the file holds them; optimizers, learning-rate schedule and batch
    count start fresh under this run's preset. Ignored when model_dir already holds a run (that
    run resumes); recorded in config.json.
    """
    model_dir = os.fspath(model_dir)
    chief = is_chief()  # only the chief writes model_dir (MultiWorkerMirroredStrategy)
    with contextlib.ExitStack() as held:  # the run directory's lock (run_lock), released however this ends
        if strategy == "multiworker" and seed is None:  # each worker cuts the global batches itself
            raise InputError("--seed", "is needed with --strategy multiworker: every worker must draw the "
                                       "same batches (give all of them the same --seed)")
        # first: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op
        distribution = make_strategy(strategy)
        start = StartTogether(distribution) if strategy == "multiworker" else None
        try:
            _check_count("--steps", steps, allow_none=True)
            _check_count("--epochs", epochs)
            _check_count("--checkpoint_every", checkpoint_every)
            _check_count("--keep", keep)
            _check_count("--sample_every", sample_every)
            _check_count("--nan_retries", nan_retries, allow_zero=True)
            if nan_retries and strategy == "multiworker":
                raise InputError("--nan_retries", "is not supported with --strategy multiworker (only the "
                                                  "chief holds the checkpoints to restore)")
            if scale not in SCALES:
                raise InputError("--scale", f"must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
            check_output_dir(model_dir, create=True)
            probe_writable(model_dir)
            if chief:  # one trainer per run directory (only the chief writes there)
                held.enter_context(run_lock(model_dir))
            seed = None if seed is None else check_seed(seed)
            patches = PatchSet(data, scale)
            steps_per_epoch = batches_per_epoch(patches, batch_size)
            log = print if verbose else (lambda *_: None)
            manager = CheckpointManager(model_dir, keep=keep, log=lambda msg: print(msg, file=sys.stderr),
                                        clean=chief)
            try:
                cfg = C.get_preset(preset, scale, **(overrides or {}))
            except (TypeError, ValueError, KeyError) as e:
                raise InputError("--preset", f"bad preset or override ({e})") from None
            model_options = dict(scale=scale, patch_size=patches.patch, official_decoder=official_decoder,
                                 bn_mode=bn_mode)
            latest, stored_model, stored_train = manager.latest_readable()
            stored = read_record(model_dir) if latest else {}
            stored_seed = stored.get("seed")
            try:
                stored_seed = None if stored_seed is None else check_seed(stored_seed)
            except InputError:  # a damaged record: the run goes on with a new seed
                stored_seed = None
            if seed is None:  # a resumed run keeps its data seed; a new one draws and records one
                seed = new_seed() if stored_seed is None else stored_seed
                if latest and stored_seed is None:
                    print(f"warning: {model_dir} records no data seed (no readable config.json), so this resume "
                          f"draws batches with a new seed, {seed}; pass the run's --seed to keep its batch order",
                          file=sys.stderr)
            elif stored_seed is not None and seed != stored_seed:
                print(f"warning: data seed {seed}: the batches from here on differ from the run's seed "
                      f"{stored_seed} (config.json records both, by batch)", file=sys.stderr)
            keras.utils.set_random_seed(seed)
            if init_from is not None and not latest:
                init_from = warm_start_file(init_from)  # InputError for a missing file before any work
            if latest:
                mismatch = {k: (stored_model.get(k), v) for k, v in model_options.items()
                            if stored_model.get(k) != v}
                differ = _train_differences(stored_train, cfg)
                if mismatch or differ:
                    raise InputError(model_dir, f"holds a run with other settings "
                                                f"({mismatch or differ}: the run's, then this call's); "
                                                f"resume with the run's settings or use a new --model_dir")
                stored_data = stored.get("data_identity")
                if isinstance(stored_data, dict) and stored_data != patches.identity:
                    raise InputError(data, f"is not the patch set {model_dir} was trained on ({stored.get('data')}: "
                                           f"{_describe_set(stored_data)}; this one: "
                                           f"{_describe_set(patches.identity)}); resume with the run's set, or "
                                           "start a new --model_dir (--init_from fine-tunes its weights)")
                stored_epoch = read_steps_per_epoch(latest)
                if stored_epoch is not None and stored_epoch != steps_per_epoch:
                    raise InputError(model_dir, f"holds a run with {stored_epoch} batches per epoch, but {data} in "
                                                f"batches of {batch_size} gives {steps_per_epoch} (the learning-rate "
                                                f"decay and the batch order depend on it); resume with the run's patch "
                                                f"set and --batch_size, or start a new --model_dir (--init_from "
                                                f"fine-tunes its weights)")
            if mixed_precision not in (None, "float32", "mixed_bfloat16", "mixed_float16"):
                raise InputError("--mixed_precision",
                                 f"must be mixed_bfloat16 or mixed_float16, got {mixed_precision!r}")
            keras.mixed_precision.set_global_policy(mixed_precision or "float32")
            if start is not None:  # before the first collective (building the model broadcasts its weights)
                start.ready()
            with distribution.scope(), start.building() if start is not None else contextlib.nullcontext():
                model = build_model(train_config=cfg, steps_per_epoch=steps_per_epoch, jit_compile=jit_compile,
                                    **model_options)
            restored = manager.restore_latest(model)
            if restored:
                if init_from is not None:
                    log(f"--init_from ignored: {model_dir} holds a run, which resumes")
                init_from = stored.get("init_from")  # keep the record across resumes
            elif init_from is not None:
                loaded = load_networks(model, init_from)
                init_from = os.path.abspath(init_from)
                log(f"initialised {', '.join(loaded)} from {init_from}")
            if start is not None:  # the chief's state is the run's (a resume reads it only there)
                start.ready(last=True)
                share_chief_state(model, distribution)
                if not restored and int(model.batch_count.numpy()):
                    restored = "the chief's checkpoint"
        except Exception:
            if start is not None:  # the peers would wait for this worker in the first collective
                start.fail()
            raise
        done = int(model.batch_count.numpy())
        total = int(steps) if steps else epochs * steps_per_epoch
        log(f"{'resumed from ' + restored if restored else 'new run'}: {done} of {total} batches done; "
            f"{len(patches)} patches, {steps_per_epoch} batches per epoch; data seed {seed}")
        if chief:  # only the chief writes (MultiWorkerMirroredStrategy)
            here = {"trainer": TF_TRAINER, "device": device_name(), "strategy": strategy,
                    "replicas": distribution.num_replicas_in_sync, "mixed_precision": mixed_precision or "float32",
                    "seed": seed}
            write_record(model_dir, {
                **here, "model": model.get_config(), "train": cfg.to_dict(), "data": os.path.abspath(data),
                "batch_size": batch_size, "patches": len(patches), "data_identity": patches.identity,
                "steps_per_epoch": steps_per_epoch,
                "seed": seed, "init_from": init_from, "segments": add_segment(stored, done + 1, **here)})
        step_log = os.path.join(model_dir, "steps.jsonl")
        if chief:  # a killed run may have logged past its checkpoint
            cb.trim_step_log(step_log, done, write_text)
        if done >= total:
            return model
        guard = cb.NaNGuard()
        stopper = cb.GracefulStop(distribution if strategy == "multiworker" else None)
        # StepLog before Checkpoint: a saved step is always logged already
        stop_at = cb.StopAtStep(total)
        callbacks = [stop_at, guard]
        if chief:
            callbacks += [cb.StepLog(step_log), cb.Checkpoint(manager, checkpoint_every)]
        if tensorboard and chief:
            log_dir = os.path.join(model_dir, "logs")
            check_output_dir(log_dir, create=True)
            vis, ir = patches.take(next(batch_stream(len(patches), batch_size, seed))[:3])  # batch 1's first 3
            callbacks.append(cb.SampleImages(log_dir, vis, ir, sample_every))
        # last: Keras ends the callbacks in order, so the handlers stay until Checkpoint's final save
        callbacks.append(stopper)
        start, first = time.time(), done
        for attempt in range(nan_retries + 1):
            guard.bad, model.diverged = None, False
            # the batches go on where the run stands: batch k is the same with or without a stop
            dataset, _ = make_dataset(patches, batch_size=batch_size, scale=scale, seed=seed, start=done)
            try:
                model.fit(dataset, epochs=math.ceil(total / steps_per_epoch), initial_epoch=done // steps_per_epoch,
                          steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
            except (tf.errors.UnavailableError, tf.errors.CancelledError) as e:
                if strategy != "multiworker":
                    raise
                raise _peer_lost(e, done if stop_at.reached is None else stop_at.reached, model_dir, chief) from None
            finally:  # a fit that raised never called on_train_end
                stopper.restore()
            if not guard.bad:
                break
            step, keys = guard.bad
            good = latest_checkpoint(model_dir)
            problem = f"non-finite {', '.join(keys)} at batch {step}"
            if attempt == nan_retries or not good:
                kept = f"last good checkpoint kept: {good}" if good else f"no checkpoint saved yet in {model_dir}"
                retried = f" (after {attempt} {'retry' if attempt == 1 else 'retries'})" if attempt else ""
                raise TrainingDiverged(f"{problem}{retried}; training stopped, {kept}")
            if stopper.received is not None:  # asked to stop: the retry is the resume's, from `good`
                raise TrainingInterrupted(stopper.request, list_checkpoints(model_dir)[-1][0], good)
            good = manager.restore_latest(model)
            done = int(model.batch_count.numpy())
            if chief:
                cb.trim_step_log(step_log, done, write_text)
            print(f"warning: {problem}; retry {attempt + 1} of {nan_retries} from {good} on the same batches",
                  file=sys.stderr)
        reached = int(model.batch_count.numpy())
        log(f"trained {reached - first} batches in {time.time() - start:.1f} s")
        if (stopper.received is not None or stopper.peer_stopped) and reached < total:
            raise TrainingInterrupted(stopper.request, reached, latest_checkpoint(model_dir))
        return model


def _describe_set(identity):
    """A patch set's identity (PatchSet.identity) in a few words."""
    sources = identity.get("sources")
    names = f" from {len(sources)} pairs ({', '.join(sources[:3])}{', ...' if len(sources) > 3 else ''})" \
        if sources else ""
    mode = f" {identity['mode']}" if identity.get("mode") else ""
    return f"{identity.get('patches')}{mode} patches of {identity.get('patch')} pixels{names}"


def _peer_lost(error, reached, model_dir, chief):
    """The PeerLost for a collective that failed because a peer went away (`error`) after this
    worker's batch `reached` (the failed step may have counted the next batch already)."""
    if chief:
        newest = latest_checkpoint(model_dir)
        kept = f"the newest checkpoint is {newest}" if newest else f"no checkpoint was saved yet in {model_dir}"
    else:
        kept = "the chief keeps the checkpoints"
    return PeerLost(f"--strategy multiworker: another worker stopped or became unreachable after batch "
                    f"{reached} ({type(error).__name__}); {kept}: start every worker again to resume")


def _train_differences(stored, cfg):
    """{field: (the run's value, cfg's)} for the training settings a resume would change. A field
    missing from an older checkpoint counts as TrainConfig's default (what that run did)."""
    if not stored:
        return {}
    try:
        stored = C.TrainConfig(**stored).to_dict()
    except TypeError:  # a field this version does not know
        pass
    now = cfg.to_dict()
    return {k: (stored.get(k), now.get(k)) for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)}


def device_name():
    """What trains here: the first GPU's name (the default strategy's device; --strategy mirrored
    uses `replicas` of them), else the CPU's."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    return cpu_name()
