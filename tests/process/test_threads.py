"""CPU threads per rank, and the start-up word about competing processes."""

from __future__ import annotations

import subprocess
import sys
import time

from vffn_pretrain.process.threads import OtherLoad, ThreadPlan, competition_note, plan_threads


def test_each_rank_gets_an_equal_part_of_the_usable_cores():
    assert plan_threads({}, cores=8) == ThreadPlan(8, 8, 1, from_env=False)
    assert plan_threads({"LOCAL_WORLD_SIZE": "3"}, cores=8).threads == 2
    assert plan_threads({"LOCAL_WORLD_SIZE": "4"}, cores=2).threads == 1  # never below one
    assert plan_threads({"LOCAL_WORLD_SIZE": "x"}, cores=4).threads == 4  # unreadable: one rank


def test_omp_num_threads_wins_when_it_is_a_positive_integer():
    assert plan_threads({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, cores=8) == ThreadPlan(3, 8, 2, True)
    for junk in ("0", "-1", "two", ""):
        plan = plan_threads({"OMP_NUM_THREADS": junk}, cores=4)
        assert not plan.from_env and plan.threads == 4
        assert plan.note == (f"OMP_NUM_THREADS={junk!r} is not a positive integer; ignored" if junk else None)


def test_omp_num_threads_above_the_usable_cores_is_capped_with_a_note():
    """Asking the OpenMP runtime for 100000 threads failed the run with a traceback ('Resource temporarily
    unavailable')."""
    plan = plan_threads({"OMP_NUM_THREADS": "100000"}, cores=4)
    assert plan == ThreadPlan(4, 4, 1, True, "OMP_NUM_THREADS=100000 is more than this rank's share of the 4 "
                                             "usable CPU cores (1 rank(s) here); using 4 threads")
    assert plan_threads({"OMP_NUM_THREADS": "100000", "LOCAL_WORLD_SIZE": "4"}, cores=8).threads == 2
    for odd in ("²", "9" * 5000, "+4", "4.0"):  # '²'.isdigit() is true and int('²') fails
        plan = plan_threads({"OMP_NUM_THREADS": odd}, cores=4)
        assert plan.threads == 4 and not plan.from_env and "not a positive integer" in plan.note


def test_competition_is_reported_only_when_others_take_cores_the_ranks_need():
    plan = ThreadPlan(threads=2, cores=2, local_ranks=1, from_env=False)
    assert competition_note(plan, 0.2) is None  # noise
    note = competition_note(plan, 1.5)
    assert "1.5 of this machine's 2" in note and "slower" in note
    small = ThreadPlan(threads=1, cores=8, local_ranks=1, from_env=True)
    assert competition_note(small, 3.0) is None  # 5 cores left for the one thread this run uses


def test_other_load_sees_a_busy_process_and_not_itself():
    load = OtherLoad()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    t = time.time()
    while time.time() - t < 0.5:
        pass  # this process burns CPU too: it must not count as "other"
    busy.wait(timeout=30)
    others = load.busy_cores()
    assert 0.3 < others < 2.5, others


def test_the_trainer_process_sets_torch_threads_from_the_plan():
    code = ("import torch\nfrom vffn_pretrain.process.threads import configure_cpu_threads\n"
            "plan = configure_cpu_threads()\nprint(plan.threads, torch.get_num_threads())")
    env = {"PATH": "/usr/bin:/bin", "LOCAL_WORLD_SIZE": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    threads, torch_threads = map(int, out.stdout.split())
    assert threads == torch_threads >= 1
