"""Constants and the two training presets: `official` (the TF1 code) and `paper` (Algorithm 1).

Where the paper (Ma et al., TIP 2020, Sec. III-C/IV) and the official TF1 code
(github.com/hanna-xu/DDcGAN, `train.py`) disagree, both are reproducible; `official` is the
default because it is what produced the published fused images (see WORKSPACE.md).
"""
import dataclasses
import json

PATCH_SIZE = 84          # visible patch side (official `patch_size = 84`)
SCALE = 4                # visible / infrared resolution ratio (official `rc = 4`)
STRIDE = 14              # patch-cutting stride of `ddcgan-prepare`
BATCH_SIZE = 24          # official multi-resolution `BATCH_SIZE = 24`
EPS = 1e-8               # official `eps` inside every log()
G_INIT_STDDEV = 0.05     # Generator.py WEIGHT_INIT_STDDEV
D_INIT_STDDEV = 0.1      # Discriminator.py / Deconv.py WEIGHT_INIT_STDDEV
BN_MOMENTUM = 0.99       # tf.layers.batch_normalization defaults
BN_EPSILON = 1e-3
RMSPROP_RHO = 0.9        # tf.train.RMSPropOptimizer defaults
RMSPROP_EPSILON = 1e-10
ENCODER_FILTERS = 48     # conv1_1 and each of the 4 dense-block convs
DECODER_FILTERS = (240, 128, 64, 32, 1)
DISCRIMINATOR_FILTERS = (16, 32, 64)
# official train.py `grad`: 8-neighbour Laplacian-like kernel, applied with SAME (zero) padding.
GRADIENT_KERNEL = ((1 / 8, 1 / 8, 1 / 8), (1 / 8, -1.0, 1 / 8), (1 / 8, 1 / 8, 1 / 8))

# TNO validation scenes (file stems). The shipped vis-ir weights (since 2026-11-27) never saw
# TNO_HELD_OUT_8: every 4th of the 32 TNO pairs whose sizes match (Bosnia and Movie_24 do not),
# in sorted order, from the 4th; chosen by that rule alone. TNO_HELD_OUT is what the earlier
# shipped weights (trained on the other 31 pairs) were validated on.
TNO_HELD_OUT = ("soldier_behind_smoke_3", "Marne_24", "wall")
TNO_HELD_OUT_8 = ("APC_2_view_1", "APC_3_view_2", "Farm", "Marne_24", "Veluwe", "houses_with_3_men",
                  "soldier_behind_smoke", "wall")
TNO_SPLITS = {"held_out": TNO_HELD_OUT, "held_out_8": TNO_HELD_OUT_8}  # --names of the benchmarks
# Near-copies among the 34 TNO pairs (patches.near_copies over every pair, 2026-11-27): held-out
# houses_with_3_men and Movie_14 are one frame (identical infrared, visible correlation 0.997, a
# tone curve apart); the next most alike pair correlates at 0.59. A split's training set leaves
# out the copies of its scenes too (tno_training_exclude); ddcgan-prepare refuses to keep one.
TNO_NEAR_COPIES = {"houses_with_3_men": ("Movie_14",)}
# Two pairs correlate at or above this in both images (same sizes) -> near-copies (patches.py)
NEAR_COPY_CORRELATION = 0.95


def tno_training_exclude(split):
    """The stems a training set for TNO_SPLITS[split] leaves out: its scenes and their near-copies."""
    held = TNO_SPLITS[split]
    return tuple(held) + tuple(c for h in held for c in TNO_NEAR_COPIES.get(h, ()))


