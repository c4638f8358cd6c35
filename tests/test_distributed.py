"""MirroredStrategy over two logical CPU devices gives the single-device update.

Runs in a subprocess: logical devices must be configured before TensorFlow starts.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

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
                                                g_max=float(sys.argv[2]), max_repeats=2,
                                                alternate_batches=False),  # every loop in one batch
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
    # float32 summation order and the all-reduces differ, and the rounding depends on the CPU's
    # kernels; compared with each variable's scale after 6 optimizer steps. Measured: 0.3 % with
    # oneDNN off, 2.0 % with it on (an Intel Xeon; under 2 % on an AMD EPYC), the worst being a
    # zero-initialised BN beta; gradients twice too large (loss not divided by the replicas): 87 %
    assert worst < 0.1, worst


WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    data, model_dir, ports, index = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    strategy = "default"
    if index >= 0:
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": ["localhost:" + p for p in ports.split(",")]},
            "task": {"type": "worker", "index": index}})
        strategy = "multiworker"
    else:  # the replicas pool BN statistics with the two-pass moments; so does the reference
        from ddcgan_tf import layers  # (the fused kernel's equality is tested in test_models)
        layers.FUSED = False
    from ddcgan_tf.train import train
    model = train(data, model_dir, steps=3, batch_size=8, seed=0, tensorboard=False, verbose=0,
                  checkpoint_every=3, strategy=strategy,
                  overrides=dict(l_max=-1.0, g_max=0.0, max_repeats=2))
    print("REPLICAS", model.distribute_strategy.num_replicas_in_sync)
""")


