"""A run's config.json keeps which trainer on which machine ran which batches (ddcgan_tf.record),
and benchmarks/ship.py turns that into the manifest's `machine` list. TensorFlow-free."""
import os
import sys

import pytest

from conftest import REPO
from ddcgan_tf.record import JAX_TRAINER, TF_TRAINER, add_segment, batch_ranges, read_record, segments, write_record

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from ship import history, machine_history, shipped_data  # noqa: E402

GPU = {"trainer": JAX_TRAINER, "device": "NVIDIA H200", "strategy": "jax", "replicas": 1,
       "mixed_precision": "float32"}
CPU = {"trainer": TF_TRAINER, "device": "AMD EPYC, 2 cores", "strategy": "default", "replicas": 1,
       "mixed_precision": "float32"}


def test_segments_follow_the_trainers_and_a_plain_resume_extends_one(tmp_path):
    record = {}
    record["segments"] = add_segment(record, 1, **GPU)  # a JAX run on a lent GPU
    record["segments"] = add_segment(record, 2842, **GPU)  # resumed there: the same place
    assert record["segments"] == [dict(first_batch=1, **GPU)]
    record["segments"] = add_segment(record, 7259, **CPU)  # then ddcgan-train here
    record["segments"] = add_segment(record, 7300, **dict(CPU, mixed_precision="mixed_bfloat16"))
    assert [s["first_batch"] for s in record["segments"]] == [1, 7259, 7300]
    write_record(str(tmp_path), record)
    assert read_record(str(tmp_path)) == record
    # a resume from an earlier checkpoint trains batches 7280.. again: later segments go
    again = add_segment(record, 7280, **CPU)
    assert again == [dict(first_batch=1, **GPU), dict(first_batch=7259, **CPU)]
    assert batch_ranges(again, 7500) == [dict(batches="1-7258", **GPU), dict(batches="7259-7500", **CPU)]
    assert batch_ranges(again, 2000) == [dict(batches="1-2000", **GPU)]  # a generator of batch 2000


def test_a_second_restart_at_the_same_batch_replaces_that_segment_and_the_last_batch_keeps_its_machine():
    """Resumed at batch 3 with another seed, killed before a new checkpoint, resumed at 3 again
    with a third seed: batches 3.. ran with the third only (no "3-2" range in the manifest). And
    a segment that starts at the manifest's last batch is listed ("5-5"), not dropped."""
    record = {"seed": 2, "segments": [dict(first_batch=1, seed=1, **CPU), dict(first_batch=3, seed=2, **CPU)]}
    again = add_segment(record, 3, seed=3, **CPU)
    assert [(s["first_batch"], s["seed"]) for s in again] == [(1, 1), (3, 3)]
    assert [r["batches"] for r in batch_ranges(again, 5)] == ["1-2", "3-5"]
    assert batch_ranges([dict(first_batch=1, **GPU), dict(first_batch=5, **CPU)], 5) == [
        dict(batches="1-4", **GPU), dict(batches="5-5", **CPU)]


def test_a_record_older_than_segments_names_its_one_trainer(tmp_path):
    assert read_record(str(tmp_path)) == {}  # no record
    (tmp_path / "config.json").write_text("{not json")
    assert read_record(str(tmp_path)) == {}  # a damaged one: a record only, training goes on
    jax_run = {"seed": 3, "trainer": JAX_TRAINER, "device": "cuda:0 (NVIDIA H200)"}
    assert segments(jax_run) == [{"first_batch": 1, "trainer": JAX_TRAINER, "device": "cuda:0 (NVIDIA H200)"}]
    assert segments({"seed": 3}) == [{"first_batch": 1, "trainer": TF_TRAINER}]
    # the JAX run resumed by ddcgan-train keeps its GPU batches (it was rewritten as ours alone)
    assert [s["trainer"] for s in add_segment(jax_run, 7259, **CPU)] == [JAX_TRAINER, TF_TRAINER]


def test_the_manifest_lists_each_machine_by_batch_range():
    shipped = [{"batches": "1-2000", "device": "cuda:0 (NVIDIA H200)", "trainer": JAX_TRAINER}]
    # a run resumed from the shipped train_state.h5 (batch 7258): GPU, then JAX on a CPU, then here
    run = {"segments": [dict(first_batch=7259, **GPU), dict(first_batch=7400, **CPU)]}
    assert machine_history(run, shipped, 7259, 7500, same_run=False) == [
        {"batches": "1-7258", "device": "cuda:0 (NVIDIA H200)", "trainer": JAX_TRAINER},
        {"batches": "7259-7399", **{k: v for k, v in GPU.items()}},
        {"batches": "7400-7500", **CPU}]
    # a fresh run: its own segments only, up to the shipped generator's batch
    fresh = {"segments": [dict(first_batch=1, **GPU), dict(first_batch=3000, **CPU)]}
    assert machine_history(fresh, shipped, 1, 2500, same_run=False) == [dict(batches="1-2500", **GPU)]
    # a record older than segments: the JAX trainer's own keys, or ddcgan-train on this machine
    old_jax = {"trainer": JAX_TRAINER, "device": "cuda:0 (NVIDIA H200)"}
    assert machine_history(old_jax, shipped, 1, 900, same_run=False) == [
        {"batches": "1-900", "trainer": JAX_TRAINER, "device": "cuda:0 (NVIDIA H200)"}]
    # config.json lost mid-run (ddcgan-train then starts a record at its resume): the gap is named
    lost = {"segments": [dict(first_batch=501, **CPU)]}
    assert machine_history(lost, shipped, 1, 800, same_run=False) == [
        {"batches": "1-500", "trainer": "unknown (config.json lost)"}, dict(batches="501-800", **CPU)]
    here = machine_history({"seed": 1}, {"platform": "x", "cpu_count": 2}, 101, 150, same_run=True)
    assert here[0] == {"batches": "1-100", "platform": "x", "cpu_count": 2}
    assert here[1]["batches"] == "101-150" and here[1]["trainer"] == TF_TRAINER


