"""The weights shipped in the repository's `checkpoints/` folder: where they live, how they are made.

checkpoints/<mode>/ (mode: vis-ir or pet-mri) holds
  generator.h5     what fusing needs (generator weights + config; a few MB)
  train_state.h5   the full resumable training state (G, Dv, Di, optimizer slots, counters):
                   `ddcgan-train --model_dir DIR` resumes from it once copied into DIR
  manifest.json    preset and every hyper-parameter, data and patch count, steps, wall time,
                   machine, and the validation metrics
A wheel (`pip install .`, not -e) carries each mode's generator.h5 and manifest.json inside the
package, as ddcgan_tf/checkpoints/<mode>/, and fuses from there (CHECKPOINT_ROOT).
"""
import json
import os
import platform
import shutil

from ddcgan_tf.checkpoint import GENERATOR_FILE, STATE_FILE, load_generator, read_configs, save_generator
from ddcgan_tf.errors import InputError
from ddcgan_tf.images import atomic_write, write_text

MODES = ("vis-ir", "pet-mri")
MANIFEST_FILE = "manifest.json"


def _checkpoint_root():
    """$DDCGAN_CHECKPOINTS, else the repository's checkpoints/ (a clone or an editable install),
    else the copy a wheel carries inside the package (setup.py: generators and manifests only)."""
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.join(os.path.dirname(here), "checkpoints")
    if os.environ.get("DDCGAN_CHECKPOINTS"):
        return os.environ["DDCGAN_CHECKPOINTS"]
    return repo if any(os.path.isdir(os.path.join(repo, m)) for m in MODES) else os.path.join(here, "checkpoints")


CHECKPOINT_ROOT = _checkpoint_root()


def default_checkpoint(mode="vis-ir"):
    """Path of the shipped generator for a mode; InputError if it is not there."""
    path = os.path.join(CHECKPOINT_ROOT, mode, GENERATOR_FILE)
    if not os.path.isfile(path):
        raise InputError(path, f"no shipped {mode} weights; pass --checkpoint")
    return path


def this_machine():
    """The manifest's description of the machine running this process."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def ship(checkpoint, mode, run_info=None, validation=None, root=CHECKPOINT_ROOT, bn_mode=None, stretch=None,
         state=None):
    """Copies a training checkpoint into root/mode as generator.h5, train_state.h5, manifest.json.

    run_info: dict merged into the manifest (data, patches, wall time, notes, ...).
    validation: dict of validation metrics (means) to record.
    bn_mode: the BN statistics the shipped generator fuses with ("batch" or "moving"; default:
    the checkpoint's); the training state keeps the checkpoint's. stretch: whether fused images
    are written min-max stretched (Generator's option; default: the checkpoint's, no).
    state: the full training state to ship as train_state.h5 when it is not `checkpoint` (the
    newest state of the run whose earlier checkpoint, perhaps generator-only, is shipped: the run
    resumes where it stopped); it must hold the same network configuration. The manifest then
    names both (`source_checkpoint`, `state_checkpoint`).
    """
    if mode not in MODES:
        raise InputError("--mode", f"must be one of {MODES}, got {mode!r}")
    out = os.path.join(root, mode)
    os.makedirs(out, exist_ok=True)
    model_config, train_config = read_configs(checkpoint)
    state = state or checkpoint
    if state != checkpoint:
        state_config = read_configs(state)[0]
        for key in ("scale", "official_decoder", "patch_size"):
            if key in model_config and state_config.get(key) != model_config[key]:
                raise InputError(state, f"has {key}={state_config.get(key)}, {checkpoint} has {model_config[key]}")
    generator = load_generator(checkpoint, bn_mode=bn_mode, stretch=stretch)
    model_config = dict(model_config, bn_mode=generator.bn_mode, stretch=generator.stretch)
    save_generator(generator, os.path.join(out, GENERATOR_FILE))
    atomic_write(os.path.join(out, STATE_FILE), lambda tmp: shutil.copyfile(state, tmp), suffix=".h5")
    manifest = {"mode": mode, "model": model_config, "train": train_config,
                "source_checkpoint": os.path.basename(checkpoint),
                **({"state_checkpoint": os.path.basename(state)} if state != checkpoint else {}),
                "machine": this_machine(),
                **(run_info or {}), "validation": validation or {}}
    write_text(os.path.join(out, MANIFEST_FILE), json.dumps(manifest, indent=2, sort_keys=True, default=float) + "\n")
    return out
