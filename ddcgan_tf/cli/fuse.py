"""ddcgan-fuse: fuse a visible/infrared pair (or two directories of pairs) with a generator."""
import os
import sys

from absl import flags

from ddcgan_tf.cli.common import EXIT_BAD_INPUT, run_main
from ddcgan_tf.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "vis-ir", ["vis-ir", "pet-mri"], "vis-ir, or pet-mri (colour PET kept through IHS).")
flags.DEFINE_string("mri", None, "pet-mri mode: grey MRI image.")
flags.DEFINE_string("pet", None, "pet-mri mode: PET image (colour or grey) at 1/4 of the MRI size.")
flags.DEFINE_string("vis", None, "Visible image.")
flags.DEFINE_string("ir", None, "Infrared image at 1/4 of the visible size (see --resize).")
flags.DEFINE_string("output", None, "Output image (8-bit PNG).")
flags.DEFINE_string("vis_dir", None, "Directory mode: visible images.")
flags.DEFINE_string("ir_dir", None, "Directory mode: infrared images with the same file stems.")
flags.DEFINE_string("output_dir", None, "Directory mode: where the fused PNGs go.")
flags.DEFINE_string("checkpoint", None, "Checkpoint file, model directory, generator.h5 or an official "
                    "TF1 checkpoint (model.ckpt prefix or its directory) "
                    "(default: the shipped weights in checkpoints/).")
flags.DEFINE_enum("bn_mode", None, ["batch", "moving"], "Override the checkpoint's BN statistics mode.")
flags.DEFINE_boolean("resize", False, "Make sizes fit: crop the visible image to a multiple of 4 and "
                     "downsample/resample the infrared image to 1/4 of it.")
flags.DEFINE_boolean("stretch", None, "Min-max stretch the output as the official code's imsave did "
                     "(default: what the weights record: yes for the shipped vis-ir weights and "
                     "official TF1 checkpoints; --nostretch writes the generator's output as is).")
flags.DEFINE_boolean("colour", False, "vis-ir: keep a colour visible image's colour (fuse its luminance Y, "
                     "keep its chroma Cb, Cr; see ddcgan_tf/ycbcr.py) and write RGB; grey ones stay grey.")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the generator.")
flags.DEFINE_integer("tile", None, "Fuse in overlapping tiles of this side (multiple of 4, e.g. 512) so "
                     "memory is bounded by the tile, not the image; exact (see ddcgan_tf/tiling.py).")
flags.DEFINE_boolean("demo", False, "Fuse a built-in synthetic scene with the shipped weights and write "
                     "a side-by-side PNG and the metric table into --output_dir (default demo_output).")