def test_a_shipped_runs_wall_time_follows_the_checkpoint_shipped():
    """ship.py's manifest times the batches up to the shipped checkpoint: the same run shipped
    again further on adds its new batches, an earlier checkpoint of it takes its later ones off
    (it used to keep the replaced manifest's time: 68 % over, found by review)."""
    rows = [{"step": k, "time": 100.0 + 5 * (k - 1)} for k in range(1, 13)]  # 5 s a batch
    previous = {"run_started": 100.0, "steps": 10, "total_steps": 10, "wall_time_s": 50.0}
    config = {}
    _, before, wall, _, first, same = history(previous, config, rows, 6)
    assert (wall, before, first, same) == (30.0, 0, 1, True)  # batches 1-6, as a fresh ship would say
    assert history(previous, config, rows, 12)[2] == 60.0
    assert history(previous, config, rows, 10)[2] == 50.0
    # a fresh run and a resume from the shipped state
    assert history({"run_started": 1.0, "steps": 10, "wall_time_s": 50.0}, config, rows, 6)[2] == 30.0
    later = [{"step": k, "time": 500.0 + 2 * k} for k in range(21, 31)]
    lineage, _, wall, _, _, same = history(dict(previous, state_steps=20), config, later, 30)
    assert (lineage, wall, same) == ({"untimed_batches": "11-20"}, 50.0 + 20.0, False)
    with pytest.raises(ValueError, match="its log starts at batch 21, but the shipped run ended at 10"):
        history(previous, config, later, 30)


def test_the_manifest_names_held_out_scenes_the_run_trained_on_under_another_name(tmp_path):
    """The shipped vis-ir run trained on Movie_14, which is held-out houses_with_3_men written
    again; a manifest says so when its run's patch set holds such a copy, and not otherwise."""
    from conftest import write_pairs
    from ddcgan_tf.patches import build_patch_set
    vis_dir, ir_dir = write_pairs(str(tmp_path), names=("Movie_14", "wall", "t1"))
    leaky, clean = str(tmp_path / "leaky.h5"), str(tmp_path / "clean.h5")
    quiet = lambda *_: None  # noqa: E731
    build_patch_set(vis_dir, ir_dir, leaky, patch=32, stride=16, exclude=["wall"], log=quiet)
    build_patch_set(vis_dir, ir_dir, clean, patch=32, stride=16, exclude=["wall", "Movie_14"], log=quiet)
    previous = {"source": "TNO", "near_copies_trained_on": {"houses_with_3_men": "Movie_14"}}
    held = ["houses_with_3_men", "wall"]
    assert shipped_data(previous, held, leaky) == {
        "source": "TNO", "held_out": held, "trained_pairs": ["Movie_14", "t1"],
        "near_copies_trained_on": {"houses_with_3_men": "Movie_14"}}
    assert shipped_data(previous, held, clean) == {"source": "TNO", "held_out": held, "trained_pairs": ["t1"]}
    assert shipped_data(previous, None, clean) == {"source": "TNO"}  # pet-mri: the description only


def test_a_segment_recorded_before_seeds_were_kept_per_segment_is_extended_by_a_plain_resume():
    """config.json from before 2026-11-28 has one seed for the run and none per segment: a resume
    with that seed extends the last segment (it split it in two), another seed starts one."""
    old = {"seed": 7, "segments": [dict(first_batch=1, **CPU)]}
    assert add_segment(old, 101, **CPU, seed=7) == [dict(first_batch=1, **CPU)]
    assert add_segment(old, 101, **CPU, seed=8) == [dict(first_batch=1, **CPU), dict(first_batch=101, **CPU, seed=8)]


def test_a_record_whose_segments_are_damaged_keeps_the_good_ones():
    """A config.json that is valid JSON of the wrong shape (a segment without its batch number)
    stopped every resume with a KeyError traceback; it is a record only, so the damaged entries
    are left out and training goes on."""
    record = {"seed": 1, "segments": [{}, dict(first_batch=1, **CPU), "x", dict(first_batch=True, **GPU)]}
    assert segments(record) == [dict(first_batch=1, **CPU)]
    assert add_segment(record, 5, **GPU) == [dict(first_batch=1, **CPU), dict(first_batch=5, **GPU)]
