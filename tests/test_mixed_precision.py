"""--mixed_precision: 16-bit convolutions, float32 variables, BN, losses and output; CPU works.

In a subprocess: the Keras dtype policy is global.
"""
import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras, numpy as np, tensorflow as tf
    from ddcgan_tf import config as C
    from ddcgan_tf.ddcgan import DDcGAN
    rng = np.random.default_rng(0)
    # small: float16 convolutions are slow on CPUs without native support (an Intel Xeon took
    # 120 s per step at 4 x 32x32, 16 s at 2 x 24x24; bfloat16 under 1 s)
    data = (rng.random((2, 24, 24, 1)).astype("float32"), rng.random((2, 6, 6, 1)).astype("float32"))
    for policy in ("mixed_bfloat16", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        for attempt in range(2):  # one retry: the rare non-finite 16-bit CPU step (WORKSPACE)
            m = DDcGAN(patch_size=24)
            m.compile(train_config=C.get_preset("official", max_repeats=2), steps_per_epoch=10)
            out = {k: float(v) for k, v in tf.function(m.train_step)(data).items()}
            if all(np.isfinite(list(out.values()))):
                break
            print("RETRY", policy, out)
        conv = m.generator.encoder_conv.conv
        fused = m.generator(data)
        # the output is computed in float32, not rounded to the 16-bit type and widened
        rounded = tf.cast(tf.cast(fused, conv.compute_dtype), tf.float32)
        finer = float(tf.reduce_mean(tf.cast(rounded != fused, tf.float32))) > 0.5
        print("RESULT", policy, all(np.isfinite(list(out.values()))), out["g_loss"],
              conv.compute_dtype, conv.kernel.dtype, m.generator.encoder_conv.bn.gamma.dtype,
              fused.dtype.name, finer, type(m.g_optimizer).__name__)
""")


def test_mixed_precision_trains_on_the_cpu():
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("RESULT")]
    assert [row[0] for row in rows] == ["mixed_bfloat16", "mixed_float16"]
    for policy, finite, g_loss, compute, kernel, gamma, fused, finer, optimizer in rows:
        assert finite == "True" and 0 < float(g_loss) < 1e4
        assert compute == policy.split("_")[1] and kernel == "float32" and gamma == "float32"
        assert fused == "float32" and finer == "True"
    assert rows[0][-1] == "TF1RMSprop" and rows[1][-1] == "LossScaleOptimizer"