@dataclasses.dataclass
class TrainConfig:
    """Every number of the alternating schedule; presets below, every field overridable.

    G loss = adv + content_weight * (ir_weight * ||psi(G) - i||_F^2 + grad_weight * ||grad G - grad v||_1)
    (paper Eq. 6-8 with lambda = content_weight, eta = grad_weight).
    """
    preset: str = "official"
    learning_rate: float = 2e-4
    lr_decay_rate: float = 0.9           # per epoch (exponential, not staircase)
    decay_counts: str = "optimizer_steps"  # "optimizer_steps" (official global_step) or "batches"
    content_weight: float = 0.8          # lambda
    grad_weight: float = 1.2             # eta
    ir_weight: float = 1.0               # 1/16 in the official same-resolution code
    l_max: float = 1.9                   # repeat a D step while its loss > l_max
    l_min: float = 1.0                   # repeat an adversarial G step while a D loss < l_min
    g_max: float = 200.0                 # repeat a full G step while L_G > g_max ...
    g_max_relative: bool = False         # ... or while L_G > g_max * (L_G after the first G step)
    max_repeats: int = 20                # I_max: at most this many steps per net per batch
    clip_value: float | None = 8.0       # clip every trainable weight to [-c, c] after each update
    rmsprop_initial_accumulator: float = 1.0  # TF1 RMSProp starts its mean square at 1, Keras at 0
    update_bn_statistics: bool = True    # official never ran BN's moving-average updates
    # official: Dv and Di train on the even batches of each epoch, G on the odd ones (`if batch %
    # 2 == 0`); False: all three on every batch. The default is False because runs recorded
    # before this field existed trained that way; both presets set it.
    alternate_batches: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_PRESETS = {
    # hanna-xu/DDcGAN train.py with rc = 4 (the stored copy: "PET-MRI image fusion/train.py" at
    # a778c74): LEARNING_RATE 2e-4, DECAY_RATE 0.9, G_loss = G_loss_GAN + 0.8 * (LOSS_IR + 1.2 *
    # LOSS_VIS), d > 1.9, d < 1.0, g > 200, clip 8; D on even batches, G on odd ones.
    ("official", 4): dict(alternate_batches=True),
    # same-resolution train.py (cac62eb): G_loss_GAN + 0.6 * (LOSS_IR / 16 + 1.2 * LOSS_VIS),
    # d > 1.7, d < 1.4, g > 200; the same alternation.
    ("official", 1): dict(content_weight=0.6, ir_weight=1.0 / 16, l_max=1.7, l_min=1.4,
                          alternate_batches=True),
    # Paper Sec. IV-A / Algorithm 1: lr 2e-3 decayed by 0.75 per epoch, lambda 0.5, eta 1.2,
    # L_max 1.8, L_min 1.2, L_Gmax = 0.8 L_G, I_max 20; no clipping is mentioned; every net
    # trains on every batch.
    ("paper", 4): dict(learning_rate=2e-3, lr_decay_rate=0.75, decay_counts="batches",
                       content_weight=0.5, grad_weight=1.2, l_max=1.8, l_min=1.2,
                       g_max=0.8, g_max_relative=True, clip_value=None, alternate_batches=False),
}
_PRESETS[("paper", 1)] = _PRESETS[("paper", 4)]
PRESETS = ("official", "paper")


def get_preset(name="official", scale=SCALE, **overrides):
    """TrainConfig for a preset name and scale factor, with field overrides."""
    if (name, scale) not in _PRESETS:
        raise ValueError(f"unknown preset {name!r} for scale {scale} (known: {', '.join(PRESETS)}; scale 1 or 4)")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
    values = dict(_PRESETS[(name, scale)], preset=name)
    values.update(overrides)
    config = TrainConfig(**values)
    if config.decay_counts not in ("optimizer_steps", "batches"):
        raise ValueError(f"decay_counts must be 'optimizer_steps' or 'batches', got {config.decay_counts!r}")
    # values no run can mean: a negative clip bound sets every weight to +c, and the run would
    # stop as if it had diverged
    for name in ("learning_rate", "lr_decay_rate", "clip_value"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if not config.rmsprop_initial_accumulator >= 0:  # 0: Keras's start
        raise ValueError(f"rmsprop_initial_accumulator must be >= 0, got {config.rmsprop_initial_accumulator!r}")
    if config.max_repeats < 1:
        raise ValueError(f"max_repeats must be at least 1, got {config.max_repeats!r}")
    return config
