"""Packs the device job's run directories for the trip back (at most 8 files, 64 MiB together),
and unpacks them here.

  python3 benchmarks/gpu_job/pack.py RUNS_DIR OUT            # there, after training
  python benchmarks/gpu_job/pack.py --unpack FILES_AT RUNS   # here: RUNS/<run>/ckpt-N.h5, logs
  python benchmarks/gpu_job/pack.py --room CARRY...          # here, before the call (stage.sh)

Per run: its newest checkpoint whole (to resume from), gzipped, as OUT/<run>_ckpt-N.h5.gz, and
up to two earlier ones as generator-only files (to score) in OUT/<run>_gens.tar.gz; and one
OUT/logs.tar.gz of every run's steps.jsonl, config.json and stdout, and of choose.py's
choice.json / choice.md and its log when RUNS_DIR holds them. Generator files are left out,
oldest first, while the total (gzipped sizes) would pass BUDGET; the chosen checkpoint's is kept
before any other. gzip saves about 8 % of a checkpoint and 70 % of a log, which is what lets
three runs' newest states and six earlier generators come back together (unzipped they did not:
one was left out on the second lease).
"""
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import h5py

from ddcgan_tf.checkpoint import list_checkpoints  # TensorFlow-free, as jax_train.py uses it

BUDGET = 60 * 2**20
EARLIER = 2
TRAVEL_LIMIT = 64 * 2**20  # the device tool's working tree that travels (its README, Limits)


def generator_only(src, dst):
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        a.copy("generator", b)
        b.attrs.update(dict(a.attrs))


def gzipped_size(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=6))


def gzip_file(src, dst):
    with open(src, "rb") as a, gzip.open(dst, "wb", compresslevel=6) as b:
        shutil.copyfileobj(a, b)


def unpack(files_at, runs_dir):
    """Puts what main() packed back into run directories: RUNS/<run>/ckpt-N.h5 (the newest, whole;
    earlier ones generator-only) with the run's steps.jsonl, config.json and stdout.log, and
    choose.py's files in RUNS. -> the checkpoint paths written."""
    written = []
    for name in sorted(os.listdir(files_at)):
        path = os.path.join(files_at, name)
        if name.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as t:
                t.extractall(runs_dir, filter="data")
                written += [os.path.join(runs_dir, m) for m in t.getnames() if m.endswith(".h5")]
        elif name.endswith(".h5.gz") and "_ckpt-" in name:
            run, ckpt = name[:-3].rsplit("_ckpt-", 1)
            os.makedirs(os.path.join(runs_dir, run), exist_ok=True)
            dst = os.path.join(runs_dir, run, "ckpt-" + ckpt)
            with gzip.open(path, "rb") as a, open(dst, "wb") as b:
                shutil.copyfileobj(a, b)
            written.append(dst)
    return sorted(written)


