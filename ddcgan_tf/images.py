"""Reading and writing images: grey float32 in [0, 1], strict checks, atomic writes.

Conversions (documented in README): 8-bit and 16-bit integer images are divided by 255 and
65535; RGB(A) is reduced to its luminance with ITU-R BT.601 weights (0.299, 0.587, 0.114);
float images (e.g. TIFF) must already lie in [0, 1] and hold no NaN/Inf.
"""
import os
import tempfile

import imageio.v3 as iio
import numpy as np

from ddcgan_tf.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_unit_float(array, where="image"):
    """Integer or float array -> float32 in [0, 1] (no channel handling)."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and a.min() < 0:
            raise InputError(where, f"negative pixel values in a {a.dtype} image")
        return (a / float(np.iinfo(a.dtype).max)).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise InputError(where, "image contains NaN or Inf values")
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            raise InputError(where, f"float image values must lie in [0, 1], got [{a.min():.4g}, {a.max():.4g}]")
        return a.astype(np.float32)
    raise InputError(where, f"unsupported pixel type {a.dtype}")


def read_raw(path):
    """Reads an image file as stored (H x W or H x W x C); InputError on any failure."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, expected an image file")
    try:
        a = iio.imread(path)
    except Exception as e:  # imageio raises many types for corrupt/unknown files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(path, f"cannot read image ({msg[:120]})") from None
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1,) and a.shape[-1] not in (1, 3, 4):
        a = a[0]  # single-page multi-page container
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4)):
        raise InputError(path, f"unsupported image layout {a.shape}")
    if a.size == 0:
        raise InputError(path, "image is empty")
    return a


def read_grey(path):
    """Image file -> H x W float32 in [0, 1] (RGB -> luminance, alpha dropped)."""
    a = read_raw(path)
    f = to_unit_float(a, path)
    if f.ndim == 3:
        if f.shape[-1] in (1, 2):
            f = f[..., 0]
        else:
            f = (f[..., :3] @ LUMA_WEIGHTS).astype(np.float32)
    return f


def read_rgb(path):
    """Image file -> H x W x 3 float32 in [0, 1]; grey images are repeated to 3 channels."""
    f = to_unit_float(read_raw(path), path)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=-1)
    elif f.shape[-1] in (1, 2):
        f = np.repeat(f[..., :1], 3, axis=-1)
    return f[..., :3]


def is_colour(path):
    """True when the file holds 3+ channels that are not all equal."""
    a = read_raw(path)
    if a.ndim == 2 or a.shape[-1] < 3:
        return False
    return not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))


def to_uint8(image, stretch=False):
    """float image in [0, 1] -> uint8; stretch=True reproduces the official min-max scaling."""
    x = np.asarray(image, dtype=np.float64)
    if stretch:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def atomic_write(path, write_fn, suffix=""):
    """Calls write_fn(tmp_path) then renames tmp_path to path, so no partial file is left."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(directory, "output directory does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(directory, "output directory is not writable")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix or os.path.splitext(path)[1])
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise InputError(path, f"cannot write ({e.strerror or e})") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_image(path, image, stretch=False):
    """Writes a [0, 1] float grey (H x W) or RGB (H x W x 3) image as 8-bit, atomically."""
    data = to_uint8(image, stretch=stretch)
    ext = os.path.splitext(os.fspath(path))[1].lower() or ".png"
    atomic_write(path, lambda tmp: iio.imwrite(tmp, data, extension=ext), suffix=ext)


def list_images(directory):
    """Sorted image files in a directory, keyed by file stem; InputError if none."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise InputError(directory, "directory not found")
    out = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            out.setdefault(stem, os.path.join(directory, name))
    if not out:
        raise InputError(directory, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in directory")
    return out


def pair_by_name(dir_a, dir_b, label_a="vis", label_b="ir"):
    """Pairs files of two directories by stem -> list of (stem, path_a, path_b).

    Files without a partner raise InputError naming the first one.
    """
    a, b = list_images(dir_a), list_images(dir_b)
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a:
        raise InputError(a[only_a[0]], f"no {label_b} partner named '{only_a[0]}.*' in {dir_b}")
    if only_b:
        raise InputError(b[only_b[0]], f"no {label_a} partner named '{only_b[0]}.*' in {dir_a}")
    return [(k, a[k], b[k]) for k in sorted(a)]
