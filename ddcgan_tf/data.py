"""HDF5 patch sets -> tf.data.

Reads two layouts: ours (`vis`, `ir`, see `ddcgan_tf.patches`) and the official
`Training_Dataset.h5` (`data`: N x 84 x 84 x 2, channel 0 visible, channel 1 infrared at full
resolution, values in [0, 1]); for the latter the infrared patches are downsampled on the fly
exactly as the official `train.py` does (scipy zoom 1/4 per patch, not clipped: the spline's
overshoot is kept, as `ddcgan-prepare --noclip_ir` keeps it in our layout).

The set is read into memory once, by the thread that builds the dataset (the official
`train.py` loads the whole file too; TNO's 29,833 `held_out_8` training patches, Movie_14 out
too, take 251 MiB, visible patches kept in their 8-bit storage type). tf.data's threads then
only slice numpy arrays: an HDF5 read there needs h5py's global lock, and a thread that drops
an iterator waits for its in-flight reads and its finalizer. When that thread held the lock
(an old iterator garbage-collected during a checkpoint write), training deadlocked (CI,
2026-11; tests/test_patches.py).

The order of the batches is the official one, and a function of the run's data seed alone:
every epoch is one permutation of the whole set taken in consecutive batches, the last
incomplete batch dropped (official `train.py`: `np.random.shuffle(source_imgs)` at each epoch,
then `source_imgs[batch * BATCH_SIZE:...]`). Epoch e's permutation is drawn from (seed, e), so
batch k of a run is the same whether or not the run stopped and resumed before it
(`batch_stream`, `make_dataset(start=k)`), and the JAX trainer (benchmarks/jax_train.py) feeds
the same batches. TensorFlow is imported only by make_dataset, so that trainer can use this
module without it.
"""
import itertools
import json
import os

import h5py
import numpy as np

from ddcgan_tf import config as C
from ddcgan_tf.errors import InputError
from ddcgan_tf.patches import downsample_ir


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:100] if text else type(e).__name__


def _text_attr(f, name):
    value = f.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def _source_names(f):
    """The stems of the pairs a ddcgan-prepare set was cut from (None for other sets)."""
    try:
        return [s["name"] for s in json.loads(_text_attr(f, "sources"))]
    except (TypeError, ValueError, KeyError):
        return None


