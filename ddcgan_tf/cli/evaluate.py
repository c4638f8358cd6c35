"""ddcgan-evaluate: fusion-quality metrics for a directory of fused images.

    ddcgan-evaluate --fused_dir F --vis_dir V --ir_dir I [--format md|csv|json]
                    [--convention cddfuse|vifb] [--output FILE]

Files are paired by stem across the three directories (a missing partner is an error). Sources
smaller than the fused image (IR at 1/4 resolution, PET at 64 x 64) are upsampled bicubically to
the fused size before the metrics; for those pairs PSNR_lr / SSIM_lr also compare the fused image,
average-pooled to the low-resolution grid, with the low-resolution source. Prints a per-image
table and the mean row; the first line states the convention.
"""
import io
import csv
import json
import math
import os
import sys

from absl import flags

from ddcgan_tf import config as C
from ddcgan_tf import metrics
from ddcgan_tf.cli.common import run_main
from ddcgan_tf.errors import InputError
from ddcgan_tf.images import pair_by_name, read_grey, write_text

FORMATS = ("md", "csv", "json")
PROG = "ddcgan-evaluate"

FLAGS = flags.FLAGS


def _define(kind, name, default, help_text, **kwargs):
    """Defines a flag unless another ddcgan CLI imported in this process already did.

    allow_override lets a later definition of the same name by another module replace this one
    instead of raising DuplicateFlagError (only matters when several CLIs are imported in one
    process, e.g. under pytest); main() validates the values itself.
    """
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, allow_override=True, **kwargs)


_define("string", "fused_dir", None, "Directory of fused images.")
_define("string", "vis_dir", None, "Directory of visible (or MRI) source images, same stems.")
_define("string", "ir_dir", None, "Directory of infrared (or PET) source images, same stems; may be low-resolution.")
_define("string", "format", "md", "Output format: md (markdown table), csv or json.")
_define("string", "convention", metrics.DEFAULT_CONVENTION,
        "Metric convention: cddfuse (MI bits, SSIM/CC averaged) or vifb (VIFB toolbox).")
_define("string", "output", None, "Also write the table to this file.")


def evaluate_dirs(fused_dir, vis_dir, ir_dir, convention=metrics.DEFAULT_CONVENTION, failures=None):
    """Metrics for every fused image -> (rows, mean).

    rows: list of dicts {"name": stem, <metric>: value, ...} in stem order, metrics as
    metrics.METRIC_NAMES, plus "PSNR_lr"/"SSIM_lr" (nan for pairs whose sources are full size)
    when any pair has a source smaller than the fused image. mean: dict of the means over pairs
    (nan entries ignored), with "name": "mean". Raises InputError for missing partners,
    unreadable files or sources larger than the fused image; with a `failures` list, a bad
    triple is appended to it as (name, message) and skipped instead.
    """
    if convention not in metrics.CONVENTIONS:
        raise InputError("--convention", f"must be one of {', '.join(metrics.CONVENTIONS)}, got {convention!r}")
    with_vis = pair_by_name(fused_dir, vis_dir, "fused", "vis")
    with_ir = dict((stem, b) for stem, _, b in pair_by_name(fused_dir, ir_dir, "fused", "ir"))
    rows = []
    any_lowres = False
    for stem, fused_path, vis_path in with_vis:
        ir_path = with_ir[stem]
        try:
            fused, vis, ir = _read_triple(fused_path, vis_path, ir_path)
            row = {"name": stem}
            try:  # the metrics' own checks (e.g. AG needs 2 x 2 pixels) name no file
                row.update(metrics.evaluate_triple(fused, vis, ir, convention))
                lowres = ir if ir.shape != fused.shape else (vis if vis.shape != fused.shape else None)
                if lowres is not None:
                    row["_lowres"] = metrics.lowres_fidelity(fused, lowres)
            except ValueError as e:
                raise InputError(fused_path, f"cannot be scored ({e})") from None
        except InputError as e:
            if failures is None:
                raise
            failures.append((stem, str(e)))
            continue
        any_lowres = any_lowres or "_lowres" in row
        rows.append(row)
    if not rows:
        if failures:
            raise InputError(*failures[0][1].split(": ", 1))
        raise InputError(fused_dir, "no triple could be evaluated")
    names = list(metrics.METRIC_NAMES) + (list(metrics.LOWRES_NAMES) if any_lowres else [])
    out = []
    for row in rows:
        lr = row.pop("_lowres", {})
        if any_lowres:
            for k in metrics.LOWRES_NAMES:
                row[k] = lr.get(k, float("nan"))
        out.append(row)
    mean = {"name": "mean"}
    for k in names:
        vals = [r[k] for r in out if not math.isnan(r[k])]
        mean[k] = math.fsum(vals) / len(vals) if vals else float("nan")
    return out, mean


