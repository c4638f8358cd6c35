"""Patch sets: folders of image pairs -> aligned 84x84 visible / 21x21 infrared patches in HDF5.

Layout written by `build_patch_set` (read by `ddcgan_tf.data`):
  vis  (N, P, P, 1)          uint8 / uint16 / float32; divide by attrs['max_value'] for [0, 1]
  ir   (N, P/s, P/s, 1)      float32 in [0, 1]
  attrs: format, patch, stride, scale, mode, sources (JSON list of file pairs), skipped, value_range

Infrared downsampling (when the infrared image has the visible size) follows the official code:
each full-resolution 84x84 infrared patch is reduced by `scipy.ndimage.zoom(patch, 1/s)`
(cubic spline, order 3), as the official `train.py` does per batch; by default we then clip to
[0, 1], which it does not (a departure that keeps the stored layout an image: on the first 12 TNO
infrared images, 6.5 % of patches differ, by up to 0.22 where the spline overshoots next to
saturated hot regions). `clip_ir=False` (`ddcgan-prepare --noclip_ir`) stores the spline's
values as the official code computes them; attrs['ir_downsampling'] says which. When the infrared image is already 1/s of the visible size (PET 64x64 with MRI
256x256), patches are cut at aligned positions and the stride must be a multiple of s.
"""
import json
import os

import h5py
import numpy as np
import scipy.ndimage

from ddcgan_tf import config as C
from ddcgan_tf import images
from ddcgan_tf.errors import InputError
from ddcgan_tf.metrics import pearson
from ddcgan_tf.signals import interrupt_held

FORMAT = "ddcgan_tf.patches/1"
MISMATCH_RULES = ("skip", "error", "resize")
RANGE_TOLERANCE = 1e-3  # rounding of computed inputs (e.g. a PET intensity) just outside [0, 1]


def downsample_ir(patch, scale, clip=True):
    """Official IR downsampling, scipy.ndimage.zoom(patch, 1/scale) (order 3), then clipped to
    [0, 1] unless `clip` is False (the official train.py does not clip; see the module docstring)."""
    if scale == 1:
        return np.asarray(patch, np.float32)
    out = scipy.ndimage.zoom(np.asarray(patch, np.float64), 1.0 / scale)
    return (np.clip(out, 0.0, 1.0) if clip else out).astype(np.float32)


