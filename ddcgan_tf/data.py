"""HDF5 patch sets -> tf.data.

Reads two layouts: ours (`vis`, `ir`, see `ddcgan_tf.patches`) and the official
`Training_Dataset.h5` (`data`: N x 84 x 84 x 2, channel 0 visible, channel 1 infrared at full
resolution, values in [0, 1]); for the latter the infrared patches are downsampled on the fly
exactly as the official `train.py` does (scipy zoom 1/4 per patch).

The set is read into memory once, by the thread that builds the dataset (the official
`train.py` loads the whole file too; TNO's 39,754 patches take 335 MiB, visible patches kept
in their 8-bit storage type). tf.data's threads then only slice numpy arrays: an HDF5 read
there needs h5py's global lock, and a thread that drops an iterator waits for its in-flight
reads and its finalizer. When that thread held the lock (an old iterator garbage-collected
during a checkpoint write), training deadlocked (CI, 2026-11; tests/test_patches.py).
"""
import os

import h5py
import numpy as np
import tensorflow as tf

from ddcgan_tf import config as C
from ddcgan_tf.errors import InputError
from ddcgan_tf.patches import downsample_ir


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:100] if text else type(e).__name__


class PatchSet:
    """Random access to the patches of one HDF5 file, validated on open."""

    def __init__(self, path, scale=C.SCALE):
        self.path = os.fspath(path)
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
        """The whole set as numpy arrays in the file's types ({"vis", "ir"} or {"data"}): the
        `source` of read() and blocks() that needs no HDF5 call."""
        keys = ("vis", "ir") if self.layout == "ddcgan_tf" else ("data",)
        try:
            with h5py.File(self.path, "r") as f:
                return {k: f[k][()] for k in keys}
        except OSError as e:
            raise InputError(self.path, f"cannot read the patches ({_first_line(e)})") from None

    def read(self, source, start, stop):
        """Patches [start, stop) of `source` (an open h5py.File, or load()'s arrays) as float32
        (vis (n, P, P, 1), ir (n, P/s, P/s, 1)) in [0, 1]."""
        if self.layout == "ddcgan_tf":
            vis = source["vis"][start:stop].astype(np.float32) / self.vis_max
            ir = source["ir"][start:stop].astype(np.float32) / self.ir_max
            return vis, ir
        d = source["data"]
        block = d[..., start:stop].T if self.transposed else d[start:stop]
        block = np.asarray(block, np.float32)
        vis = block[..., 0:1]
        ir = np.stack([downsample_ir(p, self.scale) for p in block[..., 1]])[..., None]
        return vis, ir

    def blocks(self, source, block_size, rng=None):
        """Yields (vis, ir) blocks of contiguous patches of `source`, in random block order if
        rng is given."""
        starts = np.arange(0, self.size, block_size)
        if rng is not None:
            rng.shuffle(starts)
        for s in starts:
            vis, ir = self.read(source, int(s), int(min(s + block_size, self.size)))
            if rng is not None:
                order = rng.permutation(len(vis))
                vis, ir = vis[order], ir[order]
            yield vis, ir


def make_dataset(path, batch_size=C.BATCH_SIZE, scale=C.SCALE, shuffle=True, seed=None,
                 block_size=256, shuffle_buffer=4096, repeat=True):
    """tf.data of (vis, ir) batches from an HDF5 patch set, read into memory here (module doc).

    Shuffling: random order of contiguous 256-patch blocks, a permutation inside each block, then
    a `shuffle_buffer`-patch shuffle buffer across blocks. Incomplete last batches are dropped
    (as the official code trims the set). Returns (dataset, patch_set).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError("--batch_size", f"must be a positive integer, got {batch_size!r}")
    patches = PatchSet(path, scale)
    if batch_size > len(patches):
        raise InputError(path, f"holds {len(patches)} patches, fewer than one batch of {batch_size}")
    p, q = patches.patch, patches.ir_patch
    arrays = patches.load()
    epoch = [0]

    def generate():
        rng = np.random.default_rng(None if seed is None else seed + epoch[0]) if shuffle else None
        epoch[0] += 1
        yield from patches.blocks(arrays, block_size, rng)

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(tf.TensorSpec((None, p, p, 1), tf.float32),
                                    tf.TensorSpec((None, q, q, 1), tf.float32)))
    ds = ds.unbatch()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds, patches
