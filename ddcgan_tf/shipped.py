"""Where the weights shipped in the repository's `checkpoints/` folder live."""
import os

from ddcgan_tf.checkpoint import GENERATOR_FILE
from ddcgan_tf.errors import InputError

CHECKPOINT_ROOT = os.environ.get(
    "DDCGAN_CHECKPOINTS",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints"))
MODES = ("vis-ir", "pet-mri")


def default_checkpoint(mode="vis-ir"):
    """Path of the shipped generator for a mode; InputError if it is not there."""
    path = os.path.join(CHECKPOINT_ROOT, mode, GENERATOR_FILE)
    if not os.path.isfile(path):
        raise InputError(path, f"no shipped {mode} weights; pass --checkpoint")
    return path
