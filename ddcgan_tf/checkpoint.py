"""Checkpoints: one HDF5 file per save, written atomically, holding the whole training state.

  ckpt-00000200.h5
    generator/, dv/, di/   every variable of each network (trainable and BN statistics),
                           datasets 000000.. in the network's `weights` order, attrs 'path'
    counters/              batch_count, optimizer_steps (the learning-rate schedule)
    opt_g/, opt_g_adv/, opt_dv/, opt_di/   every optimizer variable (iterations, RMSProp
                           accumulators, learning rate)
    attrs: model_config, train_config, steps_per_epoch (JSON)

The file is written under a temporary name, flushed to disk and renamed (os.replace), so a
kill at any moment leaves the previous checkpoints intact; a write that fails (disk full,
read-only directory) raises `ddcgan_tf.images.WriteError` and removes the temporary file.
Restoring skips a damaged newest checkpoint (one copied in half, say) for the next older one.
A generator-only file (for fusing and shipping) has the same layout with only `generator/` and
`model_config`.
"""
import contextlib
import errno
import fcntl
import glob
import io
import json
import os
import re

import h5py
import numpy as np

from ddcgan_tf import config as C
from ddcgan_tf import official
from ddcgan_tf.errors import InputError, describe
from ddcgan_tf.images import WriteError, check_output_dir, os_problem, write_bytes

# What h5py raises for damaged files besides OSError (never InputError: callers re-raise that)
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)

PATTERN = re.compile(r"^ckpt-(\d+)\.h5$")
GENERATOR_FILE = "generator.h5"
STATE_FILE = "train_state.h5"  # the full state beside a shipped generator (checkpoints/<mode>/)
# generator options a file may omit (files written before they were recorded)
_GENERATOR_DEFAULTS = {"scale": C.SCALE, "official_decoder": True, "bn_mode": "batch", "stretch": False}


def _generator_option(model_config, key):
    return model_config.get(key, _GENERATOR_DEFAULTS[key])


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


def _state_groups(model):
    """[(HDF5 group, variables)] of the full training state of a compiled DDcGAN: the three
    networks, the counters and each optimizer's slots (`save_state`'s layout)."""
    groups = [("generator", model.generator.weights), ("dv", model.dv.weights), ("di", model.di.weights),
              ("counters", [model.batch_count, model.optimizer_steps])]
    return groups + [(f"opt_{name}", opt.variables) for name, opt in model.optimizers.items()]


def state_variables(model):
    """Every variable of the full training state, in `save_state`'s order."""
    return [v for _, variables in _state_groups(model) for v in variables]


def write_h5(path, fill):
    """Writes an HDF5 file atomically: `fill(f)` fills an h5py.File built in memory, whose bytes
    then go to disk by plain writes. A full disk is then an OSError, so one line (WriteError)
    with the previous file intact; HDF5 writing to the disk itself failed in its close and in
    the garbage collector (h5py RuntimeErrors, then a segmentation fault)."""
    buffer = io.BytesIO()
    try:
        with h5py.File(buffer, "w") as f:
            fill(f)
    except OSError as e:  # nothing was written to the disk yet
        raise WriteError(path, f"cannot write ({os_problem(e)})") from None

    write_bytes(path, buffer.getbuffer(), suffix=".h5")


def save_state(model, path):
    """Writes the full training state of a compiled DDcGAN to `path` (atomically)."""

    def fill(f):
        for name, variables in _state_groups(model):
            _write_vars(f.create_group(name), variables)
        f.attrs["model_config"] = json.dumps(model.get_config())
        f.attrs["train_config"] = model.train_config.to_json()
        f.attrs["steps_per_epoch"] = int(model.steps_per_epoch)

    write_h5(path, fill)


def read_steps_per_epoch(path):
    """The batches per epoch a checkpoint's run had (its learning-rate decay period), or None
    when the file does not record it."""
    try:
        with h5py.File(os.fspath(path), "r") as f:
            value = f.attrs.get("steps_per_epoch")
    except _H5_ERRORS:
        return None
    return None if value is None else int(value)


