"""A run directory's config.json: the run's settings and data seed, and which trainer on which
machine trained which batches.

Both trainers write it: `ddcgan-train` (train.py) and the JAX transcription
(benchmarks/jax_train.py), which may take turns on one run (a GPU lease, then this CPU). Each
start appends a *segment* to `segments`, `{"first_batch": k, "trainer": ..., "device": ...,
...}`, meaning "batches k.. ran here", so a resume by the other trainer keeps the history (the
manifest's `machine` list, benchmarks/ship.py). TensorFlow-free.
"""
import json
import os
import platform

from ddcgan_tf.images import write_text

RECORD_FILE = "config.json"
TF_TRAINER = "ddcgan-train"
JAX_TRAINER = "benchmarks/jax_train.py"
# what makes two segments different: the same keys on consecutive starts are one segment (the data
# seed among them: a resume with another --seed draws other batches from there on)
SEGMENT_KEYS = ("trainer", "device", "strategy", "replicas", "mixed_precision", "seed")


def read_record(model_dir):
    """model_dir's config.json as a dict ({} when missing or unreadable: it is a record only)."""
    try:
        with open(os.path.join(model_dir, RECORD_FILE)) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_record(model_dir, record):
    """Writes model_dir's config.json atomically."""
    write_text(os.path.join(model_dir, RECORD_FILE), json.dumps(record, indent=2, sort_keys=True, default=str))


def cpu_name():
    """This machine's processor, e.g. 'AMD EPYC 9454 48-Core Processor, 2 cores'."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def segments(record):
    """The record's segments, oldest first. A record written before segments existed holds one
    trainer for the whole run: the JAX trainer's `trainer`/`device` keys, else ddcgan-train's
    (machine unknown)."""
    if isinstance(record.get("segments"), list):  # entries without a batch number are damage: left out
        return [dict(s) for s in record["segments"] if isinstance(s, dict)
                and isinstance(s.get("first_batch"), int) and not isinstance(s.get("first_batch"), bool)]
    if not record:
        return []
    legacy = {"first_batch": 1, "trainer": record.get("trainer", TF_TRAINER)}
    if record.get("device"):
        legacy["device"] = record["device"]
    return [legacy]


def add_segment(record, first_batch, **where):
    """The record's segments with "batches first_batch.. ran at `where`" added.

    Segments from first_batch on are dropped (a resume from an earlier checkpoint trains those
    batches again); a start at the place of the last segment extends it (a plain resume)."""
    kept = [s for s in segments(record) if s["first_batch"] < first_batch]
    new = {"first_batch": int(first_batch), **where}
    if kept:  # a segment from before the seed was a segment key ran with the record's seed
        last = {"seed": record.get("seed"), **kept[-1]}
        if all(last.get(k) == new.get(k) for k in SEGMENT_KEYS):
            return kept
    return kept + [new]


def batch_ranges(segs, last_batch):
    """Segments as the manifest's `machine` list: `batches` "a-b" up to last_batch, then the
    segment's other keys (first_batch dropped); segments starting after last_batch are left out."""
    out = []
    for i, seg in enumerate(segs):
        first = seg["first_batch"]
        if first > last_batch:
            break
        end = min(segs[i + 1]["first_batch"] - 1, last_batch) if i + 1 < len(segs) else last_batch
        out.append({"batches": f"{first}-{end}", **{k: v for k, v in seg.items() if k != "first_batch"}})
    return out
