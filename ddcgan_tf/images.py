"""Reading and writing images: grey float32 in [0, 1], strict checks, atomic writes.

Conversions (documented in README): 8-bit and 16-bit integer images are divided by 255 and
65535; RGB(A) is reduced to its luminance with ITU-R BT.601 weights (0.299, 0.587, 0.114);
float images (e.g. TIFF) must already lie in [0, 1] and hold no NaN/Inf; bool images are 0/1.
Integers wider than 16 bits are rejected (their scale is ambiguous). Pillow decodes 16-bit colour
PNGs (RGB, RGBA, grey+alpha) to 8 bits, so those are decoded here (`_read_png16_colour`) and
keep their depth, as 16-bit grey PNGs and 16-bit TIFFs do through imageio.

Every problem with a file raises :class:`InputError` (one line: file, problem); a file that
cannot be *written* (read-only or full disk, a path under a regular file) raises its subclass
:class:`WriteError`. Writes are atomic: a temporary file in the target directory, flushed to
disk, then renamed over the target, so a reader never sees a partial file. A temporary name
says which machine and process write it (`temp_prefix`); one left by a killed writer is
removed by the next write into its directory (`remove_stale_temps`).
"""
import contextlib
import errno
import gc
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
import warnings
import zlib

import imageio.v3 as iio
import numpy as np

from ddcgan_tf.errors import InputError, WriteError  # noqa: F401 (WriteError re-exported)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
_QUIET_LOGGERS = ("tifffile", "imageio", "PIL")


def os_problem(e):
    """One-line description of an OSError (h5py puts multi-line HDF5 traces in strerror)."""
    if getattr(e, "errno", None):
        return os.strerror(e.errno)
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


@contextlib.contextmanager
def _quiet_readers():
    """Silences the warnings and log records image readers emit for odd files (a CLI error must
    be one line; the problem is reported by the exception, or the image is fine)."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_unit_float(array, where="image"):
    """Integer or float array -> float32 in [0, 1] (no channel handling)."""
    try:
        a = np.asarray(array)
    except Exception as e:  # ragged nested sequences and the like
        raise InputError(where, f"not an image array ({type(e).__name__})") from None
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype.itemsize > 2:
            raise InputError(where, f"unsupported pixel type {a.dtype}: expected 8- or 16-bit integers "
                                    "or floats in [0, 1]")
        if a.size and a.min() < 0:
            raise InputError(where, f"negative pixel values in a {a.dtype} image")
        return (a / float(np.iinfo(a.dtype).max)).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        with np.errstate(all="ignore"):
            if not np.all(np.isfinite(a)):
                raise InputError(where, "image contains NaN or Inf values")
            if a.size and (a.min() < 0.0 or a.max() > 1.0):
                raise InputError(where, f"float image values must lie in [0, 1], "
                                        f"got [{float(a.min()):.4g}, {float(a.max()):.4g}]")
            return a.astype(np.float32)
    raise InputError(where, f"unsupported pixel type {a.dtype}")


def grey_array(array, where="image"):
    """A grey image array -> H x W float32 in [0, 1]: integers scaled by their range, floats
    checked (to_unit_float), a trailing channel of 1 dropped; InputError for any other shape."""
    a = to_unit_float(array, where)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(where, f"is an array of shape {a.shape}; expected a grey H x W image "
                                f"(ddcgan_tf.ycbcr.luminance gives that of a colour one)")
    return a


def read_raw(path):
    """Reads an image file as stored (H x W or H x W x C); InputError on any failure."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, expected an image file")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise InputError(path, f"cannot read ({os_problem(e)})") from None
    if size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        a = _read_png16_colour(path)
    except OSError as e:
        raise InputError(path, f"cannot read ({os_problem(e)})") from None
    if a is not None:
        return a
    problem = None
    with _quiet_readers():
        try:
            a = np.asarray(iio.imread(path))
            if a.ndim == 3 and a.shape[-1] == 4 and _is_cmyk(path):  # C, M, Y are not R, G, B
                a = np.asarray(iio.imread(path, plugin="pillow", mode="RGB"))
        except Exception as e:  # imageio and its plugins raise many types for corrupt/unknown files
            problem = _read_problem(e)
        if problem is not None:
            # a failed plugin may leave its file object to the garbage collector, whose
            # ResourceWarning must not escape as a second line on stderr (the young generations
            # hold it; a full collection costs ~0.2 s with TensorFlow loaded)
            gc.collect(1)
    if problem is not None:
        raise InputError(path, problem)
    multi_page = a.ndim == 4 or (a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4))
    if multi_page and a.shape[0] == 1:
        a = a[0]  # one page of a multi-page container (1 x H x W or 1 x H x W x C)
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4):
        raise InputError(path, f"unsupported image layout {a.shape} (several pages or frames? "
                               "expected one H x W grey or H x W x 3 colour image)")
    if a.ndim not in (2, 3):
        raise InputError(path, f"unsupported image layout {a.shape} (expected one H x W grey or "
                               "H x W x 3 colour image)")
    if a.size == 0:
        raise InputError(path, f"image is empty (shape {a.shape})")
    return a


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG16_CHANNELS = {2: 3, 4: 2, 6: 4}  # PNG colour type -> channels: RGB, grey+alpha, RGBA