def git_paths(repo, *args):
    """The paths a git command lists (NUL-separated, so any file name survives)."""
    out = subprocess.run(["git", "-C", repo, *args, "-z"], check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def travelling(repo, carry):
    """[(bytes, path)] of what a device call sends from `repo`, largest first: the tracked files
    present, the untracked files git does not ignore, and every file under the carried paths."""
    paths = set(git_paths(repo, "ls-files", "--cached", "--others", "--exclude-standard"))
    for c in carry:
        if os.path.isfile(os.path.join(repo, c)):
            paths.add(os.path.normpath(c))
        for root, _, files in os.walk(os.path.join(repo, c)):
            paths.update(os.path.relpath(os.path.join(root, f), repo) for f in files)
    full = [os.path.join(repo, p) for p in paths]
    return sorted(((os.path.getsize(f), os.path.relpath(f, repo)) for f in full if os.path.isfile(f)),
                  reverse=True)


def room(repo, carry, limit=TRAVEL_LIMIT):
    """-> (total bytes, [tracked files to set aside for the call]). The committed checkpoints
    (about 55 MB) and the job's carry (about 20 MB) together passed the limit on the third lease:
    the call would have been refused. Unmodified tracked files under checkpoints/ are safe to
    delete for the call and restore after (`git checkout --`), largest first, until it fits."""
    sizes = travelling(repo, carry)
    total = sum(n for n, _ in sizes)
    modified = set(git_paths(repo, "diff", "--name-only", "HEAD"))
    tracked = set(git_paths(repo, "ls-files"))
    aside, over = [], total - limit
    for n, p in sizes:
        if over <= 0:
            break
        if p.startswith("checkpoints/") and p in tracked and p not in modified:
            aside.append(p)
            over -= n
    if over > 0:
        raise SystemExit(f"the device call would send {total / 2**20:.1f} MiB, over its "
                         f"{limit >> 20} MiB, even without the committed checkpoints: carry less")
    return total, aside


def room_report(repo, carry, limit=TRAVEL_LIMIT):
    """room() as the lines stage.sh prints: the size, and the shell commands (quoted: a name
    with a space once split into two, and `rm` took an untracked file) to set files aside."""
    total, aside = room(repo, carry, limit)
    lines = [f"the device call sends {total / 2**20:.1f} MiB (limit {limit >> 20} MiB)"]
    if aside:
        quoted = " ".join(shlex.quote(p) for p in aside)
        lines += ["over: set these committed files aside for the call, then restore them:",
                  f"  rm -- {quoted}", f"  git checkout -- {quoted}"]
    return "\n".join(lines)


def main(src, out):
    os.makedirs(out, exist_ok=True)
    runs = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    total, earlier = 0, []
    chosen = None
    if os.path.exists(os.path.join(src, "choice.json")):
        with open(os.path.join(src, "choice.json")) as f:
            chosen = tuple(json.load(f)["held_out"]["checkpoint"].split("/"))  # (run, ckpt-N.h5)
    with tarfile.open(os.path.join(out, "logs.tar.gz"), "w:gz") as logs:
        for name in ("choice.json", "choice.md", "choose.log"):
            if os.path.exists(os.path.join(src, name)):
                logs.add(os.path.join(src, name), name)
        for run in runs:
            d = os.path.join(src, run)
            for name in ("steps.jsonl", "config.json"):
                if os.path.exists(os.path.join(d, name)):
                    logs.add(os.path.join(d, name), f"{run}/{name}")
            if os.path.exists(os.path.join(src, run + ".log")):
                logs.add(os.path.join(src, run + ".log"), f"{run}/stdout.log")
            ckpts = list_checkpoints(d)  # [(batch, path)], oldest first
            if not ckpts:
                continue
            newest = os.path.join(out, f"{run}_{os.path.basename(ckpts[-1][1])}.gz")
            gzip_file(ckpts[-1][1], newest)
            total += os.path.getsize(newest)
            for batch, path in ckpts[:-1][-EARLIER:]:
                g = os.path.join(d, "gen-" + os.path.basename(path))
                generator_only(path, g)
                earlier.append((batch, run, os.path.basename(path), g, gzipped_size(g)))
    kept = {}
    # the chosen one first, then the newest batches
    for _, run, n, g, size in sorted(earlier, key=lambda e: ((e[1], e[2]) == chosen, e[0]), reverse=True):
        if total + size <= BUDGET:
            total += size
            kept.setdefault(run, []).append((n, g))
        else:
            print(f"left out {run}/{n}: over the {BUDGET >> 20} MiB budget")
    for run, items in kept.items():
        with tarfile.open(os.path.join(out, f"{run}_gens.tar.gz"), "w:gz") as t:
            for n, g in items:
                t.add(g, f"{run}/{n}")
    print(f"packed {len(runs)} runs, {total / 2**20:.1f} MiB of checkpoints")


if __name__ == "__main__":
    if sys.argv[1] == "--unpack":
        print("\n".join(unpack(*sys.argv[2:4])))
    elif sys.argv[1] == "--room":
        print(room_report(".", sys.argv[2:]))
    else:
        main(*sys.argv[1:3])