def fit_sizes(vis, ir, scale):
    """The `resize=True` rule of ddcgan_tf.fuse (visible cropped to a multiple of `scale`; an
    infrared image of the visible size downsampled as in training, any other size resampled
    bicubically); here, beside downsample_ir, so TensorFlow-free tools use it too."""
    full = vis.shape
    h, w = (full[0] // scale) * scale, (full[1] // scale) * scale
    vis, target = vis[:h, :w], (h // scale, w // scale)
    if ir.shape == target:
        return vis, ir
    if ir.shape == full:
        return vis, downsample_ir(ir[:h, :w], scale)
    factors = (target[0] / ir.shape[0], target[1] / ir.shape[1])
    out = scipy.ndimage.zoom(ir.astype(np.float64), factors, order=3)[:target[0], :target[1]]
    out = np.pad(out, [(0, target[0] - out.shape[0]), (0, target[1] - out.shape[1])], mode="edge")
    return vis, np.clip(out, 0, 1).astype(np.float32)


def check_sizes(vis_shape, ir_shape, scale, vis_name="visible image", ir_name="infrared image",
                vis_kind="visible image", resize_hint=True):
    """Raises InputError unless vis is H x W and ir is (H/scale) x (W/scale), both large enough.
    vis_kind names the high-resolution image in the message; resize_hint: suggest --resize."""
    h, w = int(vis_shape[0]), int(vis_shape[1])
    ih, iw = int(ir_shape[0]), int(ir_shape[1])
    min_side = 2 * scale if scale > 1 else 4
    if h < min_side or w < min_side:
        raise InputError(vis_name, f"is {w}x{h}; the network needs at least {min_side}x{min_side}")
    if h % scale or w % scale:
        raise InputError(vis_name, f"size {w}x{h} is not a multiple of the scale factor {scale} "
                                   f"({'crop it, or pass --resize' if resize_hint else 'crop it'})")
    if (ih, iw) != (h // scale, w // scale):
        fix = "pass --resize to resample it" if resize_hint else "resample it first"
        raise InputError(ir_name, f"is {iw}x{ih} but must be {w // scale}x{h // scale} "
                                  f"(1/{scale} of the {w}x{h} {vis_kind}; {fix})")


def _positions(length, patch, stride):
    return range(0, length - patch + 1, stride)


def check_geometry(patch, stride, scale):
    """InputError naming the flag unless patch, stride and scale are usable together."""
    for flag, value in (("--patch", patch), ("--stride", stride), ("--scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(flag, f"must be a positive integer, got {value!r}")
    if patch % scale:
        raise InputError("--patch", f"patch size {patch} is not a multiple of the scale {scale}")


def _as_grey(image, label, where):
    """A 2-D finite float32 array in [0, 1], or InputError naming `where`."""
    try:
        a = np.asarray(image)
    except Exception as e:
        raise InputError(where, f"{label} image is not an array ({type(e).__name__})") from None
    if a.ndim != 2:
        raise InputError(where, f"{label} image must be one grey H x W array, got shape {a.shape}")
    if not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(where, f"{label} image has unsupported pixel type {a.dtype}")
    with np.errstate(all="ignore"):
        f = a.astype(np.float32)
        if not np.all(np.isfinite(f)):
            raise InputError(where, f"{label} image contains NaN or Inf values (or values too large "
                                    "for float32)")
        if f.size and (f.min() < -RANGE_TOLERANCE or f.max() > 1.0 + RANGE_TOLERANCE):
            raise InputError(where, f"{label} image values must lie in [0, 1], "
                                    f"got [{float(f.min()):.4g}, {float(f.max()):.4g}]")
    return np.clip(f, 0.0, 1.0)


def cut_pair(vis, ir, patch=C.PATCH_SIZE, stride=C.STRIDE, scale=C.SCALE, where="pair", clip_ir=True):
    """Aligned patches of one registered pair -> (vis (n, P, P), ir (n, P/s, P/s)) float32.

    `vis` and `ir` are 2-D arrays with values in [0, 1] (any real dtype). `ir` either has the
    visible size (then each patch is downsampled the official way) or is exactly 1/scale of it
    (then it is cut at the aligned positions). Any problem raises InputError. clip_ir: see
    downsample_ir.
    """
    check_geometry(patch, stride, scale)
    vis, ir = _as_grey(vis, "visible", where), _as_grey(ir, "infrared", where)
    h, w = vis.shape
    if h < patch or w < patch:
        raise InputError(where, f"visible image {w}x{h} is smaller than one {patch}x{patch} patch")
    low = ir.shape != vis.shape
    if low:
        if ir.shape != (h // scale, w // scale):
            raise InputError(where, f"infrared {ir.shape[1]}x{ir.shape[0]} is neither the visible size "
                                    f"{w}x{h} nor 1/{scale} of it")
        if stride % scale:
            raise InputError("--stride", f"stride {stride} must be a multiple of the scale {scale} "
                                         "when the infrared images are already low-resolution")
    p, q = patch, patch // scale
    vis_out, ir_out = [], []
    for y in _positions(h, p, stride):
        for x in _positions(w, p, stride):
            vis_out.append(vis[y:y + p, x:x + p])
            if low:
                ir_out.append(ir[y // scale:y // scale + q, x // scale:x // scale + q])
            else:
                ir_out.append(downsample_ir(ir[y:y + p, x:x + p], scale, clip=clip_ir))
    return np.stack(vis_out).astype(np.float32), np.stack(ir_out).astype(np.float32)


def _vis_storage(paths):
    """Smallest exact storage type for the visible patches: uint8 for 8-bit sources, etc. (an
    8-bit RGB source's luminance is rounded to 8 bits, as PIL's mode "L", which the official
    code read its images with, rounds it).

    Unreadable files are left out here; the main loop reports them.
    """
    kinds = set()
    for p in paths:
        try:
            raw = images.read_raw(p)
            images.to_unit_float(raw, p)  # a file with NaN, say, must not decide the storage type
        except InputError:
            continue
        kinds.add(raw.dtype)
    if kinds <= {np.dtype(np.uint8)}:
        return np.uint8, 255.0
    if kinds <= {np.dtype(np.uint8), np.dtype(np.uint16)}:
        return np.uint16, 65535.0
    return np.float32, 1.0


def _correlation(a, b):
    """metrics.pearson, with two constant images counting as 1 when equal, else 0."""
    r = pearson(a, b)
    return float(np.array_equal(a, b)) if np.isnan(r) else r


def near_copy(vis, ir, others, threshold=C.NEAR_COPY_CORRELATION):
    """The first of others {stem: (vis, ir)} that (vis, ir) nearly copies, as (stem, visible
    correlation, infrared correlation), or None. Near-copy: the same sizes and a Pearson
    correlation >= threshold in both images (the same frame written twice, or re-toned: TNO's
    houses_with_3_men and Movie_14 give 0.997 / 1.000; its next most alike pair 0.59). Crops and
    rescaled copies are not detected."""
    for stem, (v, i) in others.items():
        if v.shape == vis.shape and i.shape == ir.shape:
            cv = _correlation(v, vis)
            if cv >= threshold:
                ci = _correlation(i, ir)
                if ci >= threshold:
                    return stem, cv, ci
    return None


def near_copies(pairs, others, read_ir=None, threshold=C.NEAR_COPY_CORRELATION):
    """[(stem, other stem, visible correlation, infrared correlation)] for each of pairs
    [(stem, vis path, ir path)] that nearly copies one of others (same form); unreadable files
    are passed over (their readers report them)."""
    read_ir = read_ir or images.read_grey
    loaded = {}
    for stem, vpath, ipath in others:
        try:
            loaded[stem] = (images.read_grey(vpath), read_ir(ipath))
        except InputError:
            continue
    found = []
    for stem, vpath, ipath in pairs:
        try:
            hit = near_copy(images.read_grey(vpath), read_ir(ipath), loaded, threshold)
        except InputError:
            continue
        if hit:
            found.append((stem, *hit))
    return found


def build_patch_set(vis_dir, ir_dir, output, patch=C.PATCH_SIZE, stride=C.STRIDE, scale=C.SCALE,
                    exclude=(), on_mismatch="skip", mode="vis-ir", read_ir=None, log=print,
                    allow_near_copies=False, clip_ir=True):
    """Cuts every pair of vis_dir / ir_dir (paired by file stem) into one HDF5 patch set.

    on_mismatch: what to do with a pair whose sizes do not fit: "skip" it (reported, and listed
    in attrs['skipped']), stop with an "error", or "resize" the infrared image to the expected
    size (bicubic). `exclude` lists stems to leave out (e.g. held-out validation scenes); a kept
    pair that nearly copies an excluded one (`near_copy`) is an InputError naming both, before any
    file is written, unless allow_near_copies: it would put a held-out scene in the training set.
    read_ir: function path -> grey [0, 1] image for the infrared side (PET intensity, say).
    clip_ir: clip the downsampled infrared patches to [0, 1] (the default; False stores the
    official code's values, spline overshoot included; see the module docstring).

    A pair that cannot be used for another reason (unreadable or corrupt file, NaN/Inf, an
    image smaller than one patch) is reported and left out, and the run goes on: it is listed in
    summary['failed'] and attrs['failed'] (the CLI then exits non-zero). With
    on_mismatch="error" the first bad pair of any kind stops the run instead.
    Returns a summary dict. The file appears only when complete (written to a temp name first);
    when no patch at all could be cut, InputError and no file.
    """
    if on_mismatch not in MISMATCH_RULES:
        raise InputError("--on_mismatch", f"must be one of {MISMATCH_RULES}, got {on_mismatch!r}")
    check_geometry(patch, stride, scale)
    images.check_output_dir(os.path.dirname(os.path.abspath(os.fspath(output))))  # before the slow part
    read_ir = read_ir or images.read_grey
    pairs = images.pair_by_name(vis_dir, ir_dir)
    unknown = sorted(set(exclude) - {stem for stem, _, _ in pairs})
    if unknown:  # a typo would leave a held-out scene in the training set
        raise InputError("--exclude", f"no pair in {vis_dir} is named {', '.join(map(repr, unknown))}")
    excluded = [p for p in pairs if p[0] in set(exclude)]
    pairs = [p for p in pairs if p[0] not in set(exclude)]
    if not pairs:
        raise InputError(vis_dir, "no image pairs left after --exclude")
    if excluded and not allow_near_copies:
        copies = near_copies(pairs, excluded, read_ir)
        if copies:
            stem, other, cv, ci = copies[0]
            vpath = next(v for s, v, _ in pairs if s == stem)
            more = f" ({len(copies) - 1} more: {', '.join(c[0] for c in copies[1:])})" if len(copies) > 1 else ""
            raise InputError(vpath, f"nearly copies excluded pair {other!r} (correlation {cv:.3f} visible, "
                                    f"{ci:.3f} infrared){more}; add {', '.join(c[0] for c in copies)} to "
                                    f"--exclude, or pass --allow_near_copies")
    vis_dtype, vis_max = _vis_storage([v for _, v, _ in pairs])
    q = patch // scale
    sources, skipped, failed = [], [], []

    def fail(stem, error):
        if on_mismatch == "error" or error.where.startswith("--"):
            raise error  # strict mode, or a flag that no pair can satisfy
        failed.append({"name": stem, "reason": str(error)})
        log(f"FAILED {stem}: {error}")

    def write(tmp):
        sink = _DiskSink(tmp)
        try:  # Ctrl-C is held while HDF5 runs: it stops the build between pairs (see fill)
            with interrupt_held() as interrupted, h5py.File(sink, "w") as f:
                fill(f, sink, interrupted)
        finally:
            sink.close()
        if sink.error is not None:
            raise sink.error

    def fill(f, sink, interrupted):
        dv = f.create_dataset("vis", (0, patch, patch, 1), maxshape=(None, patch, patch, 1),
                              dtype=vis_dtype, chunks=(64, patch, patch, 1))
        di = f.create_dataset("ir", (0, q, q, 1), maxshape=(None, q, q, 1), dtype=np.float32,
                              chunks=(64, q, q, 1))
        for stem, vpath, ipath in pairs:
            if interrupted:  # here, not inside one of HDF5's calls into _DiskSink
                raise KeyboardInterrupt
            where = f"{vpath} / {ipath}"
            try:
                vis, ir = images.read_grey(vpath), read_ir(ipath)
                vp, ip = _cut(vis, ir, patch, stride, scale, where, stem, on_mismatch, skipped, log, clip_ir)
            except InputError as e:
                fail(stem, e)
                continue
            if vp is None:
                continue
            n0, n = dv.shape[0], len(vp)
            dv.resize(n0 + n, axis=0)
            di.resize(n0 + n, axis=0)
            dv[n0:] = np.rint(vp[..., None] * vis_max).astype(vis_dtype) if vis_max != 1.0 else vp[..., None]
            di[n0:] = ip[..., None]
            sources.append({"name": stem, "vis": os.path.abspath(vpath), "ir": os.path.abspath(ipath),
                            "patches": n})
            log(f"{stem}: {n} patches")
            if sink.error is not None:  # a full disk: stop here (write raises it)
                return
        if dv.shape[0] == 0:
            if failed:
                first = failed[0]["reason"]
            else:
                first = f"{skipped[0]['name']}: {skipped[0]['reason']}" if skipped else "no pairs"
            raise InputError(vis_dir, f"no patches were cut ({len(failed)} pair(s) failed, "
                                      f"{len(skipped)} skipped; first: {first})")
        dv.attrs["max_value"] = vis_max
        di.attrs["max_value"] = 1.0
        f.attrs.update(format=FORMAT, patch=patch, stride=stride, scale=scale, mode=mode,
                       sources=json.dumps(sources), skipped=json.dumps(skipped),
                       excluded=json.dumps(sorted(set(exclude))),
                       failed=json.dumps(failed),
                       value_range="[0, 1] after dividing by each dataset's max_value"
                                   + ("" if clip_ir else " (ir: the spline's overshoot kept)"),
                       ir_downsampling="scipy.ndimage.zoom(patch, 1/scale), order 3, "
                                       + ("clipped to [0, 1]" if clip_ir else "not clipped (official)"))
        count[0] = dv.shape[0]

    count = [0]
    images.atomic_write(output, write, suffix=".h5")
    return {"output": os.fspath(output), "patches": count[0], "pairs": len(sources), "skipped": skipped,
            "failed": failed}


class _DiskSink:
    """The file h5py streams a patch set into (`h5py.File(sink, "w")`): a write that fails
    (a full disk, a file-size limit) is remembered in `error` and kept in memory instead, so
    HDF5 itself never sees an I/O error. Handed one, HDF5 failed in its own close and then
    crashed the interpreter (a segmentation fault in the garbage collector, whatever the
    caller caught). The caller stops at the next pair, closes the file cleanly and raises
    `error`; the temporary file is then removed. Memory holds only what was written after the
    failure, in pages, so reads of it (HDF5 reads its metadata back) see what was written.
    A KeyboardInterrupt raised inside these methods would be an HDF5 error too, so the writer
    holds Ctrl-C (`signals.interrupt_held`) and stops between pairs."""

    PAGE = 1 << 16

    def __init__(self, path):
        self._fd = os.open(path, os.O_RDWR)
        self._pos = 0
        self._size = os.fstat(self._fd).st_size
        self._pages = {}
        self._disk_end = None  # after a failure: where the file now ends, as far as reads go
        self.error = None

    def close(self):
        os.close(self._fd)

    def seek(self, offset, whence=os.SEEK_SET):
        self._pos = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence] + offset
        return self._pos

    def tell(self):
        return self._pos

    def flush(self):
        pass

    def truncate(self, size=None):
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as e:
                self.error = e
        if self.error is not None:  # the disk keeps its bytes: forget those past `size`
            self._disk_end = size if self._disk_end is None else min(self._disk_end, size)
            for page in [p for p in self._pages if (p + 1) * self.PAGE > size]:
                keep = max(0, size - page * self.PAGE)
                if keep:
                    self._pages[page][keep:] = bytes(self.PAGE - keep)
                else:
                    del self._pages[page]
        self._size = size
        return size

    def write(self, data):
        data = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(data):
            try:
                done += os.pwrite(self._fd, data[done:], self._pos + done)
            except OSError as e:
                self.error = e
        if done < len(data):
            self._remember(self._pos + done, data[done:])
        self._pos += len(data)
        self._size = max(self._size, self._pos)
        return len(data)

    def readinto(self, buffer):
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self._size - self._pos))
        position, filled = self._pos, 0
        while filled < n:
            page, offset = divmod(position, self.PAGE)
            take = min(self.PAGE - offset, n - filled)
            kept = self._pages.get(page)
            chunk = kept[offset:offset + take] if kept is not None else self._disk(position, take)
            out[filled:filled + take] = chunk
            position, filled = position + take, filled + take
        out[n:] = bytes(len(out) - n)  # past the end: zeros, as HDF5's own driver reads
        self._pos += n
        return n

    def read(self, size=-1):
        buffer = bytearray(max(0, self._size - self._pos) if size is None or size < 0 else size)
        return bytes(buffer[:self.readinto(buffer)])

    def _disk(self, position, size):
        end = position + size if self._disk_end is None else min(position + size, self._disk_end)
        data = os.pread(self._fd, max(0, end - position), position)
        return data + bytes(size - len(data))  # never written (or cut off): zeros

    def _remember(self, position, data):
        while len(data):
            page, offset = divmod(position, self.PAGE)
            if page not in self._pages:
                self._pages[page] = bytearray(self._disk(page * self.PAGE, self.PAGE))
            take = min(self.PAGE - offset, len(data))
            self._pages[page][offset:offset + take] = data[:take]
            position, data = position + take, data[take:]


def source_names(path):
    """The file stems of the pairs a build_patch_set file was cut from (its attrs['sources'])."""
    try:
        with h5py.File(path, "r") as f:
            sources = f.attrs.get("sources")
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read the patch set: {e}") from None
    if sources is None:
        raise InputError(path, "has no list of source pairs (not written by ddcgan-prepare)")
    return [s["name"] for s in json.loads(sources)]


def _cut(vis, ir, patch, stride, scale, where, stem, on_mismatch, skipped, log, clip_ir=True):
    """cut_pair with the on_mismatch rule; (None, None) for a skipped pair."""
    try:
        return cut_pair(vis, ir, patch, stride, scale, where=where, clip_ir=clip_ir)
    except InputError as e:
        if on_mismatch == "error" or not _is_size_problem(vis, ir, scale):
            raise
        if on_mismatch == "skip":
            skipped.append({"name": stem, "reason": e.problem})
            log(f"skipping {stem}: {e.problem}")
            return None, None
        target = vis.shape if ir.shape[0] > vis.shape[0] // scale + 1 else (
            vis.shape[0] // scale, vis.shape[1] // scale)
        return cut_pair(vis, _resize(ir, target), patch, stride, scale, where=where, clip_ir=clip_ir)


def _is_size_problem(vis, ir, scale):
    return ir.shape != vis.shape and ir.shape != (vis.shape[0] // scale, vis.shape[1] // scale)


def _resize(img, shape):
    factors = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = scipy.ndimage.zoom(img.astype(np.float64), factors, order=3)
    out = out[:shape[0], :shape[1]]
    if out.shape != tuple(shape):
        out = np.pad(out, [(0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])], mode="edge")
    return np.clip(out, 0, 1).astype(np.float32)
