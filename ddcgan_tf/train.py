"""Training entry point as a library function (the `ddcgan-train` CLI is a thin wrapper)."""
import json
import math
import os
import time

import keras

from ddcgan_tf import callbacks as cb
from ddcgan_tf import config as C
from ddcgan_tf.checkpoint import CheckpointManager, latest_checkpoint, read_configs
from ddcgan_tf.data import make_dataset
from ddcgan_tf.ddcgan import DDcGAN
from ddcgan_tf.errors import InputError
from ddcgan_tf.images import atomic_write


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


def build_model(scale=C.SCALE, patch_size=C.PATCH_SIZE, official_decoder=True, bn_mode="batch",
                train_config=None, steps_per_epoch=1000, jit_compile=False):
    model = DDcGAN(scale=scale, patch_size=patch_size, official_decoder=official_decoder, bn_mode=bn_mode)
    model.compile(train_config=train_config or C.get_preset("official", scale),
                  steps_per_epoch=steps_per_epoch, jit_compile=jit_compile)
    return model


def train(data, model_dir, steps=None, epochs=1, batch_size=C.BATCH_SIZE, preset="official",
          overrides=None, scale=C.SCALE, official_decoder=True, bn_mode="batch",
          checkpoint_every=100, keep=3, jit_compile=False, seed=None, tensorboard=True,
          verbose=1, sample_every=100):
    """Trains (or resumes) a DDcGAN on an HDF5 patch set; returns the model.

    A model_dir that already holds checkpoints is resumed: the newest checkpoint restores the
    weights, optimizer slots and schedule counters, and its stored configuration is used (a
    different --preset or model option is an error, so two runs never mix silently).
    Training stops after `steps` batches in all (across resumes), or after `epochs` passes.
    """
    os.makedirs(model_dir, exist_ok=True)
    if not os.access(model_dir, os.W_OK):
        raise InputError(model_dir, "model directory is not writable")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    dataset, patches = make_dataset(data, batch_size=batch_size, scale=scale, seed=seed)
    steps_per_epoch = len(patches) // batch_size
    manager = CheckpointManager(model_dir, keep=keep)
    cfg = C.get_preset(preset, scale, **(overrides or {}))
    model_options = dict(scale=scale, patch_size=patches.patch, official_decoder=official_decoder,
                         bn_mode=bn_mode)
    latest = latest_checkpoint(model_dir)
    if latest:
        stored_model, stored_train = read_configs(latest)
        mismatch = {k: (stored_model.get(k), v) for k, v in model_options.items()
                    if stored_model.get(k) != v}
        if mismatch or (stored_train and stored_train != cfg.to_dict()):
            raise InputError(model_dir, f"holds a run with other settings "
                                        f"({mismatch or 'training preset/overrides differ'}); "
                                        f"use a new --model_dir")
    model = build_model(train_config=cfg, steps_per_epoch=steps_per_epoch, jit_compile=jit_compile,
                        **model_options)
    restored = manager.restore_latest(model)
    done = int(model.batch_count.numpy())
    total = int(steps) if steps else epochs * steps_per_epoch
    if verbose:
        print(f"{'resumed from ' + restored if restored else 'new run'}: {done} of {total} batches done; "
              f"{len(patches)} patches, {steps_per_epoch} batches per epoch")
    _write_json(os.path.join(model_dir, "config.json"),
                {"model": model.get_config(), "train": cfg.to_dict(), "data": os.path.abspath(data),
                 "batch_size": batch_size, "patches": len(patches), "steps_per_epoch": steps_per_epoch})
    if done >= total:
        return model
    guard = cb.NaNGuard()
    callbacks = [cb.StopAtStep(total), guard, cb.Checkpoint(manager, checkpoint_every),
                 cb.StepLog(os.path.join(model_dir, "steps.jsonl"))]
    if tensorboard:
        vis, ir = next(iter(dataset.take(1)))
        callbacks.append(cb.SampleImages(os.path.join(model_dir, "logs"), vis[:3], ir[:3], sample_every))
    start = time.time()
    model.fit(dataset, epochs=math.ceil(total / steps_per_epoch), initial_epoch=done // steps_per_epoch,
              steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
    if guard.bad:
        step, keys = guard.bad
        raise TrainingDiverged(f"non-finite {', '.join(keys)} at batch {step}; training stopped, "
                               f"last good checkpoint kept in {model_dir}")
    if verbose:
        print(f"trained {int(model.batch_count.numpy()) - done} batches in {time.time() - start:.1f} s")
    return model


def _write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)

    atomic_write(path, write, suffix=".json")
