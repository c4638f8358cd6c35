"""ddcgan-train: train or resume a DDcGAN on an HDF5 patch set.

Exit status: 0 done; 2 bad input or an output that cannot be written (one line on stderr);
3 a loss became NaN/Inf (one line; the last good checkpoint is kept); 128 + the signal's number
(143 SIGTERM, 130 SIGINT/Ctrl-C) stopped by a signal after a whole batch, its state saved (one
line; the same command resumes); 4 --strategy multiworker lost another worker in the middle of a
batch (one line; start every worker again to resume from the chief's newest checkpoint).
"""
import sys

from absl import flags

from ddcgan_tf import config as C
from ddcgan_tf.cli.common import error_exit, one_line, run_main

EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "HDF5 patch set (ddcgan-prepare output or the official Training_Dataset.h5).")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs and config go here; an existing run is resumed.")
flags.DEFINE_integer("steps", None, "Total batches to train (across resumes). Default: --epochs epochs.")
flags.DEFINE_integer("epochs", 1, "Epochs (passes over the patch set) when --steps is not given.")
flags.DEFINE_integer("batch_size", C.BATCH_SIZE, "Batch size.")
flags.DEFINE_enum("preset", "official", list(C.PRESETS), "Hyper-parameters: official TF1 code or the paper.")
flags.DEFINE_integer("scale", C.SCALE, "Visible / infrared resolution ratio: 4, or 1 (same resolution).")
flags.DEFINE_boolean("official_decoder", True, "Apply the first decoder kernel twice, as the official code does.")
flags.DEFINE_enum("bn_mode", "batch", ["batch", "moving"], "BN statistics used when fusing.")
flags.DEFINE_float("learning_rate", None, "Override the preset's initial learning rate.")
flags.DEFINE_float("lr_decay_rate", None, "Override the per-epoch decay rate.")
flags.DEFINE_float("content_weight", None, "Override lambda.")
flags.DEFINE_float("grad_weight", None, "Override eta.")
flags.DEFINE_float("l_max", None, "Override L_max.")
flags.DEFINE_float("l_min", None, "Override L_min.")
flags.DEFINE_float("g_max", None, "Override L_Gmax (absolute, or a factor with the paper preset).")
flags.DEFINE_integer("max_repeats", None, "Override I_max.")
flags.DEFINE_float("clip_value", None, "Override the weight clipping bound (0 disables clipping).")
flags.DEFINE_boolean("alternate_batches", None, "Override: Dv/Di on even batches and G on odd ones, as the "
                     "official train.py (--preset official), or all three on every batch (--preset paper; "
                     "--noalternate_batches resumes a run recorded before this flag existed).")
flags.DEFINE_string("init_from", None, "Start a new run from these network weights (fine-tuning): a checkpoint, "
                    "generator file, model directory (e.g. checkpoints/vis-ir) or official TF1 "
                    "checkpoint (model.ckpt). Optimizers and "
                    "schedule start fresh; ignored when --model_dir already holds a run.")
flags.DEFINE_integer("checkpoint_every", 100, "Save the full state every N batches.")
flags.DEFINE_integer("keep", 3, "Checkpoints to keep.")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the train step's pieces (the schedule's loops stay in the "
                     "graph): 1.15x faster on a 2-core AMD EPYC (oneDNN off), slower on a 2-core "
                     "Intel Xeon with oneDNN (12.0 vs 10.4 s a batch of 24); see WORKSPACE.md.")
flags.DEFINE_integer("seed", None, "Data seed (batch order) and initial-weights seed. Default: a resumed run "
                     "keeps the one in MODEL_DIR/config.json, a new run draws one and records it there.")
flags.DEFINE_boolean("tensorboard", True, "Write TensorBoard scalars and sample images to MODEL_DIR/logs.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker"],
                  "Distribution: one device, all local devices (MirroredStrategy), or a cluster "
                  "described by TF_CONFIG (MultiWorkerMirroredStrategy; see README).")
flags.DEFINE_enum("mixed_precision", None, ["mixed_bfloat16", "mixed_float16"],
                  "16-bit convolutions (float16 uses loss scaling; bfloat16 halves the step on CPUs "
                  "with AVX512-BF16 but has hit non-finite outputs there, see README). Default: float32.")
flags.DEFINE_integer("nan_retries", 0, "After a non-finite loss, restore the last checkpoint and train on "
                     "from it with the same batches, up to N times (for transient faults such as bfloat16 "
                     "on a CPU; a fault the batches cause recurs and ends the run).")
flags.DEFINE_integer("verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
flags.mark_flags_as_required(["data", "model_dir"])

OVERRIDES = ("learning_rate", "lr_decay_rate", "content_weight", "grad_weight", "l_max", "l_min",
             "g_max", "max_repeats", "clip_value", "alternate_batches")


def main(argv):
    del argv
    from ddcgan_tf.train import PeerLost, TrainingDiverged, TrainingInterrupted, train

    overrides = {k: FLAGS[k].value for k in OVERRIDES if FLAGS[k].value is not None}
    if overrides.get("clip_value") == 0:
        overrides["clip_value"] = None
    try:
        train(FLAGS.data, FLAGS.model_dir, steps=FLAGS.steps, epochs=FLAGS.epochs,
              batch_size=FLAGS.batch_size, preset=FLAGS.preset, overrides=overrides,
              scale=FLAGS.scale, official_decoder=FLAGS.official_decoder, bn_mode=FLAGS.bn_mode,
              checkpoint_every=FLAGS.checkpoint_every, keep=FLAGS.keep, jit_compile=FLAGS.jit_compile,
              seed=FLAGS.seed, tensorboard=FLAGS.tensorboard, verbose=FLAGS.verbose,
              strategy=FLAGS.strategy, mixed_precision=FLAGS.mixed_precision,
              nan_retries=FLAGS.nan_retries, init_from=FLAGS.init_from)
    except TrainingDiverged as e:
        error_exit("ddcgan-train", e, EXIT_DIVERGED)
    except PeerLost as e:
        error_exit("ddcgan-train", e, EXIT_PEER_LOST)
    except TrainingInterrupted as e:  # not an error: one line, and the shell's status for the signal
        print(f"ddcgan-train: {one_line(e)}", file=sys.stderr)
        sys.exit(128 + e.signum)


def run():
    run_main(main, "ddcgan-train", out_of_memory="out of memory: a training step at this --batch_size does not "
                                                 "fit on the device (start the run with a smaller --batch_size)")


if __name__ == "__main__":
    run()
