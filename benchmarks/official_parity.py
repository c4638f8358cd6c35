"""Our networks against the official TF1 graph, run from a clone of hanna-xu/DDcGAN.

  pip install "tf_keras==<your TensorFlow's major.minor>.*"   # tf.layers for tf.compat.v1
  python benchmarks/official_parity.py --official_dir "DDcGAN/multi-resolution vis-ir image fusion"

The official folder's Generator.py (+ Deconv.py) and, when there is one, Discriminator.py (of
--discriminator_dir, e.g. the PET-MRI folder, whose 16/32/64 discriminators this port has) are
imported as they are, with `tensorflow` standing for tf.compat.v1 (graph mode). The graph is
built the way the official train.py builds it (Generator('Generator'), then Discriminator1 on
the visible image and Discriminator2 on the infrared one, an RMSProp optimizer for G), with
random weights (BN gamma/beta
and moving statistics moved away from 1/0 so a mis-mapped variable shows), saved with
tf.train.Saver as the official code saves, and run on random inputs. Then ddcgan_tf.official
reads that checkpoint into our Generator / Discriminators (TF2, another process) and this
prints the largest differences. --names writes the checkpoint's variable list (the fixture
tests/data/official_tf1_variables.json was written so).

The official code is not part of this repository; bring your own clone. tf_keras is needed here
only (no ddcgan_tf module imports it).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("official_dir", None, "Folder of the official code holding Generator.py.")
flags.DEFINE_string("discriminator_dir", None, "Folder whose Discriminator.py to use (default: --official_dir; "
                    "this port's 16/32/64 discriminators are those of the PET-MRI folder).")
flags.DEFINE_string("work_dir", None, "Where the checkpoint and outputs go (default: a temporary folder).")
flags.DEFINE_string("names", None, "Write the checkpoint's [name, shape] list to this JSON file.")
flags.DEFINE_integer("batch", 2, "Images per input.")
flags.DEFINE_integer("size", 84, "Visible side (the infrared side is size / 4 for the multi-resolution code).")
flags.DEFINE_string("phase", "compare", "compare (default), or tf1 (the child process that runs the official graph).")


def run_official(official_dir, discriminator_dir, work_dir, n, size):
    """Child process: the official graph in tf.compat.v1; writes model.ckpt and official.npz."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf2

    v1 = tf2.compat.v1
    v1.disable_v2_behavior()
    sys.modules["tensorflow"] = v1  # the official `import tensorflow as tf`
    sys.path.insert(0, official_dir)
    import Generator as official_g  # noqa: E402  (the official module)

    discriminators = None
    if os.path.isfile(os.path.join(discriminator_dir, "Discriminator.py")):
        sys.path.insert(0, discriminator_dir)
        import Discriminator as official_d  # noqa: E402

        discriminators = official_d
    with open(os.path.join(official_dir, "Generator.py"), encoding="utf-8") as f:
        multi = "deconv_ir(" in f.read()  # transform() calls the transposed convs (not only imports them)
    ir_side = size // 4 if multi else size
    rng = np.random.default_rng(0)
    vis = rng.random((n, size, size, 1)).astype(np.float32)
    ir = rng.random((n, ir_side, ir_side, 1)).astype(np.float32)
    out = {"vis": vis, "ir": ir}
    with v1.Graph().as_default(), v1.Session() as sess:
        v1.set_random_seed(1)
        V = v1.placeholder(v1.float32, shape=vis.shape)
        I = v1.placeholder(v1.float32, shape=ir.shape)
        fused = official_g.Generator("Generator").transform(vis=V, ir=I)
        fetch = {"fused": fused}
        if discriminators is not None:
            fetch["dv"] = discriminators.Discriminator1("Discriminator1").discrim(V, reuse=False)
            fetch["di"] = discriminators.Discriminator2("Discriminator2").discrim(I, reuse=False)
        # G's RMSProp slots and the step counter, as train.py's checkpoints hold them
        theta_g = v1.get_collection(v1.GraphKeys.TRAINABLE_VARIABLES, scope="Generator")
        v1.train.RMSPropOptimizer(2e-4).minimize(v1.reduce_mean(fused), global_step=v1.Variable(0),
                                                 var_list=theta_g)
        sess.run(v1.global_variables_initializer())
        for var in v1.global_variables():
            name = var.op.name
            if name.endswith(("gamma", "moving_variance")):
                sess.run(var.assign(1.0 + 0.3 * v1.random_uniform(var.shape)))
            elif name.endswith(("beta", "moving_mean", "bias")):
                sess.run(var.assign(0.1 * v1.random_normal(var.shape)))
        prefix = v1.train.Saver().save(sess, os.path.join(work_dir, "model.ckpt"))
        out.update(sess.run(fetch, {V: vis, I: ir}))
    np.savez(os.path.join(work_dir, "official.npz"), **out)
    print("official graph saved", prefix)


def compare(work_dir):
    """Our networks with the checkpoint's weights on the same inputs -> {name: max |diff|}."""
    from ddcgan_tf import official
    from ddcgan_tf.discriminator import Discriminator

    ref = np.load(os.path.join(work_dir, "official.npz"))
    prefix = os.path.join(work_dir, "model.ckpt")
    gen = official.load_generator(prefix)
    diffs = {f"generator (scale {gen.scale}, BN batch)": np.abs(gen((ref["vis"], ref["ir"])).numpy() - ref["fused"]).max()}
    values = official.read(prefix)
    for name, x in (("dv", ref["vis"]), ("di", ref["ir"])):
        if name in ref:
            d = Discriminator(x.shape[1])
            d.build()
            official._assign(official.discriminator_variables(d, official.DISCRIMINATOR_SCOPES[name]),
                             values, prefix, "discriminator")
            diffs[name] = np.abs(d(x, training=True).numpy() - ref[name]).max()
    return diffs, ref


def main(argv):
    del argv
    if FLAGS.phase == "tf1":
        run_official(os.path.abspath(FLAGS.official_dir), os.path.abspath(FLAGS.discriminator_dir),
                     FLAGS.work_dir, FLAGS.batch, FLAGS.size)
        return
    if not FLAGS.official_dir or not os.path.isfile(os.path.join(FLAGS.official_dir, "Generator.py")):
        raise SystemExit(f"{FLAGS.official_dir}: no Generator.py (give the official code's folder)")
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="official_parity_")
    os.makedirs(work_dir, exist_ok=True)
    child = [sys.executable, os.path.abspath(__file__), "--phase", "tf1", "--official_dir", FLAGS.official_dir,
             "--discriminator_dir", FLAGS.discriminator_dir or FLAGS.official_dir, "--work_dir", work_dir, "--batch", str(FLAGS.batch), "--size", str(FLAGS.size)]
    r = subprocess.run(child, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the official graph failed (is tf_keras installed?):\n{r.stderr[-3000:]}")
    diffs, ref = compare(work_dir)
    print(f"inputs: visible {ref['vis'].shape}, infrared {ref['ir'].shape}; checkpoint {work_dir}/model.ckpt")
    for name, d in diffs.items():
        print(f"  {name}: max |ours - official| = {d:.3g}")
    if FLAGS.names:
        import tensorflow as tf

        shapes = tf.train.load_checkpoint(os.path.join(work_dir, "model.ckpt")).get_variable_to_shape_map()
        with open(FLAGS.names, "w") as f:
            f.write("[\n" + ",\n".join(json.dumps([k, list(v)]) for k, v in sorted(shapes.items())) + "\n]\n")
        print(f"wrote {len(shapes)} variable names to {FLAGS.names}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app.run(main)