def test_multiworker_needs_a_seed_every_worker_shares(small_patch_set, tmp_path):
    """Each worker cuts the global batches from the data stream itself; with seeds of their own
    they would train on batches that are not one epoch's partition."""
    import pytest

    from ddcgan_tf.errors import InputError
    from ddcgan_tf.train import train

    with pytest.raises(InputError, match="--seed: is needed with --strategy multiworker"):
        train(small_patch_set, str(tmp_path / "run"), steps=1, batch_size=8, strategy="multiworker")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [str(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ",".join(ports)


def _wait_for_all(procs, timeout):
    """Waits until every process has exited, or one has failed (its peers would wait for it in
    the collective ops forever), or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if None not in codes or any(c not in (None, 0) for c in codes):
            return
        time.sleep(0.2)


def test_multiworker_training_equals_single_device(small_patch_set, tmp_path):
    """Two worker processes (MultiWorkerMirroredStrategy over TF_CONFIG on localhost) train the
    same global batches as one process: same schedule decisions, the same weights within
    float32 all-reduce noise, and only the chief (worker 0) writes checkpoints and logs."""
    from ddcgan_tf.checkpoint import latest_checkpoint, load_generator

    env = dict(os.environ, PYTHONPATH=REPO)
    ports = _free_ports(2)
    dirs = [str(tmp_path / name) for name in ("w0", "w1", "single")]
    logs = [open(tmp_path / f"w{k}.log", "w+") for k in range(2)]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, small_patch_set, dirs[k], ports, str(k)],
                                stdout=logs[k], stderr=subprocess.STDOUT, text=True, env=env)
               for k in range(2)]
    try:
        single = subprocess.run([sys.executable, "-c", WORKER, small_patch_set, dirs[2], ports, "-1"],
                                capture_output=True, text=True, env=env, timeout=900)
        _wait_for_all(workers, timeout=900)
    finally:
        for w in workers:  # a worker left waiting for a failed peer would never exit
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, log in zip(workers, logs):
        log.seek(0)
        out = log.read()
        log.close()
        assert w.returncode == 0, out[-3000:]
        assert "REPLICAS 2" in out
    assert single.returncode == 0, single.stderr[-3000:]

    assert latest_checkpoint(dirs[0]) and not latest_checkpoint(dirs[1])
    assert not os.path.exists(os.path.join(dirs[1], "steps.jsonl"))
    logs = [[json.loads(x) for x in open(os.path.join(d, "steps.jsonl"))] for d in (dirs[0], dirs[2])]
    assert [r["step"] for r in logs[0]] == [1, 2, 3]
    # the official alternation, decided in the cross-replica graph: D, G, D
    for a, b, want in zip(*logs, ([2, 2, 0], [0, 0, 2], [2, 2, 0])):
        assert [a[k] for k in ("dv_steps", "di_steps", "g_steps")] == \
               [b[k] for k in ("dv_steps", "di_steps", "g_steps")] == want
        # float32 all-reduce order and per-worker batch sizes (oneDNN picks other kernels) differ.
        # The discriminator losses are the sensitive ones: one process with oneDNN on vs off gives
        # g_loss within 0.3 % but dv_loss 2.9 % apart by batch 2 (Intel Xeon); multiworker vs one
        # process: 1.4 %. Gradients twice too large (loss not divided by the replicas): g_loss 19 %
        for k, tol in (("g_loss", 1e-2), ("dv_loss", 5e-2), ("di_loss", 5e-2)):
            assert abs(a[k] - b[k]) <= tol * max(1.0, abs(b[k])), (a["step"], k, a[k], b[k])
    g_multi, g_single = load_generator(dirs[0]), load_generator(dirs[2])
    # 2 % of each variable's scale, with the initial weights' scale (0.05) as the floor for
    # variables that start at zero (biases, BN beta): 18 optimizer steps of float32 noise
    worst = max(float(np.max(np.abs(a.numpy() - b.numpy())) / max(0.05, np.max(np.abs(b.numpy()))))
                for a, b in zip(g_multi.weights, g_single.weights))
    assert worst < 2e-2, worst


def test_multiworker_run_stopped_by_a_signal_stops_every_worker_after_one_batch(small_patch_set, tmp_path):
    """SIGTERM to one worker only (a scheduler preempting one machine): every worker finishes the
    same batch and stops (a worker stopping alone would leave its peers waiting in the
    collectives), the chief saves that batch's full state, each worker says why it stopped and
    exits 143, and the same commands resume from that batch."""
    import signal

    from ddcgan_tf.checkpoint import latest_checkpoint, list_checkpoints

    env = dict(os.environ, PYTHONPATH=REPO)
    dirs = [str(tmp_path / name) for name in ("w0", "w1")]

    def start(steps, ports, verbose="0"):
        procs, logs = [], []
        for k in range(2):
            log = open(tmp_path / f"w{k}-{steps}.log", "w+")
            worker_env = dict(env, TF_CONFIG=json.dumps({
                "cluster": {"worker": ["localhost:" + p for p in ports.split(",")]},
                "task": {"type": "worker", "index": k}}))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ddcgan_tf.cli.train", "--data", small_patch_set, "--model_dir", dirs[k],
                 "--steps", str(steps), "--batch_size", "8", "--seed", "0", "--strategy", "multiworker",
                 "--checkpoint_every", "1000", "--verbose", verbose, "--notensorboard", "--max_repeats", "1"],
                stdout=log, stderr=subprocess.STDOUT, text=True, env=worker_env))
            logs.append(log)
        return procs, logs

    def finish(procs, logs, timeout):
        deadline = time.monotonic() + timeout
        try:  # every worker to its end (a stopped one exits 143 while the chief still saves)
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            for p in procs:  # a worker left waiting for a stopped peer would never exit
                if p.poll() is None:
                    p.kill()
                    p.wait()
        outs = []
        for log in logs:
            log.seek(0)
            outs.append(log.read())
            log.close()
        return [p.returncode for p in procs], outs

    step_log = os.path.join(dirs[0], "steps.jsonl")
    procs, logs = start(200, _free_ports(2))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(step_log) and len(open(step_log).read().splitlines()) >= 2:
            break
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    codes, outs = finish(procs, logs, timeout=300)
    assert codes == [143, 143], (codes, outs[0][-2000:], outs[1][-2000:])
    stopped = [int(x.split("after batch ")[1].split(";")[0].split(":")[0]) for x in outs]
    assert stopped[0] == stopped[1] >= 2, outs
    batch = stopped[0]
    assert "stopped by SIGTERM after batch" in outs[1] and "writes no checkpoints" in outs[1]
    assert f"another worker was stopped by a signal after batch {batch}" in outs[0], outs[0][-2000:]
    saved = latest_checkpoint(dirs[0])
    assert list_checkpoints(dirs[0])[-1][0] == batch and saved in outs[0]
    assert [json.loads(x)["step"] for x in open(step_log)] == list(range(1, batch + 1))
    assert not latest_checkpoint(dirs[1])

    # only the chief holds the checkpoint: the other worker takes its state from the chief
    codes, outs = finish(*start(batch + 1, _free_ports(2), verbose="2"), timeout=600)
    assert codes == [0, 0], (outs[0][-2000:], outs[1][-2000:])
    assert f"resumed from {saved}: {batch} of {batch + 1} batches done" in outs[0], outs[0][-2000:]
    assert f"resumed from the chief's checkpoint: {batch} of {batch + 1} batches done" in outs[1], outs[1][-2000:]
    assert [json.loads(x)["step"] for x in open(step_log)] == list(range(1, batch + 2))
    assert list_checkpoints(dirs[0])[-1][0] == batch + 1
