"""ddcgan-prepare: folders of image pairs -> HDF5 patch set (see ddcgan_tf.patches).

A pair that cannot be read (or holds NaN/Inf, or is smaller than one patch) is reported and
left out; the set is written from the others, the failures are listed at the end and the exit
status is 2. Size mismatches follow --on_mismatch (default: skipped and listed, exit 0).
"""
import sys

from absl import flags

from ddcgan_tf import config as C
from ddcgan_tf.cli.common import EXIT_BAD_INPUT, one_line, run_main
from ddcgan_tf.patches import MISMATCH_RULES, build_patch_set

FLAGS = flags.FLAGS
flags.DEFINE_string("vis_dir", None, "Directory of visible (or MRI) images.")
flags.DEFINE_string("ir_dir", None, "Directory of infrared (or PET) images; same file stems.")
flags.DEFINE_string("output", None, "Output HDF5 file, e.g. tno.h5.")
flags.DEFINE_integer("patch", C.PATCH_SIZE, "Visible patch side.")
flags.DEFINE_integer("stride", C.STRIDE, "Stride between patches (visible pixels).")
flags.DEFINE_integer("scale", C.SCALE, "Visible / infrared resolution ratio (4, or 1).")
flags.DEFINE_list("exclude", [], "File stems to leave out (held-out validation scenes).")
flags.DEFINE_bool("allow_near_copies", False,
                  "Keep a pair that nearly copies an --exclude'd one (same sizes, both images correlated "
                  f">= {C.NEAR_COPY_CORRELATION}); by default that is an error, as it leaks a held-out scene.")
flags.DEFINE_enum("on_mismatch", "skip", MISMATCH_RULES,
                  "Pairs whose sizes do not fit: skip them, stop with an error, or resize the infrared.")
flags.DEFINE_enum("mode", "vis-ir", ["vis-ir", "pet-mri"],
                  "pet-mri: the infrared side is PET (colour PET contributes its IHS intensity).")
flags.DEFINE_bool("clip_ir", True,
                  "Clip the downsampled infrared patches to [0, 1]; --noclip_ir keeps the cubic spline's "
                  "overshoot, as the official train.py does (only for infrared images of the visible size).")
flags.mark_flags_as_required(["vis_dir", "ir_dir", "output"])


def main(argv):
    del argv
    read_ir = None
    if FLAGS.mode == "pet-mri":
        from ddcgan_tf.ihs import read_pet_intensity
        read_ir = read_pet_intensity
    summary = build_patch_set(FLAGS.vis_dir, FLAGS.ir_dir, FLAGS.output, patch=FLAGS.patch,
                              stride=FLAGS.stride, scale=FLAGS.scale, exclude=FLAGS.exclude,
                              on_mismatch=FLAGS.on_mismatch, mode=FLAGS.mode, read_ir=read_ir,
                              allow_near_copies=FLAGS.allow_near_copies, clip_ir=FLAGS.clip_ir)
    print(f"wrote {summary['patches']} patches from {summary['pairs']} pairs to {summary['output']}"
          + (f"; skipped {len(summary['skipped'])}: " + ", ".join(s["name"] for s in summary["skipped"])
             if summary["skipped"] else ""))
    failed = summary.get("failed") or []
    if failed:
        sys.stdout.flush()
        print(f"ddcgan-prepare: error: {len(failed)} pair(s) failed and were left out:", file=sys.stderr)
        for item in failed:
            print(f"  {one_line(item['reason'])}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def run():
    run_main(main, "ddcgan-prepare", needs_tensorflow=False)


if __name__ == "__main__":
    run()