class PatchSet:
    """Random access to the patches of one HDF5 file, validated on open. `identity`: what the
    set is (layout, patch count and size, and for a ddcgan-prepare set its mode and source
    pairs), recorded by a run so that a resume on another set is refused."""

    def __init__(self, path, scale=C.SCALE):
        self.path = os.fspath(path)
        self._arrays = None  # load()
        if not os.path.exists(self.path):
            raise InputError(self.path, "patch set not found")
        if not os.path.isfile(self.path):
            raise InputError(self.path, "is not a file (expected an HDF5 patch set)")
        try:
            with h5py.File(self.path, "r") as f:
                self._inspect(f, scale)
        except InputError:
            raise
        except OSError as e:
            raise InputError(self.path, f"not a readable HDF5 file ({_first_line(e)})") from None
        except (KeyError, ValueError, TypeError, RuntimeError) as e:  # h5py on damaged files
            raise InputError(self.path, f"damaged HDF5 file ({type(e).__name__}: {_first_line(e)})") from None

    def _dataset(self, f, name, shape_text):
        d = f[name]
        if not isinstance(d, h5py.Dataset):
            raise InputError(self.path, f"'{name}' must be a dataset ({shape_text}), found a group")
        if d.dtype.kind not in "biuf":
            raise InputError(self.path, f"dataset '{name}' has unsupported type {d.dtype}")
        return d

    def _max_value(self, d):
        if "max_value" not in d.attrs and d.dtype.kind in "biu":  # 1.0 would read uint8 as 0..255
            raise InputError(self.path, f"dataset '{d.name}' holds integers ({d.dtype}) but has no max_value "
                                        "attribute, so its [0, 1] scale is unknown (ddcgan-prepare writes it)")
        value = d.attrs.get("max_value", 1.0)
        try:
            value = float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            raise InputError(self.path, f"dataset '{d.name}': attribute max_value {value!r} is not a number") from None
        if not np.isfinite(value) or value <= 0:
            raise InputError(self.path, f"dataset '{d.name}': attribute max_value must be a positive number, "
                                        f"got {value}")
        return value

    def _inspect(self, f, scale):
        if "vis" in f and "ir" in f:
            self.layout = "ddcgan_tf"
            v = self._dataset(f, "vis", "N x P x P x 1")
            i = self._dataset(f, "ir", "N x P/s x P/s x 1")
            try:
                file_scale = int(np.asarray(f.attrs.get("scale", scale)).reshape(()))
            except (TypeError, ValueError):
                raise InputError(self.path, f"attribute scale {f.attrs.get('scale')!r} is not an integer") from None
            if v.ndim != 4 or v.shape[-1] != 1 or v.shape[1] != v.shape[2]:
                raise InputError(self.path, f"dataset 'vis' must be N x P x P x 1, got {v.shape}")
            if i.ndim != 4 or i.shape[-1] != 1:
                raise InputError(self.path, f"dataset 'ir' must be N x P/s x P/s x 1, got {i.shape}")
            if len(v) != len(i):
                raise InputError(self.path, f"'vis' has {len(v)} patches but 'ir' has {len(i)}")
            if file_scale != scale or v.shape[1] != i.shape[1] * scale or i.shape[1] != i.shape[2]:
                raise InputError(self.path, f"patch sizes {v.shape[1]} / {i.shape[1]} do not match "
                                            f"scale {scale} (the set was built with scale {file_scale})")
            self.vis_max, self.ir_max = self._max_value(v), self._max_value(i)
            self.size, self.patch = len(v), v.shape[1]
            self.identity = {"layout": self.layout, "patches": self.size, "patch": self.patch,
                             "mode": _text_attr(f, "mode"), "sources": _source_names(f)}
        elif "data" in f:
            self.layout = "official"
            d = self._dataset(f, "data", "N x P x P x 2")
            if d.ndim != 4 or (d.shape[-1] != 2 and d.shape[0] != 2):
                raise InputError(self.path, f"dataset 'data' must be N x P x P x 2, got {d.shape}")
            self.transposed = d.shape[-1] != 2  # MATLAB writes it as 2 x P x P x N
            shape = d.shape[::-1] if self.transposed else d.shape
            if shape[1] != shape[2] or shape[1] % scale:
                raise InputError(self.path, f"official patches must be square multiples of {scale}, got {shape}")
            self.size, self.patch = shape[0], shape[1]
            self.vis_max = self.ir_max = 1.0
            self.identity = {"layout": self.layout, "patches": self.size, "patch": self.patch}
        else:
            raise InputError(self.path, f"unknown layout: expected datasets 'vis' and 'ir' "
                                        f"(or the official 'data'), found {sorted(f.keys())}")
        if self.size == 0:
            raise InputError(self.path, "patch set is empty")
        if self.patch < scale:
            raise InputError(self.path, f"patches of {self.patch} pixels are smaller than the scale {scale}")
        self.scale = scale
        self.ir_patch = self.patch // scale

    def __len__(self):
        return self.size

    def load(self):
        """The whole set as numpy arrays in the file's types ({"vis", "ir"} or {"data"}), read
        once and kept: the `source` of read() that needs no HDF5 call."""
        if self._arrays is None:
            keys = ("vis", "ir") if self.layout == "ddcgan_tf" else ("data",)
            try:
                with h5py.File(self.path, "r") as f:
                    arrays = {k: f[k][()] for k in keys}
            except OSError as e:
                raise InputError(self.path, f"cannot read the patches ({_first_line(e)})") from None
            for k, a in arrays.items():  # a NaN would end training as a "divergence" at its batch
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    bad = np.argwhere(~np.isfinite(a))[0]
                    patch = bad[-1] if self.layout == "official" and self.transposed else bad[0]
                    raise InputError(self.path, f"dataset '{k}' holds NaN or Inf (patch {patch}); rebuild the "
                                                "set with ddcgan-prepare")
            self._arrays = arrays
        return self._arrays

    def read(self, source, index):
        """Patches `index` (a slice, or an array of indices when `source` is load()'s arrays) of
        `source` (an open h5py.File, or load()'s arrays) as float32 (vis (n, P, P, 1),
        ir (n, P/s, P/s, 1)) in [0, 1] (the official layout's infrared: the unclipped spline)."""
        if self.layout == "ddcgan_tf":
            vis = source["vis"][index].astype(np.float32) / self.vis_max
            ir = source["ir"][index].astype(np.float32) / self.ir_max
            return vis, ir
        d = source["data"]
        block = d[..., index].T if self.transposed else d[index]
        block = np.asarray(block, np.float32)
        vis = block[..., 0:1]
        ir = np.stack([downsample_ir(p, self.scale, clip=False) for p in block[..., 1]])[..., None]
        return vis, ir

    def take(self, index):
        """Patches `index` from memory (load()), as read() gives them."""
        return self.read(self.load(), index)