def _read_png16_colour(path):
    """A 16-bit colour PNG (RGB, grey+alpha, RGBA) -> H x W x C uint16; None for any other file.

    Pillow, under imageio, decodes these to 8 bits (a dark one reads as black), so their IDAT
    stream is decoded here (PNG spec, ISO/IEC 15948 sections 9-10: zlib, then the five
    per-row filters, big-endian samples; Adam7 interlacing, section 8.2), every chunk's CRC
    checked. Animated ones (acTL) are left to imageio. Ancillary chunks (gamma, palette hints)
    are ignored, as imageio ignores them.
    """
    with open(path, "rb") as f:
        head = f.read(33)
        if (len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR"
                or head[24] != 16 or head[25] not in _PNG16_CHANNELS):
            return None
        data = head + f.read()
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        if len(crc) < 4:
            raise InputError(path, "not a readable image (truncated PNG data)")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise InputError(path, f"not a readable image (corrupt PNG data: the "
                                   f"{kind.decode('latin-1')} chunk fails its CRC)")
        chunks.append((kind, body))
        if kind == b"IEND":
            break
        pos += 12 + length
    kinds = {kind for kind, _ in chunks}
    if b"acTL" in kinds:
        return None  # an animated PNG: imageio reads its frames, and read_raw refuses several
    w, h, _, colour, method, filtering, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if method or filtering or interlace > 1 or not (w and h):
        raise InputError(path, f"not a readable image (corrupt PNG header: {w} x {h}, compression "
                               f"{method}, filter method {filtering}, interlace method {interlace})")
    from PIL import Image  # imageio's own dependency: its decompression-bomb limit

    if w * h > 2 * Image.MAX_IMAGE_PIXELS:
        raise InputError(path, f"image too large ({w} x {h} pixels, over {2 * Image.MAX_IMAGE_PIXELS}: "
                               f"a decompression bomb?)")
    channels = _PNG16_CHANNELS[colour]
    bpp = 2 * channels
    # each pass is a sub-image (every dy-th row from y0, every dx-th column from x0) of its own
    # filtered rows; an empty pass has no bytes at all (section 8.2)
    passes = [(x0, y0, dx, dy, -(-(w - x0) // dx), -(-(h - y0) // dy))
              for x0, y0, dx, dy in (_ADAM7 if interlace else ((0, 0, 1, 1),))]
    passes = [p for p in passes if p[4] > 0 and p[5] > 0]
    need = sum(ph * (pw * bpp + 1) for *_, pw, ph in passes)
    try:  # never more than the image needs, whatever the stream holds
        raw = zlib.decompressobj().decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"),
                                              need)
    except zlib.error as e:
        raise InputError(path, f"not a readable image (corrupt PNG data: {e})") from None
    except MemoryError:
        raise InputError(path, "cannot read image (out of memory: is it huge or corrupt?)") from None
    if len(raw) < need:
        raise InputError(path, "not a readable image (truncated PNG data)")
    out, start = np.empty((h, w, channels), np.uint16), 0
    for k, (x0, y0, dx, dy, pw, ph) in enumerate(passes):
        rows = _unfilter_rows(path, raw[start:start + ph * (pw * bpp + 1)], pw * bpp, bpp,
                              f" of interlace pass {k + 1}" if interlace else "")
        out[y0::dy, x0::dx] = np.frombuffer(rows, ">u2").reshape(ph, pw, channels)
        start += ph * (pw * bpp + 1)
    return out


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
"""PNG's Adam7 passes (section 8.2): first column, first row, column step, row step."""


def _unfilter_rows(path, raw, stride, bpp, where=""):
    """The rows of one (sub-)image, each a filter-type byte and `stride` filtered bytes, -> their
    raw bytes (section 9); the row above the first is zeros."""
    out, prev = bytearray(), bytearray(stride)
    for y in range(len(raw) // (stride + 1)):
        start = y * (stride + 1)
        kind, cur = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:  # Sub: + the byte bpp to the left (a running sum per byte of a pixel)
            cur = bytearray((np.cumsum(np.frombuffer(cur, np.uint8).reshape(-1, bpp), axis=0, dtype=np.uint8)
                             ).tobytes())
        elif kind == 2:  # Up: + the byte above
            cur = bytearray((np.frombuffer(cur, np.uint8) + np.frombuffer(prev, np.uint8)).tobytes())
        elif kind in (3, 4):  # Average, Paeth: byte by byte, as the left byte is this row's result
            _unfilter_sequential(cur, prev, bpp, paeth=kind == 4)
        elif kind != 0:
            raise InputError(path, f"not a readable image (corrupt PNG data: filter type {kind} in "
                                   f"row {y}{where})")
        out += cur
        prev = cur
    return bytes(out)


def _unfilter_sequential(cur, prev, bpp, paeth):
    """PNG's Average (paeth False) or Paeth filter undone in place on one row (bytearrays);
    Paeth as libpng writes it: pa = |b - c|, pb = |a - c|, pc = |a + b - 2c|, ties a, then b.
    Pure Python, about 1 s a megabyte on this CPU: only these two need the left result."""
    for i in range(len(cur)):
        a, c = (cur[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
        b = prev[i]
        if not paeth:
            cur[i] = (cur[i] + ((a + b) >> 1)) & 255
            continue
        pa, pb = abs(b - c), abs(a - c)
        pc = abs(a + b - 2 * c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255


def _is_cmyk(path):
    """Whether a 4-channel file is CMYK (JPEG, TIFF), which imageio returns as stored; Pillow
    converts it to RGB. Anything Pillow cannot open is taken as not CMYK (RGBA and the like)."""
    try:
        return iio.immeta(path, plugin="pillow").get("mode") == "CMYK"
    except Exception:
        return False


def _read_problem(e):
    """One line for an exception raised by imageio or one of its plugins."""
    if isinstance(e, MemoryError):
        return "cannot read image (out of memory: is it huge or corrupt?)"
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if "Could not find a backend" in first or "cannot identify image file" in first:
        return "not a readable image (unknown format or corrupt file)"
    if isinstance(e, struct.error) or ("unpack" in first and "buffer" in first):
        return "not a readable image (corrupt or truncated header)"
    return f"cannot read image ({first[:120]})"


def read_grey(path):
    """Image file -> H x W float32 in [0, 1] (RGB -> luminance, alpha dropped)."""
    a = read_raw(path)
    f = to_unit_float(a, path)
    if f.ndim == 3:
        if f.shape[-1] in (1, 2):
            f = f[..., 0]
        else:
            f = luminance(f[..., :3])
    return f


def luminance(rgb):
    """BT.601 luma Y of (..., 3) RGB in [0, 1] as float32: what `read_grey` gives for a colour
    file, and the grey image the generator fuses."""
    return (np.asarray(rgb, np.float64) @ LUMA_WEIGHTS).astype(np.float32)


def read_rgb(path):
    """Image file -> H x W x 3 float32 in [0, 1]; grey images are repeated to 3 channels."""
    f = to_unit_float(read_raw(path), path)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=-1)
    elif f.shape[-1] in (1, 2):
        f = np.repeat(f[..., :1], 3, axis=-1)
    return f[..., :3]


def is_grey(array):
    """True for a grey image array: one or two channels, or R, G and B all equal."""
    a = np.asarray(array)
    if a.ndim == 2 or a.shape[-1] < 3:
        return True
    return bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))


def is_colour(path):
    """True when the file holds 3+ channels that are not all equal."""
    return not is_grey(read_raw(path))


def stretch_range(image):
    """Min-max stretch to [0, 1] (a constant image becomes 0): the official code's `imsave`
    (scipy.misc.bytescale), before its rounding to 8 bits."""
    x = np.asarray(image, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def to_uint8(image, stretch=False):
    """float image in [0, 1] -> uint8; stretch=True reproduces the official min-max scaling."""
    x = stretch_range(image) if stretch else np.asarray(image, dtype=np.float64)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def atomic_write(path, write_fn, suffix=""):
    """Calls write_fn(tmp_path) then renames tmp_path to path, so no partial file is left."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    check_output_dir(directory)
    if os.path.isdir(path):
        raise WriteError(path, "is a directory, expected a file name")
    remove_stale_temps(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(), suffix=suffix or os.path.splitext(path)[1])
        os.close(fd)
    except OSError as e:
        raise WriteError(path, f"cannot write ({os_problem(e)})") from None
    try:
        write_fn(tmp)
        _fsync(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise WriteError(path, f"cannot write ({os_problem(e)})") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync(directory, quiet=True)


_STALE_TEMP = re.compile(r"\.tmp-(?:export-)?([0-9a-f]{8})-(\d{1,10})-")
_swept = set()


def _host():
    """This machine and its process-id space: a hash of the host name and, on Linux, of the pid
    namespace, so that a container with the host's name (host networking) but pids of its own
    counts as another machine (its live writers' pids mean nothing here)."""
    try:
        space = os.readlink("/proc/self/ns/pid")
    except OSError:
        space = ""
    return f"{zlib.crc32(f'{socket.gethostname()} {space}'.encode()):08x}"


def temp_prefix(kind=""):
    """The start of a temporary name: `.tmp-KIND` + this machine (`_host`) + this process, so
    that a later writer can tell one left by a killed process (`remove_stale_temps`)."""
    return f".tmp-{kind}{_host()}-{os.getpid()}-"


def remove_stale_temps(directory):
    """Removes the temporary files and export directories (`temp_prefix`) that writers on this
    machine left in `directory` when they were killed: their process is gone. Another machine's
    (a shared disk), a live process's, and everything else (an export's `.tmp-old-*`, which may
    hold the only copy of the previous export) are left alone. Once per directory a process."""
    directory = os.path.abspath(os.fspath(directory))
    if directory in _swept:
        return
    _swept.add(directory)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    here = _host()
    for name in names:
        match = _STALE_TEMP.match(name)
        if not match or match.group(1) != here or _alive(int(match.group(2))):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_quietly(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (EPERM), or anything unclear: keep its file
        return True
    return True


def check_output_dir(directory, create=False):
    """WriteError unless `directory` is (or, with create=True, can be made) a writable directory."""
    directory = os.fspath(directory)
    if create:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise WriteError(directory, f"cannot create directory ({os_problem(e)})") from None
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise WriteError(directory, "is not a directory")
        raise WriteError(directory, "output directory does not exist")
    if not os.access(directory, os.W_OK):
        raise WriteError(directory, "output directory is not writable")


def probe_writable(directory):
    """Creates and removes a small file in `directory`: WriteError if that fails (read-only
    file system, no space or inodes left; also catches what os.access misses when running as root)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.fspath(directory), prefix=".tmp-probe-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            _remove_quietly(tmp)
    except OSError as e:
        raise WriteError(directory, f"cannot write ({os_problem(e)})") from None


def _fsync(path, quiet=False):
    """Flushes a written file (or a directory entry) to disk, so a rename never publishes a file
    whose data is still only in the page cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if not quiet and e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_bytes(path, data, suffix=None):
    """Writes `data` (bytes, or a buffer) to `path` atomically with plain writes. Files encoded
    in memory first (images, HDF5 checkpoints) reach the disk only through here, so a full disk
    is one OSError -> WriteError, never a library's half-closed writer failing later."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write, suffix=os.path.splitext(os.fspath(path))[1] if suffix is None else suffix)


def write_text(path, text):
    """Writes a text file atomically (temporary name, then rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_image(path, image, stretch=False):
    """Writes a [0, 1] float grey (H x W) or RGB (H x W x 3) image as 8-bit, atomically."""
    data = to_uint8(image, stretch=stretch)
    ext = os.path.splitext(os.fspath(path))[1].lower() or ".png"
    if ext not in IMAGE_EXTENSIONS:
        raise InputError(path, f"unsupported output format {ext!r} (use one of {', '.join(IMAGE_EXTENSIONS)})")

    try:  # encoded in memory: a full disk is then a plain write's OSError (imageio's writer, left
        # half-closed by one, printed its own tracebacks when collected)
        encoded = iio.imwrite("<bytes>", data, extension=ext)
    except Exception as e:  # a plugin failing on the data: report, do not leave a traceback
        raise WriteError(path, f"cannot encode image ({type(e).__name__}: {str(e)[:100]})") from None

    write_bytes(path, encoded, suffix=ext)


def list_images(directory):
    """Sorted image files in a directory, keyed by file stem; InputError if none, or if two
    share a stem (a.png and a.jpg: which one pairs would be a guess)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise InputError(directory, "is not a directory" if os.path.exists(directory) else "directory not found")
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise InputError(directory, f"cannot list directory ({os_problem(e)})") from None
    out = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            if stem in out:
                raise InputError(os.path.join(directory, name), f"shares its name with "
                                 f"{os.path.basename(out[stem])}; pairs are matched by name, keep one")
            out[stem] = os.path.join(directory, name)
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