def main(argv):
    del argv
    from ddcgan_tf import images
    from ddcgan_tf.checkpoint import load_generator
    from ddcgan_tf.fuse import Fuser, fuse_dirs, fuse_files
    from ddcgan_tf.shipped import default_checkpoint

    if FLAGS.demo:
        from ddcgan_tf.demo import run_demo

        unused = given("vis", "ir", "output", "vis_dir", "ir_dir", "mri", "pet", "tile", "resize", "colour")
        unused += ["--mode"] if FLAGS.mode != "vis-ir" else []
        if unused:  # the demo fuses its own scene, whole, with the vis-ir weights
            raise InputError(", ".join(unused), "not used by --demo (it fuses a built-in scene; "
                                                "--output_dir, --checkpoint, --bn_mode and --stretch apply)")

        checkpoint = FLAGS.checkpoint or default_checkpoint("vis-ir")
        fuser = Fuser(load_generator(checkpoint, bn_mode=FLAGS.bn_mode, stretch=FLAGS.stretch),
                      jit_compile=FLAGS.jit_compile)
        run_demo(fuser, FLAGS.output_dir or "demo_output")
        return
    if FLAGS.mode == "pet-mri":
        return fuse_pet_mri_cli()
    pet_mri = given("mri", "pet")
    if pet_mri:
        raise InputError(", ".join(pet_mri), "only used with --mode pet-mri (vis-ir mode takes --vis --ir --output, "
                                             "or --vis_dir --ir_dir --output_dir)")
    single = FLAGS.vis or FLAGS.ir or FLAGS.output
    folder = FLAGS.vis_dir or FLAGS.ir_dir or FLAGS.output_dir
    if bool(single) == bool(folder):
        raise InputError("flags", "give either --vis --ir --output, or --vis_dir --ir_dir --output_dir")
    needed = ("vis", "ir", "output") if single else ("vis_dir", "ir_dir", "output_dir")
    missing = [f"--{n}" for n in needed if not FLAGS[n].value]
    if missing:
        raise InputError("flags", f"missing {', '.join(missing)}")
    if single:
        check_output_path(FLAGS.output)  # before any work
    checkpoint = FLAGS.checkpoint or default_checkpoint("vis-ir")
    fuser = Fuser(load_generator(checkpoint, bn_mode=FLAGS.bn_mode, stretch=FLAGS.stretch),
                  jit_compile=FLAGS.jit_compile)
    if FLAGS.tile is not None:  # before any pair is read
        from ddcgan_tf.tiling import check_tile
        check_tile(FLAGS.tile, fuser.scale)
    if single:
        fuse_files(fuser, FLAGS.vis, FLAGS.ir, FLAGS.output, resize=FLAGS.resize, tile=FLAGS.tile,
                   colour=FLAGS.colour)
        print(f"wrote {FLAGS.output}")
        if not FLAGS.colour and images.is_colour(FLAGS.vis):
            print(f"note: {FLAGS.vis} is a colour image and was fused as grey; --colour keeps its colour")
        return
    written, failed = fuse_dirs(fuser, FLAGS.vis_dir, FLAGS.ir_dir, FLAGS.output_dir,
                                resize=FLAGS.resize, tile=FLAGS.tile, colour=FLAGS.colour)
    print(f"fused {len(written)} pairs into {FLAGS.output_dir}")
    if failed:
        print(f"ddcgan-fuse: error: {len(failed)} pair(s) failed:", file=sys.stderr)
        for _, msg in failed:
            print(f"  {msg}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def given(*names):
    """The flags among `names` that the command line set ("--name"; a boolean only when true)."""
    return [f"--{n}" for n in names if FLAGS[n].value is not None and FLAGS[n].value is not False]


def check_output_path(path):
    """An output image path must have a supported extension and an existing directory."""
    from ddcgan_tf import images

    ext = os.path.splitext(path)[1].lower()
    if ext not in images.IMAGE_EXTENSIONS:
        raise InputError(path, f"unsupported output format {ext or '(none)'!r} "
                               f"(use one of {', '.join(images.IMAGE_EXTENSIONS)})")
    images.check_output_dir(os.path.dirname(os.path.abspath(path)))


def fuse_pet_mri_cli():
    from ddcgan_tf import images
    from ddcgan_tf.checkpoint import load_generator
    from ddcgan_tf.fuse import Fuser
    from ddcgan_tf.ihs import fuse_pet_mri
    from ddcgan_tf.shipped import default_checkpoint

    if FLAGS.colour:
        raise InputError("--colour", "is for a colour visible image (vis-ir mode); in pet-mri mode "
                                     "the PET's colour is kept through IHS")
    ignored = given("vis", "ir", "vis_dir", "ir_dir", "output_dir", "tile", "resize")
    if ignored:  # rather than fuse whole, or at the given sizes, without saying so
        raise InputError(", ".join(ignored), "not supported in pet-mri mode (one pair: --mri, --pet, --output; "
                                             "the PET at 1/4 of the MRI size)")
    missing = [f"--{n}" for n in ("mri", "pet", "output") if not FLAGS[n].value]
    if missing:
        raise InputError("flags", f"pet-mri mode needs {', '.join(missing)}")
    check_output_path(FLAGS.output)
    raw_mri = images.read_raw(FLAGS.mri)
    if images.is_colour(FLAGS.mri):
        raise InputError(FLAGS.mri, f"the MRI must be a grey image, got {raw_mri.shape[-1]} colour channels")
    mri, pet = images.read_grey(FLAGS.mri), images.read_rgb(FLAGS.pet)
    if not images.is_colour(FLAGS.pet):
        print(f"note: {FLAGS.pet} is grey, so the fused image is grey")
        pet = pet[..., 0]
    checkpoint = FLAGS.checkpoint or default_checkpoint("pet-mri")
    fuser = Fuser(load_generator(checkpoint, bn_mode=FLAGS.bn_mode, stretch=FLAGS.stretch),
                  jit_compile=FLAGS.jit_compile)
    fused = fuse_pet_mri(fuser, mri, pet, mri_name=FLAGS.mri, pet_name=FLAGS.pet)
    images.write_image(FLAGS.output, fused, stretch=fuser.stretch)
    print(f"wrote {FLAGS.output}")


def run():
    run_main(main, "ddcgan-fuse", out_of_memory="out of memory: the image is too large to process in one piece "
                                                "(--tile 512 fuses it in tiles)")


if __name__ == "__main__":
    run()
