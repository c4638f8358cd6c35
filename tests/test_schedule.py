"""The adaptive schedule of DDcGAN.train_step (paper Algorithm 1 / official train.py).

One compiled model is shared: the thresholds are variables (`set_schedule`), so every scenario
runs through the same traced graph, as `fit` would run it. The repeats are tested with every net
stepping on every batch (`alternate_batches=False`); the official alternation has its own test.
"""
import numpy as np
import pytest
import tensorflow as tf

from ddcgan_tf import config as C
from ddcgan_tf.ddcgan import DDcGAN
from ddcgan_tf.optimizers import TF1RMSprop

P = 32


def batch(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.random((n, P, P, 1), np.float32)),
            tf.constant(rng.random((n, P // 4, P // 4, 1), np.float32)))


class Compiled:
    def __init__(self, preset, steps_per_epoch=100, **overrides):
        tf.keras.utils.set_random_seed(0)
        self.model = DDcGAN(patch_size=P)
        self.model.compile(train_config=C.get_preset(preset, 4, **overrides), steps_per_epoch=steps_per_epoch)
        self.fn = tf.function(self.model.train_step)

    def step(self, data=None, **schedule):
        self.model.set_schedule(**schedule)
        return {k: float(v) for k, v in self.fn(data or batch()).items()}


@pytest.fixture(scope="module")
def official():
    return Compiled("official", alternate_batches=False)


def test_the_official_alternation_trains_d_on_even_batches_and_g_on_odd_ones():
    """official train.py: `if batch % 2 == 0` (batch: the index in the epoch) Dv and Di step
    and repeat, else G steps and repeats; the other nets keep their weights."""
    alt = Compiled("official", steps_per_epoch=3)
    m = alt.model
    assert m.train_config.alternate_batches and not C.get_preset("paper").alternate_batches
    calm = dict(l_max=1e9, l_min=-1.0, g_max=1e9, max_repeats=20)
    seen = []
    for _ in range(5):  # epoch indices 0 1 2, then 0 1: two D batches in a row at the boundary
        g = [v.numpy() for v in m.generator.trainable_variables]
        d = [v.numpy() for v in m.dv.trainable_variables + m.di.trainable_variables]
        opt_steps = int(m.optimizer_steps.numpy())
        out = alt.step(**calm)
        seen.append((out["dv_steps"], out["di_steps"], out["g_steps"], int(m.optimizer_steps.numpy()) - opt_steps))
        g_moved = any(not np.array_equal(a, b.numpy()) for a, b in zip(g, m.generator.trainable_variables))
        d_moved = any(not np.array_equal(a, b.numpy())
                      for a, b in zip(d, m.dv.trainable_variables + m.di.trainable_variables))
        assert (g_moved, d_moved) == (out["g_steps"] > 0, out["dv_steps"] > 0)
    assert seen == [(1, 1, 0, 2), (0, 0, 1, 1), (1, 1, 0, 2), (1, 1, 0, 2), (0, 0, 1, 1)]
    # each phase repeats as in the paper's Algorithm 1: D while losing, G while a D wins
    out = alt.step(l_max=-1.0, l_min=1e9, g_max=1e9, max_repeats=4)  # index 2: a D batch
    assert (out["dv_steps"], out["di_steps"], out["g_steps"]) == (4, 4, 0)
    out = alt.step(l_max=-1.0, l_min=1e9, g_max=1e9, max_repeats=4)  # index 0: D
    out = alt.step(l_max=-1.0, l_min=1e9, g_max=1e9, max_repeats=4)  # index 1: G
    assert (out["dv_steps"], out["di_steps"], out["g_steps"]) == (0, 0, 4)


def test_d_step_repeats_up_to_i_max_while_losing(official):
    out = official.step(l_max=-1.0, l_min=-1.0, g_max=1e9, max_repeats=4)  # D always "losing"
    assert out["dv_steps"] == 4 and out["di_steps"] == 4 and out["g_steps"] == 1


def test_d_step_repeats_until_its_loss_is_at_most_l_max(official):
    total = 0
    for seed in range(3):
        out = official.step(batch(seed), l_max=1.3, l_min=-1.0, g_max=1e9, max_repeats=20)
        total += out["dv_steps"]
        # the loop's postcondition: stopped at I_max, or the recomputed loss is within bound
        assert out["dv_steps"] == 20 or out["dv_loss"] <= 1.3
        assert out["di_steps"] == 20 or out["di_loss"] <= 1.3
    assert total > 3  # it did repeat


def test_each_d_repeat_recomputes_the_loss_its_loop_tests():
    """Phase 2 tests the loss *after* each step (official train.py runs `sess.run(D1_loss)` again
    inside its while loop): with L_max below both discriminators' losses before the batch but
    above what a few steps reach, the loop stops early, and the loss it reports (the one it
    tested) is the loss of the weights it stopped with, recomputed here from outside. A loop
    that kept its first loss would run to I_max. A D batch of the alternation (G fixed); SGD at 0.02 so that a few steps
    move the losses far (measured: Dv 2.36 -> 0.01, Di 2.71 -> 1.40 in three steps)."""
    data = batch(0)

    def losses_now(m):
        fused, fused_lr = m._fakes(*data)
        return float(m._dv_loss(data[0], fused, fused_lr)), float(m._di_loss(data[1], fused, fused_lr))

    m = Compiled("official", learning_rate=0.02)
    l_max = 1.8
    assert min(losses_now(m.model)) > l_max
    out = m.step(data, l_max=l_max, l_min=-1.0, g_max=1e9, max_repeats=20)
    assert out["g_steps"] == 0 and 1 <= out["dv_steps"] <= 3 and 1 <= out["di_steps"] <= 3
    assert max(out["dv_steps"], out["di_steps"]) >= 2  # a repeat happened
    recomputed = losses_now(m.model)
    for k, name in enumerate(("dv", "di")):
        assert out[f"{name}_loss"] <= l_max
        assert out[f"{name}_loss"] == pytest.approx(recomputed[k], rel=1e-5)


def test_no_repeats_when_every_net_is_in_its_band(official):
    m = official.model
    before = int(m.optimizer_steps.numpy()), int(m.batch_count.numpy())
    out = official.step(l_max=1e9, l_min=-1.0, g_max=1e9, max_repeats=20)
    assert (out["dv_steps"], out["di_steps"], out["g_steps"]) == (1, 1, 1)
    # official LR counting: every optimizer step advances the decay counter
    assert int(m.optimizer_steps.numpy()) - before[0] == 3
    assert int(m.batch_count.numpy()) - before[1] == 1


def test_g_repeats_while_a_discriminator_wins_or_l_g_is_too_large(official):
    out = official.step(l_max=1e9, l_min=1e9, g_max=1e9, max_repeats=5)
    assert out["g_steps"] == 5
    out = official.step(l_max=1e9, l_min=-1.0, g_max=0.0, max_repeats=6)
    assert out["g_steps"] == 6
    m = official.model
    before = int(m.optimizer_steps.numpy())
    out = official.step(l_max=1e9, l_min=-1.0, g_max=0.0, max_repeats=3)
    assert int(m.optimizer_steps.numpy()) - before == 2 + out["g_steps"]


def test_learning_rate_decays_with_every_optimizer_step(official):
    m = official.model
    out = official.step(l_max=1e9, l_min=-1.0, g_max=1e9, max_repeats=20)
    n = int(m.optimizer_steps.numpy())
    assert out["lr"] == pytest.approx(2e-4 * 0.9 ** (n / 100), rel=1e-5)
    # each optimizer took the rate of the counter at its own step: Dv, Di, then G
    for opt, k in ((m.dv_optimizer, 3), (m.di_optimizer, 2), (m.g_optimizer, 1)):
        assert float(opt.learning_rate) == pytest.approx(2e-4 * 0.9 ** ((n - k) / 100), rel=1e-5), k


def test_weights_are_clipped_after_every_update(official):
    """official train.py: every variable into [-8, 8] after each update, from both sides."""
    m = official.model
    kernels = (m.generator.decoder_convs[0].conv.kernel, m.dv.convs[1].conv.kernel)  # each before a BN
    for kernel in kernels:
        k = kernel.numpy().ravel()
        k[:2] = 50.0, -50.0  # one entry past each bound
        kernel.assign(k.reshape(kernel.shape))
    official.step(l_max=1e9, l_min=-1.0, g_max=1e9, max_repeats=20)
    for kernel in kernels:
        k = kernel.numpy()
        assert np.isfinite(k).all() and k.max() == pytest.approx(8.0) and k.min() == pytest.approx(-8.0), kernel.path


def _set_discriminator(net, bias):
    """Every weight 0: the output is tanh(bias)/2 + 0.5 whatever the input (0.5 gives equal and
    opposite real/fake gradients, so no step moves it; bias 3 gives 0.9975, which SGD at 2e-4
    moves by little)."""
    for v in net.trainable_variables:
        v.assign(tf.zeros_like(v))
    net.dense.bias.assign(tf.fill(net.dense.bias.shape, float(bias)))


def test_adversarial_g_steps_repeat_while_either_discriminator_wins():
    """Phase 3 (official train.py: `while L_D1 < L_min or L_D2 < L_min`): Dv at 0.5 everywhere
    has loss 2 ln 2 = 1.39, a Di at 0.9975 everywhere about 6. With L_min = 5 only one of them
    wins, and G repeats to I_max, with either one winning."""
    m = Compiled("official", alternate_batches=False)
    for winner, loser in ((m.model.dv, m.model.di), (m.model.di, m.model.dv)):
        _set_discriminator(winner, 0.0)
        _set_discriminator(loser, 3.0)
        out = m.step(l_max=1e9, l_min=5.0, g_max=1e9, max_repeats=3)
        assert out[f"{winner.name}_loss"] == pytest.approx(2 * np.log(2), rel=1e-3)
        assert out[f"{loser.name}_loss"] > 5.5
        assert out["g_steps"] == 3, winner.name
    out = m.step(l_max=1e9, l_min=1.0, g_max=1e9, max_repeats=3)  # neither wins
    assert out["g_steps"] == 1


def test_each_discriminator_repeats_on_its_own_loss():
    """Phase 2: Dv and Di each repeat while their own loss is above L_max. A Dv at 0.5 (loss
    1.39) stays put with L_max = 3 while a Di at 0.9975 (loss about 6) repeats to I_max, and the
    reverse."""
    m = Compiled("official", alternate_batches=False)
    for calm, losing in ((m.model.dv, m.model.di), (m.model.di, m.model.dv)):
        _set_discriminator(calm, 0.0)
        _set_discriminator(losing, 3.0)
        out = m.step(l_max=3.0, l_min=-1.0, g_max=1e9, max_repeats=4)
        assert (out[f"{calm.name}_steps"], out[f"{losing.name}_steps"]) == (1, 4), calm.name
        assert out[f"{losing.name}_loss"] > 3.0 > out[f"{calm.name}_loss"]


def test_full_g_steps_repeat_on_the_whole_generator_loss(official):
    """Phase 4 (`while L_G > L_Gmax`) compares L_G = adversarial + content, not the adversarial
    part alone: with L_Gmax between the two, G repeats to I_max (L_G is in the hundreds here and
    a few steps cannot halve it)."""
    calm = official.step(l_max=1e9, l_min=-1.0, g_max=1e9, max_repeats=20)
    assert calm["g_adv"] < 20.0 < calm["g_loss"] / 2
    out = official.step(l_max=1e9, l_min=-1.0, g_max=20.0, max_repeats=4)
    assert out["g_steps"] == 4 and out["g_loss"] > 20.0


def test_relative_g_max_of_the_paper_preset():
    paper = Compiled("paper")
    assert paper.model.train_config.clip_value is None
    out = paper.step(l_max=1e9, l_min=-1.0, g_max=0.0, max_repeats=7)  # 0 * L_G: always above
    assert out["g_steps"] == 7
    out = paper.step(l_max=1e9, l_min=-1.0, g_max=1e6, max_repeats=7)  # 1e6 * L_G: never above
    assert out["g_steps"] == 1
    # 2 * L_G (of the batch's first step): never above either, though L_G itself is far above 2,
    # so an absolute L_Gmax of 2 would repeat to I_max
    out = paper.step(l_max=1e9, l_min=-1.0, g_max=2.0, max_repeats=7)
    assert out["g_steps"] == 1 and out["g_loss"] > 2 * 2.0
    # paper counting: the decay counts batches, not optimizer steps
    b = int(paper.model.batch_count.numpy())
    assert out["lr"] == pytest.approx(2e-3 * 0.75 ** (b / 100), rel=1e-5)


def test_tf1_rmsprop_starts_its_accumulator_at_one():
    v = tf.Variable([1.0, -2.0])
    opt = TF1RMSprop(learning_rate=0.1)
    opt.build([v])
    g = tf.constant([0.5, 2.0])
    opt.apply_gradients([(g, v)])
    ms = 0.9 * 1.0 + 0.1 * g.numpy() ** 2
    expected = np.array([1.0, -2.0]) - 0.1 * g.numpy() / np.sqrt(ms + 1e-10)
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6)


def test_rmsprop_epsilon_is_tf1s_under_the_square_root():
    """tf.train.RMSPropOptimizer(epsilon=1e-10): lr * g / sqrt(ms + 1e-10). With a tiny gradient
    and no accumulator start, epsilon decides the step (1e-7, Keras's default, gives 30x less)."""
    v = tf.Variable([0.0])
    opt = TF1RMSprop(learning_rate=0.1, initial_accumulator_value=0.0)
    opt.build([v])
    g = 1e-6
    opt.apply_gradients([(tf.constant([g]), v)])
    np.testing.assert_allclose(v.numpy(), [-0.1 * g / np.sqrt(0.1 * g * g + 1e-10)], rtol=1e-4)


def test_the_presets_accumulator_start_reaches_both_g_optimizers():
    """TrainConfig.rmsprop_initial_accumulator (TF1: 1, Keras: 0) is what compile() gives each
    RMSProp optimizer."""
    for start in (0.0, 1.0):
        m = Compiled("official", rmsprop_initial_accumulator=start).model
        for opt in (m.g_optimizer, m.g_adv_optimizer):
            assert opt.initial_accumulator_value == start
            assert all(np.all(v.numpy() == start) for v in opt._velocities)


def test_the_adversarial_and_full_g_steps_use_separate_rmsprop_slots(official):
    m = official.model
    official.step(l_max=1e9, l_min=1e9, g_max=1e9, max_repeats=2)
    g_slots = [v.numpy() for v in m.g_optimizer.variables[2:]]
    adv_slots = [v.numpy() for v in m.g_adv_optimizer.variables[2:]]
    assert any(not np.array_equal(a, b) for a, b in zip(g_slots, adv_slots))


def test_an_adversarial_g_repeat_steps_on_the_adversarial_loss_alone(official):
    """Phase 3 (official `G_GAN_solver`): an adversarial repeat takes the gradient of L_adv, not
    of L_G (whose content terms are in the hundreds here). From one state, a batch without
    repeats leaves the weights the repeat starts from; the same batch with one adversarial
    repeat, its RMSProp accumulator set to 0, leaves (1 - rho) * g**2 there, g the gradient of
    L_adv at those weights."""
    m = official.model
    state = m.variables + [v for opt in m.optimizers.values() for v in opt.variables]
    start = [v.numpy() for v in state]
    data = batch(4)
    official.step(data, l_max=1e9, l_min=1e9, g_max=1e9, max_repeats=1)  # Dv, Di, G once each
    with tf.GradientTape() as tape:
        adv = m._g_losses(*data)["g_adv"]
    grads = tape.gradient(adv, m.generator.trainable_variables)
    for v, value in zip(state, start):
        v.assign(value)
    opt = m.g_adv_optimizer
    for v in opt._velocities:
        v.assign(tf.zeros_like(v))
    out = official.step(data, l_max=1e9, l_min=1e9, g_max=1e9, max_repeats=2)
    assert out["g_steps"] == 2
    got = np.concatenate([v.numpy().ravel() for v in opt._velocities])
    want = (1.0 - opt.rho) * np.concatenate([g.numpy().ravel() for g in grads]) ** 2
    assert np.linalg.norm(got - want) <= 0.01 * np.linalg.norm(want), np.linalg.norm(got) / np.linalg.norm(want)


def test_xla_compiles_the_pieces_and_trains_as_the_graph_does():
    """compile(jit_compile=True): every loop body is an XLA computation of its own (a G step
    inside one XLA while loop took 154 s instead of 3 s on the CPU, see DDcGAN._compiled), and
    a batch with each kind of repeat, from the same state, gives what the plain graph gives to
    the rounding of XLA's kernels: the same steps, losses within 1 % (D's 5 %), weight updates within
    15 % of their norm (measured over two batches: 5.7 % for G, 3.4 % Dv, 0.2 % Di, as much as
    with the whole step compiled; RMSProp's first steps follow the gradients' signs, so
    rounding flips the steps of near-zero gradients). A repeat that skips its update fails."""
    models = []
    for jit in (False, True):
        tf.keras.utils.set_random_seed(0)
        m = DDcGAN(patch_size=P)
        m.compile(train_config=C.get_preset("official", 4, alternate_batches=False), steps_per_epoch=100,
                  jit_compile=jit)
        models.append((m, tf.function(m.train_step)))
    (plain, plain_fn), (xla, xla_fn) = models
    assert not xla.jit_compile  # Keras does not compile the whole step

    def state(m):
        return m.variables + [v for opt in m.optimizers.values() for v in opt.variables]

    for seed, schedule, steps in ((5, dict(l_max=-1.0, l_min=1e9, g_max=0.0), (3, 3)),  # D, adversarial G
                                  (6, dict(l_max=1e9, l_min=-1.0, g_max=0.0), (1, 3)),  # full-loss G
                                  (7, dict(l_max=1e9, l_min=-1.0, g_max=1e9), (1, 1))):  # none
        start = [v.numpy() for v in state(plain)]
        for v, value in zip(state(xla), start):
            v.assign(value)
        outs = []
        for m, fn in models:
            m.set_schedule(max_repeats=3, **schedule)
            outs.append({k: float(v) for k, v in fn(batch(seed)).items()})
        a, b = outs
        assert (a["dv_steps"], a["g_steps"]) == steps
        assert (a["dv_steps"], a["di_steps"], a["g_steps"]) == (b["dv_steps"], b["di_steps"], b["g_steps"])
        # The D losses are reported for G's output after its last step, which rounding moves
        # most: on an AMD EPYC with AVX512-BF16, where TensorFlow turns oneDNN on by default,
        # dv_loss after three full G steps differs by 2.5 % (G's update by 4.9 %; every other
        # loss within 0.2 %); with oneDNN off all four are within 1 %.
        for k, tol in (("g_loss", 0.01), ("g_adv", 0.01), ("dv_loss", 0.05), ("di_loss", 0.05)):
            assert abs(a[k] - b[k]) <= tol * abs(a[k]), (seed, k, a[k], b[k])
        before = dict(zip([v.path for v in state(plain)], start))
        for net in ("generator", "dv", "di"):
            pairs = [(p, x) for p, x in zip(plain.trainable_variables, xla.trainable_variables)
                     if p.path.startswith(f"ddcgan/{net}/")]
            d_plain = np.concatenate([(p.numpy() - before[p.path]).ravel() for p, _ in pairs])
            d_xla = np.concatenate([(x.numpy() - before[p.path]).ravel() for p, x in pairs])
            ratio = np.linalg.norm(d_xla - d_plain) / np.linalg.norm(d_plain)
            assert ratio < 0.15, (seed, net, ratio)
    assert sorted(xla._jit_pieces) == ["first", "repeat_di", "repeat_dv", "repeat_g_adv", "repeat_g_loss"]
    assert not plain._jit_pieces
