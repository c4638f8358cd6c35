"""Checkpoints: one HDF5 file per save, written atomically, holding the whole training state.

  ckpt-00000200.h5
    generator/, dv/, di/   every variable of each network (trainable and BN statistics),
                           datasets 000000.. in the network's `weights` order, attrs 'path'
    counters/              batch_count, optimizer_steps (the learning-rate schedule)
    opt_g/, opt_g_adv/, opt_dv/, opt_di/   every optimizer variable (iterations, RMSProp
                           accumulators, learning rate)
    attrs: model_config, train_config, steps_per_epoch (JSON)

The file is written under a temporary name and renamed (os.replace), so a kill at any moment
leaves the previous checkpoints intact. A generator-only file (for fusing and shipping) has the
same layout with only `generator/` and `model_config`.
"""
import glob
import json
import os
import re

import h5py
import numpy as np

from ddcgan_tf import config as C
from ddcgan_tf.errors import InputError
from ddcgan_tf.images import atomic_write

PATTERN = re.compile(r"^ckpt-(\d+)\.h5$")
GENERATOR_FILE = "generator.h5"


def _write_vars(group, variables):
    for k, v in enumerate(variables):
        d = group.create_dataset(f"{k:06d}", data=np.asarray(v.numpy()))
        d.attrs["path"] = getattr(v, "path", v.name)


def _read_vars(group, variables, where):
    keys = sorted(group.keys())
    if len(keys) != len(variables):
        raise InputError(where, f"'{group.name}' holds {len(keys)} variables, the model has {len(variables)}")
    values = []
    for key, v in zip(keys, variables):
        value = group[key][()]
        if tuple(value.shape) != tuple(v.shape):
            raise InputError(where, f"variable {group[key].attrs.get('path', key)} has shape "
                                    f"{value.shape}, the model expects {tuple(v.shape)}")
        values.append(value)
    for v, value in zip(variables, values):
        v.assign(value)


def _counters(model):
    return [model.batch_count, model.optimizer_steps]


def save_state(model, path):
    """Writes the full training state of a compiled DDcGAN to `path` (atomically)."""

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for name, net in (("generator", model.generator), ("dv", model.dv), ("di", model.di)):
                _write_vars(f.create_group(name), net.weights)
            _write_vars(f.create_group("counters"), _counters(model))
            for name, opt in model.optimizers.items():
                _write_vars(f.create_group(f"opt_{name}"), opt.variables)
            f.attrs["model_config"] = json.dumps(model.get_config())
            f.attrs["train_config"] = model.train_config.to_json()
            f.attrs["steps_per_epoch"] = int(model.steps_per_epoch)

    atomic_write(path, write, suffix=".h5")


def read_configs(path):
    """(model_config, train_config dict or None) stored in a checkpoint or generator file."""
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            model_config = json.loads(f.attrs["model_config"])
            train = json.loads(f.attrs["train_config"]) if "train_config" in f.attrs else None
            return model_config, train
    except (OSError, KeyError, ValueError) as e:
        raise InputError(path, f"not a ddcgan_tf checkpoint ({type(e).__name__}: {str(e)[:80]})") from None


def load_state(model, path):
    """Restores everything `save_state` wrote into a compiled DDcGAN of the same shape."""
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            for name, net in (("generator", model.generator), ("dv", model.dv), ("di", model.di)):
                _read_vars(f[name], net.weights, path)
            _read_vars(f["counters"], _counters(model), path)
            for name, opt in model.optimizers.items():
                _read_vars(f[f"opt_{name}"], opt.variables, path)
    except (OSError, KeyError) as e:
        raise InputError(path, f"cannot restore checkpoint ({type(e).__name__}: {str(e)[:80]})") from None


def save_generator(generator, path, extra=None):
    """Writes generator weights + config (what fusing needs) to one HDF5 file, atomically."""

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            _write_vars(f.create_group("generator"), generator.weights)
            f.attrs["model_config"] = json.dumps({"scale": generator.scale,
                                                  "official_decoder": generator.official_decoder,
                                                  "bn_mode": generator.bn_mode})
            for k, v in (extra or {}).items():
                f.attrs[k] = json.dumps(v)

    atomic_write(path, write, suffix=".h5")


def resolve(path):
    """A checkpoint file for `path`: a file as is; a directory -> its latest ckpt or generator.h5."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found:
            return found
        if os.path.isfile(os.path.join(path, GENERATOR_FILE)):
            return os.path.join(path, GENERATOR_FILE)
        raise InputError(path, f"no checkpoint (ckpt-*.h5 or {GENERATOR_FILE}) in directory")
    raise InputError(path, "checkpoint not found")


def load_generator(path, bn_mode=None):
    """Generator with the weights of a checkpoint or generator file (or a directory holding one)."""
    from ddcgan_tf.generator import Generator

    path = resolve(path)
    model_config, _ = read_configs(path)
    gen = Generator(scale=model_config.get("scale", C.SCALE),
                    official_decoder=model_config.get("official_decoder", True),
                    bn_mode=bn_mode or model_config.get("bn_mode", "batch"))
    gen.build()
    try:
        with h5py.File(path, "r") as f:
            _read_vars(f["generator"], gen.weights, path)
    except KeyError:
        raise InputError(path, "holds no generator weights") from None
    return gen


def list_checkpoints(model_dir):
    """[(step, path)] of the complete checkpoints in model_dir, oldest first."""
    out = []
    for p in glob.glob(os.path.join(glob.escape(os.fspath(model_dir)), "ckpt-*.h5")):
        m = PATTERN.match(os.path.basename(p))
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(model_dir):
    found = list_checkpoints(model_dir)
    return found[-1][1] if found else None


class CheckpointManager:
    """Saves ckpt-<batch>.h5 into model_dir, keeping the newest `keep` of them."""

    def __init__(self, model_dir, keep=3):
        self.model_dir, self.keep = os.fspath(model_dir), keep
        os.makedirs(self.model_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(self.model_dir), ".tmp-*")):
            os.remove(stale)  # left by a process killed mid-write

    def save(self, model):
        step = int(model.batch_count.numpy())
        path = os.path.join(self.model_dir, f"ckpt-{step:08d}.h5")
        save_state(model, path)
        for _, old in list_checkpoints(self.model_dir)[:-self.keep]:
            os.remove(old)
        return path

    def restore_latest(self, model):
        """Loads the newest checkpoint into model; returns its path or None."""
        path = latest_checkpoint(self.model_dir)
        if path:
            load_state(model, path)
        return path