def batches_per_epoch(patches, batch_size):
    """Whole batches of `batch_size` in the PatchSet `patches` (the rest is dropped each epoch)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError("--batch_size", f"must be a positive integer, got {batch_size!r}")
    if batch_size > len(patches):
        raise InputError(patches.path, f"holds {len(patches)} patches, fewer than one batch of {batch_size}")
    return len(patches) // int(batch_size)


def check_seed(seed):
    """A data seed: a non-negative integer (numpy's SeedSequence and Keras take those)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise InputError("--seed", f"must be an integer in [0, 2^32), got {seed!r}")
    return int(seed)


def new_seed():
    """A fresh data seed, for a run started without one (recorded, so the run can resume)."""
    return int(np.random.SeedSequence().entropy % 2 ** 31)


def epoch_order(size, seed, epoch):
    """The order of the `size` patches in epoch `epoch` (0-based) of a run with data seed `seed`:
    one permutation drawn from (seed, epoch) alone (module doc)."""
    return np.random.default_rng([check_seed(seed), int(epoch)]).permutation(size)


def batch_stream(size, batch_size, seed, start=0, shuffle=True):
    """Yields the patch indices of the run's batches start, start + 1, ... (0-based, counted over
    the whole run) for ever: batch b is batch b % (size // batch_size) of epoch
    b // (size // batch_size), taken in `epoch_order` (in stored order with shuffle=False)."""
    per_epoch = size // batch_size
    if per_epoch < 1:
        raise ValueError(f"{size} patches make no batch of {batch_size}")
    epoch, order = None, None
    for b in itertools.count(int(start)):
        e, k = divmod(b, per_epoch)
        if e != epoch:
            epoch, order = e, epoch_order(size, seed, e) if shuffle else np.arange(size)
        yield order[k * batch_size:(k + 1) * batch_size]


def make_dataset(path, batch_size=C.BATCH_SIZE, scale=C.SCALE, shuffle=True, seed=None, start=0,
                 repeat=True):
    """tf.data of (vis, ir) batches from an HDF5 patch set (a path or a PatchSet), read into
    memory here (module doc).

    The batches are `batch_stream(len, batch_size, seed, start)`: the official per-epoch
    shuffle, each batch a function of (seed, its number); every iterator begins with batch
    `start` (a resumed run passes the batches it has done). seed None draws one (not
    reproducible). repeat=False stops at the end of `start`'s epoch. Returns (dataset, patch_set).
    """
    import tensorflow as tf

    start = int(start)
    patches = path if isinstance(path, PatchSet) else PatchSet(path, scale)
    per_epoch = batches_per_epoch(patches, batch_size)
    seed = new_seed() if seed is None else check_seed(seed)
    p, q = patches.patch, patches.ir_patch
    patches.load()
    end = None if repeat else (start // per_epoch + 1) * per_epoch

    def generate():
        for b, index in enumerate(batch_stream(len(patches), batch_size, seed, start, shuffle), start):
            if end is not None and b >= end:
                return
            yield patches.take(index)

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(tf.TensorSpec((batch_size, p, p, 1), tf.float32),
                                    tf.TensorSpec((batch_size, q, q, 1), tf.float32)))
    # unbatch + batch: the batch op that tf.distribute's rebatching splits over replicas
    ds = ds.unbatch().batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds, patches