def _read_triple(fused_path, vis_path, ir_path):
    """(fused, vis, ir) grey arrays. A source larger than the fused image by ddcgan-fuse
    --resize's crop (bottom/right, to a multiple of the scale) is cropped the same way."""
    fused = read_grey(fused_path)
    fh, fw = fused.shape
    sources = []
    for path in (vis_path, ir_path):
        src = read_grey(path)
        h, w = src.shape
        if h > fh or w > fw:
            if (h - h % C.SCALE, w - w % C.SCALE) != (fh, fw):
                raise InputError(path, f"is {h}x{w}, larger than the fused image {fused_path} ({fh}x{fw}) "
                                       f"by more than ddcgan-fuse --resize crops")
            src = src[:fh, :fw]
        sources.append(src)
    return (fused, *sources)


def header_line(convention, n_pairs, n_upsampled):
    """One line stating the convention and the low-resolution handling."""
    line = (f"ddcgan-evaluate: convention={convention} ({metrics.CONVENTION_NOTES[convention]}); "
            f"means over {n_pairs} pairs; sources cropped as --resize crops them (bottom/right, to a "
            f"multiple of {C.SCALE}); sources smaller than the fused image upsampled bicubically "
            f"(scipy.ndimage.zoom order=3) to the fused size ({n_upsampled} of {n_pairs} pairs)")
    if n_upsampled:
        line += ("; PSNR_lr/SSIM_lr: fused image average-pooled to the low-resolution grid vs the "
                 "low-resolution source")
    return line


def _fmt(v):
    if isinstance(v, str):
        return v
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4f}"


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # nan (undefined) or inf (e.g. PSNR of identical images)
    return v


def format_table(rows, mean, fmt, header):
    """Renders rows + mean as md, csv or json text (ending with a newline)."""
    keys = [k for k in mean if k != "name"]
    if fmt == "json":
        doc = {
            "header": header,
            "metrics": keys,
            "rows": [{k: _json_value(r[k]) for k in ["name"] + keys} for r in rows],
            "mean": {k: _json_value(mean[k]) for k in ["name"] + keys},
        }
        return json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        buf.write(f"# {header}\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name"] + keys)
        for r in rows + [mean]:
            w.writerow([r["name"]] + [_fmt(r[k]) for k in keys])
        return buf.getvalue()
    lines = [header, "", "| name | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r[k]) for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(mean[k])}**" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv  # run_main refuses any word that is not a flag
    for name in ("fused_dir", "vis_dir", "ir_dir"):
        if not FLAGS[name].value:
            raise InputError(f"--{name}", "is required")
    fmt, convention = FLAGS.format, FLAGS.convention
    if fmt not in FORMATS:
        raise InputError("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if convention not in metrics.CONVENTIONS:
        raise InputError("--convention", f"must be one of {', '.join(metrics.CONVENTIONS)}, got {convention!r}")
    failures = []
    rows, mean = evaluate_dirs(FLAGS.fused_dir, FLAGS.vis_dir, FLAGS.ir_dir, convention, failures)
    n_up = sum(1 for r in rows if "PSNR_lr" in r and not math.isnan(r["PSNR_lr"]))
    text = format_table(rows, mean, fmt, header_line(convention, len(rows), n_up))
    if FLAGS.output:
        write_text(os.path.abspath(FLAGS.output), text)
    print(text, end="")
    if failures:
        print(f"{PROG}: error: {len(failures)} triple(s) could not be evaluated:", file=sys.stderr)
        for _, message in failures:
            print(f"  {message}", file=sys.stderr)
        sys.exit(2)
    return 0


def run():
    """Console-script entry point (ddcgan-evaluate)."""
    run_main(main, PROG, needs_tensorflow=False)


if __name__ == "__main__":
    run()
