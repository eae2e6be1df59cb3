"""Where a worker's slot comes from under Slurm (an srun step, a job array task, nothing), from
environments as Slurm sets them: pure, no cluster (tests/system/test_slurm.py starts one)."""
import pytest

from batchUtility.slot import Slot, slurm_slot


def test_slot_of_srun_step():
    env = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16"}
    assert slurm_slot(env, "n01") == Slot(6, 16, "n01")


def test_slot_of_batch_script_is_no_step():
    # The batch script has SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but is no srun step.
    assert slurm_slot({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"}, "n01") is None


@pytest.mark.parametrize("task, first, last, step, count, expected", [
    ("1", "1", "64", "1", "64", (1, 64)),
    ("64", "1", "64", "1", "64", (64, 64)),
    ("0", "0", "7", "1", "8", (1, 8)),       # --array=0-7
    ("7", "0", "7", "1", "8", (8, 8)),
    ("11", "2", "20", "9", "3", (2, 3)),     # --array=2-20:9 is 2, 11, 20 (as Slurm 22.05 sets it)
    ("17", "3", "40", "1", "3", (15, 38)),   # --array=3,17,40: a list, its place in 3..40
])
def test_slot_of_array_task(task, first, last, step, count, expected):
    env = {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_MIN": first, "SLURM_ARRAY_TASK_MAX": last,
           "SLURM_ARRAY_TASK_STEP": step, "SLURM_ARRAY_TASK_COUNT": count, "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert slurm_slot(env, "n02") == Slot(*expected, "n02")


def test_slot_precedence():
    array = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    # srun of several tasks inside an array task: the step's slot; of one task: the array's.
    step4 = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4"}
    step1 = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert slurm_slot({**array, **step4}, "h") == Slot(2, 4, "h")
    assert slurm_slot({**array, **step1}, "h") == Slot(3, 4, "h")
    assert slurm_slot({}, "h") is None
    assert slurm_slot({"SLURM_STEP_ID": "0", "SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "h") is None