def read_configs(path):
    """(model_config, train_config dict or None) stored in a checkpoint or generator file."""
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            model_config = json.loads(f.attrs["model_config"])
            train = json.loads(f.attrs["train_config"]) if "train_config" in f.attrs else None
    except InputError:
        raise
    except _H5_ERRORS as e:
        raise InputError(path, f"not a ddcgan_tf checkpoint ({describe(e)})") from None
    if not isinstance(model_config, dict) or not (train is None or isinstance(train, dict)):
        raise InputError(path, "not a ddcgan_tf checkpoint (model_config/train_config are not JSON objects)")
    return model_config, train


def load_state(model, path):
    """Restores everything `save_state` wrote into a compiled DDcGAN of the same shape."""
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            for name, variables in _state_groups(model):
                _read_vars(f[name], variables, path)
    except InputError:
        raise
    except _H5_ERRORS as e:
        raise InputError(path, f"cannot restore checkpoint ({describe(e)})") from None


def warm_start_file(path):
    """The file a warm start reads for `path`: a file as is; a run directory -> its newest
    checkpoint; a shipped directory -> its train_state.h5 (which has Dv and Di) rather than
    generator.h5; an official TF1 checkpoint (or its directory) -> its prefix."""
    path = os.fspath(path)
    tf1 = official.find(path)
    if tf1:
        return tf1
    state = os.path.join(path, STATE_FILE)
    if os.path.isdir(path) and not latest_checkpoint(path) and os.path.isfile(state):
        return state
    return resolve(path)


def load_networks(model, path):
    """Warm start: copies the network weights of a checkpoint or generator file (or a directory
    holding one, see warm_start_file) into a compiled DDcGAN; -> the names loaded ("generator",
    then "dv", "di" when the file holds them). Optimizer slots and schedule counters are left
    as they are (fresh). From a shipped directory the generator is its generator.h5 (the shipped
    weights, which may be an earlier checkpoint of the run than train_state.h5: ddcgan_tf.shipped)
    and Dv, Di are train_state.h5's.

    The file's scale and decoder option must be the model's (the decoder option changes what
    the same variables compute, not their shapes, so it is checked explicitly).
    """
    path = warm_start_file(path)
    if official.find(path):
        return official.load_networks(model, path)
    model_config, _ = read_configs(path)
    for key in ("scale", "official_decoder"):
        stored, wanted = _generator_option(model_config, key), getattr(model.generator, key)
        if stored != wanted:
            raise InputError(path, f"was trained with {key}={stored}, this run has {key}={wanted}")
    discriminators = (("dv", model.dv), ("di", model.di))
    shipped_generator = os.path.join(os.path.dirname(path), GENERATOR_FILE)
    if os.path.basename(path) == STATE_FILE and os.path.isfile(shipped_generator):
        return (_read_networks(shipped_generator, (("generator", model.generator),), "generator weights")
                + _read_networks(path, discriminators, "network weights"))
    return _read_networks(path, (("generator", model.generator),) + discriminators, "network weights")


def _read_networks(path, nets, what):
    """Reads the (name, network) groups the file holds (the generator must be one) -> names read."""
    loaded = []
    try:
        with h5py.File(path, "r") as f:
            if "generator" not in f:
                raise InputError(path, "holds no generator weights")
            for name, net in nets:
                if name in f:
                    _read_vars(f[name], net.weights, path)
                    loaded.append(name)
    except InputError:
        raise
    except _H5_ERRORS as e:
        raise InputError(path, f"cannot read {what} ({describe(e)})") from None
    return loaded


def save_generator(generator, path, extra=None):
    """Writes generator weights + config (what fusing needs) to one HDF5 file, atomically."""

    def fill(f):
        _write_vars(f.create_group("generator"), generator.weights)
        f.attrs["model_config"] = json.dumps({"scale": generator.scale,
                                              "official_decoder": generator.official_decoder,
                                              "bn_mode": generator.bn_mode,
                                              "stretch": bool(generator.stretch)})
        for k, v in (extra or {}).items():
            f.attrs[k] = json.dumps(v)

    write_h5(path, fill)


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


