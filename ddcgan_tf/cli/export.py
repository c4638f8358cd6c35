"""ddcgan-export: write a generator as a SavedModel (signatures serve / serving_default / serve_colour).

  ddcgan-export --checkpoint runs/tno --output exported/ddcgan [--bn_mode moving] [--[no]stretch]
      [--overwrite]

Inputs vis float32 [N, H, W, 1] and ir float32 [N, H/4, W/4, 1] in [0, 1]; output "fused"
float32 [N, H, W, 1]. See ddcgan_tf/export.py.
"""
import os

from absl import flags

from ddcgan_tf.cli.common import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint file, model directory, generator.h5 or an official "
                    "TF1 checkpoint (model.ckpt prefix or its directory) "
                    "(default: the shipped weights of --mode in checkpoints/).")
flags.DEFINE_string("output", None, "SavedModel directory to write (must not exist unless --overwrite).")
flags.DEFINE_enum("mode", "vis-ir", ["vis-ir", "pet-mri"], "Which shipped weights to use without --checkpoint.")
flags.DEFINE_enum("bn_mode", None, ["batch", "moving"], "BN statistics baked into the export "
                  "(default: the checkpoint's, normally batch = per-image statistics).")
flags.DEFINE_boolean("stretch", None, "Min-max stretch each fused image in the export, as ddcgan-fuse "
                     "writes it (default: what the weights record).")
flags.DEFINE_boolean("overwrite", False,
                     "Replace an existing --output directory that holds an earlier export (anything else is refused).")


def main(argv):
    del argv
    from ddcgan_tf.checkpoint import load_generator
    from ddcgan_tf.errors import InputError
    from ddcgan_tf.export import COLOUR_SIGNATURE, OUTPUT_KEY, export_saved_model
    from ddcgan_tf.shipped import default_checkpoint

    if not FLAGS.output:
        raise InputError("flags", "missing --output")
    checkpoint = FLAGS.checkpoint or default_checkpoint(FLAGS.mode)
    out, source = os.path.realpath(FLAGS.output), os.path.realpath(checkpoint)
    if os.path.commonpath([out, source]) == out:  # --overwrite would delete the weights themselves
        raise InputError(FLAGS.output, f"holds the checkpoint being exported ({checkpoint}); "
                                       f"choose another --output")
    generator = load_generator(checkpoint, bn_mode=FLAGS.bn_mode, stretch=FLAGS.stretch)
    config = export_saved_model(generator, FLAGS.output, overwrite=FLAGS.overwrite)
    s = config["scale"]
    print(f"wrote {FLAGS.output} (signatures serve, serving_default: vis [N,H,W,1], "
          f"ir [N,H/{s},W/{s},1] -> {OUTPUT_KEY} [N,H,W,1]; {COLOUR_SIGNATURE}: vis_rgb [N,H,W,3], "
          f"ir -> {OUTPUT_KEY} [N,H,W,3]; bn_mode={config['bn_mode']}, "
          f"stretch={config['stretch']}, official_decoder={config['official_decoder']})")


def run():
    run_main(main, "ddcgan-export")


if __name__ == "__main__":
    run()
