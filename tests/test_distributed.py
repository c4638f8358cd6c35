"""MirroredStrategy over two logical CPU devices gives the single-device update.

Runs in a subprocess: logical devices must be configured before TensorFlow starts.
"""
import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from ddcgan_tf import config as C
    from ddcgan_tf.ddcgan import DDcGAN

    def make(strategy=None):
        tf.keras.utils.set_random_seed(0)
        with (strategy.scope() if strategy else tf.distribute.get_strategy().scope()):
            m = DDcGAN(patch_size=24)
            m.compile(train_config=C.get_preset("official", l_max=float(sys.argv[1]), l_min=-1.0,
                                                g_max=float(sys.argv[2]), max_repeats=2),
                      steps_per_epoch=10)
        return m

    rng = np.random.default_rng(0)
    vis = rng.random((8, 24, 24, 1)).astype("float32")
    ir = rng.random((8, 6, 6, 1)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((vis, ir)).batch(8)

    single = make()
    start = [w.numpy() for w in single.weights]
    out1 = single.fit(ds, epochs=1, verbose=0, shuffle=False).history
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = make(strategy)
    dist.set_weights(start)
    out2 = dist.fit(ds, epochs=1, verbose=0, shuffle=False).history
    # difference relative to each variable's scale
    worst = max(float(np.max(np.abs(a.numpy() - b.numpy())) / (1e-3 + np.max(np.abs(a.numpy()))))
                for a, b in zip(single.weights, dist.weights))
    steps = [(out1[k][0], out2[k][0]) for k in ("dv_steps", "di_steps", "g_steps")]
    losses = [(out1[k][0], out2[k][0]) for k in ("g_loss", "dv_loss", "di_loss")]
    print("RESULT", worst, steps, losses)
""")


def run(l_max, g_max):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(l_max), str(g_max)], capture_output=True,
                       text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")][-1]
    return _parse(line)


def _parse(line):
    parts = line.split(" ", 2)
    worst = float(parts[1])
    steps, losses = eval(parts[2].replace("] [", "], ["))  # two printed lists
    return worst, steps, losses


def test_distributed_step_equals_single_device_step():
    # forced repeats (D always losing, G always too large) exercise every loop on both replicas
    worst, steps, losses = run(l_max=-1.0, g_max=0.0)
    assert all(a == b for a, b in steps), steps
    assert steps[0][0] == 2 and steps[2][0] == 2
    for a, b in losses:
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), losses
    # float32 summation order and the all-reduces differ; RMSProp normalises tiny gradient
    # differences, so compare with each variable's scale: within 2 % after 6 optimizer steps
    assert worst < 2e-2, worst