def load_generator(path, bn_mode=None, stretch=None):
    """Generator with the weights of a checkpoint or generator file (or a directory holding one),
    or of a checkpoint of the official TF1 code (ddcgan_tf.official). bn_mode and stretch
    (Generator's options) override what the file records (default: batch, no stretch)."""
    from ddcgan_tf.generator import Generator

    if official.find(path):
        return official.load_generator(path, bn_mode=bn_mode, stretch=stretch)
    path = resolve(path)
    model_config, _ = read_configs(path)
    try:
        gen = Generator(scale=_generator_option(model_config, "scale"),
                        official_decoder=_generator_option(model_config, "official_decoder"),
                        bn_mode=bn_mode or _generator_option(model_config, "bn_mode"),
                        stretch=_generator_option(model_config, "stretch") if stretch is None else stretch)
    except ValueError as e:  # a stored scale / bn_mode this code does not know
        raise InputError(path, f"unsupported model configuration ({e})") from None
    gen.build()
    _read_networks(path, (("generator", gen),), "generator weights")
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


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(model_dir):
    """Holds model_dir/.lock (an exclusive, non-blocking flock) while a trainer writes the run:
    two trainers on one run directory would interleave their step logs, prune each other's
    checkpoints and delete each other's half-written files. InputError naming the holder's
    process when another trainer has it; the lock goes with the process, however it ends."""
    path = os.path.join(os.fspath(model_dir), LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise WriteError(path, f"cannot open the run's lock file ({os_problem(e)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WriteError(path, f"cannot lock the run directory ({os_problem(e)})") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "another process"
            raise InputError(os.fspath(model_dir), f"is in use by another trainer (process {holder}); wait for "
                                                   "it to end, stop it, or use another --model_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


class CheckpointManager:
    """Saves ckpt-<batch>.h5 into model_dir, keeping the newest `keep` of them."""

    def __init__(self, model_dir, keep=3, log=print, clean=True):
        """clean: remove the temporary files a killed writer left (only the process that holds
        the run's lock, `run_lock`, may: another one's write may be in flight)."""
        self.model_dir, self.keep, self.log = os.fspath(model_dir), max(1, int(keep)), log
        check_output_dir(self.model_dir, create=True)
        for stale in glob.glob(os.path.join(glob.escape(self.model_dir), ".tmp-*")) if clean else ():
            try:
                os.remove(stale)  # left by a process killed mid-write
            except OSError:
                pass

    def save(self, model):
        """Writes ckpt-<batch>.h5 atomically, then prunes the older ones to the newest `keep`
        (WriteError on failure). Checkpoints of later batches (damaged ones that the resume
        skipped) neither count nor go: the run overwrites them when it gets there, and counting
        them could delete every checkpoint that loads."""
        step = int(model.batch_count.numpy())
        path = os.path.join(self.model_dir, f"ckpt-{step:08d}.h5")
        save_state(model, path)
        upto = [(s, p) for s, p in list_checkpoints(self.model_dir) if s <= step]
        for _, old in upto[:-self.keep]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise WriteError(old, f"cannot remove old checkpoint ({os_problem(e)})") from None
        return path

    def latest_readable(self):
        """(path, model_config, train_config) of the newest checkpoint whose configuration can be
        read, or (None, None, None). Unreadable newer ones are reported through `log` and skipped."""
        found = list_checkpoints(self.model_dir)
        for _, path in reversed(found):
            try:
                model_config, train_config = read_configs(path)
            except InputError as e:
                self.log(f"warning: skipping damaged checkpoint {e}")
                continue
            return path, model_config, train_config
        if found:
            raise InputError(found[-1][1], f"none of the {len(found)} checkpoint(s) in {self.model_dir} "
                                           "can be read; move them away to start a new run")
        return None, None, None

    def restore_latest(self, model):
        """Loads the newest loadable checkpoint into model; returns its path or None.

        A checkpoint that fails to load (damaged file) is reported through `log` and the next
        older one is tried; InputError when checkpoints exist but none loads.
        """
        found = list_checkpoints(self.model_dir)
        first_error = None
        for _, path in reversed(found):
            try:
                load_state(model, path)
                return path
            except InputError as e:
                first_error = first_error or e
                self.log(f"warning: skipping damaged checkpoint {e}")
        if first_error is not None:
            raise InputError(found[-1][1], f"none of the {len(found)} checkpoint(s) in {self.model_dir} "
                                           f"can be restored (newest: {first_error.problem})")
        return None
