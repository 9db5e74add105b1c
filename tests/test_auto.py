"""--mode auto's decisions (voxtune.parallel.auto), worked by hand; the search itself is in test_tune_auto.py."""
from __future__ import annotations

import pytest

from voxtune.errors import VoxtuneError
from voxtune.parallel import auto, modes
from voxtune.parallel.auto import PoolState, Running, decide
from voxtune.parallel.modes import auto_sizes
from voxtune.parallel.settings import SearchSettings


class _Clock:
    """The Pool's time.time: 100 s pass between two readings unless a test sets `step` and moves `now`."""

    def __init__(self):
        self.now, self.step = 1000.0, 100.0

    def time(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """Epochs in these tests take 10 s of the Pool's clock, not of the test's: every epoch reported has run
    after the last change of who trains (steady) unless a test says otherwise."""
    fake = _Clock()
    monkeypatch.setattr(auto, "time", fake)
    return fake


def _running(**trials: tuple[int, float]) -> dict[str, Running]:
    """name=(K, best Dice so far), started in the order given, batch 4."""
    return {name: Running(started=float(i), k=k, batch_size=4, best=best) for i, (name, (k, best)) in enumerate(trials.items())}


def test_the_most_promising_running_trial_takes_the_free_workers():
    running = _running(a=(1, 0.6), b=(1, 0.8))  # W = 4: two workers free, nobody waits
    assert decide("b", running, 4, 0, [1, 2, 4], set()) == 2  # 3 does not divide batch 4: the largest K that does
    assert decide("a", running, 4, 0, [1, 2, 4], set()) == 1  # not the best: keeps its worker


def test_growth_is_capped_by_the_batch_and_the_free_workers():
    assert decide("a", _running(a=(1, 0.5)), 8, 0, [1, 2, 4, 8], set()) == 4  # batch 4 on 8 workers: K <= 4
    running = {"a": Running(started=0.0, k=1, batch_size=2, best=0.5)}
    assert decide("a", running, 4, 0, [1, 2, 4], set()) == 2  # the paper's batch 2: 2 ranks at most
    assert decide("a", _running(a=(1, 0.5), b=(2, 0.1)), 3, 0, [1, 2, 4], set()) == 1  # no worker free
    # CPU ranks take 2 cases or more (min_part 2): a batch-2 trial cannot grow, a batch-4 one to 2 ranks only.
    assert decide("a", running, 4, 0, [1, 2, 4], set(), min_part=2) == 1
    assert decide("a", _running(a=(1, 0.5)), 8, 0, [1, 2, 4, 8], set(), min_part=2) == 2
    assert auto_sizes(8, 4, 2) == [1, 2] and auto_sizes(8, 4) == [1, 2, 4]


def test_a_waiting_trial_gets_lent_workers_back_at_the_next_epoch_end():
    running = _running(a=(2, 0.9), b=(1, 0.5))
    assert decide("a", running, 3, 1, [1, 2, 4], set()) == 1
    assert decide("b", running, 3, 1, [1, 2, 4], set()) == 1  # its own worker stays its own
    assert decide("a", _running(a=(4, 0.9)), 4, 1, [1, 2, 4], set()) == 2  # gives back what is needed (largest K <= 3)


def test_a_trial_that_cannot_grow_leaves_the_workers_to_one_that_can():
    running = _running(a=(1, 0.9), b=(1, 0.5))
    slow = {(4, 2)}  # growth of batch-4 trials to 2 ranks did not pay
    assert decide("a", running, 3, 0, [1, 2, 4], slow) == 1
    running["a"].batch_size = 3  # K 2 does not divide 3: a cannot grow, b (batch 4) can
    assert decide("b", running, 3, 0, [1, 2, 4], set()) == 2


def test_growth_that_did_not_pay_is_undone_and_not_tried_again():
    pool = PoolState(workers=2, sizes=[1, 2])
    pool.started("a", 2)
    assert pool.epoch_end("a", 1, 2, 0.5, 10.0, 5) == 2  # alone on 2 workers: grows
    assert pool.epoch_end("a", 2, 2, 0.6, 9.9, 5) == 1  # not 5 % faster: back to 1
    assert pool.epoch_end("a", 1, 2, 0.7, 10.0, 5) == 1  # and never again to 2 ranks of batch 1
    pool.started("b", 2)
    assert pool.epoch_end("b", 1, 2, 0.9, 10.0, 5) == 1
    assert [(c["from"], c["to"], c["why"]) for c in pool.changes()] == [(1, 2, "idle workers"), (2, 1, "did not pay")]


def test_growth_waits_for_an_epoch_that_no_other_trial_slowed(clock):
    """b's epoch ran partly beside a, which has since ended: its time says nothing of b alone, so b grows
    only after an epoch alone; and a growth is judged only on an epoch that no other change slowed or sped."""
    clock.step = 0.0
    pool = PoolState(workers=2, sizes=[1, 2], regroup_s=1.0)
    pool.started("a", 2)
    pool.started("b", 2)
    clock.now += 10
    pool.ended("a")  # mid-way through b's epoch
    clock.now += 5
    assert pool.epoch_end("b", 1, 2, 0.5, 15.0, 5) == 1  # began beside a: not a measure of b alone
    clock.now += 10
    assert pool.epoch_end("b", 1, 2, 0.5, 10.0, 5) == 2  # an epoch alone: grows

    pool = PoolState(workers=3, sizes=[1, 2], regroup_s=1.0)
    pool.started("a", 2)
    pool.started("b", 2)
    clock.now += 10
    assert pool.epoch_end("b", 1, 2, 0.9, 10.0, 5) == 2  # the free worker: b grows
    clock.now += 5
    pool.ended("a")  # mid-way through b's first grown epoch, which it speeds up
    clock.now += 5
    assert pool.epoch_end("b", 2, 2, 0.9, 9.9, 5) == 2 and not pool.slow  # not judged on that epoch
    clock.now += 10
    assert pool.epoch_end("b", 2, 2, 0.9, 9.9, 5) == 1 and pool.slow == {(2, 2)}  # judged: did not pay


def test_growth_that_pays_stays_until_a_trial_waits():
    pool = PoolState(workers=2, sizes=[1, 2, 4])
    pool.started("a", 4)
    assert pool.epoch_end("a", 1, 4, 0.5, 10.0, 5) == 2
    assert pool.epoch_end("a", 2, 4, 0.6, 6.0, 5) == 2  # 40 % faster: kept
    pool.set_waiting(1)
    assert pool.epoch_end("a", 2, 4, 0.7, 6.0, 5) == 1
    assert pool.changes()[-1]["why"] == "waiting trials"


def test_a_grown_trial_holds_its_workers_against_others_asking_before_it_regroups():
    pool = PoolState(workers=3, sizes=[1, 2])
    pool.started("a", 2)
    pool.started("b", 2)
    assert pool.epoch_end("b", 1, 2, 0.9, 5.0, 5) == 2  # one worker free: b takes it
    assert pool.epoch_end("a", 1, 2, 0.95, 5.0, 5) == 1  # a, better now, finds none free
    pool.resized("b", 1)  # Ray could not reserve the bundle in time
    assert pool.epoch_end("a", 1, 2, 0.95, 5.0, 5) == 2


def test_a_warm_growth_holds_its_workers_is_not_judged_at_the_old_k_and_a_waiting_trial_cancels_it():
    """While a grown trial's new ranks warm up it trains on at its old K: the workers stay reserved for it,
    its epochs at the old K neither judge the growth nor give the workers away; a trial that starts
    waiting meanwhile cancels the growth at the next epoch end."""
    pool = PoolState(workers=2, sizes=[1, 2])
    pool.started("a", 4)
    pool.started("b", 4)
    pool.ended("b")
    assert pool.epoch_end("a", 1, 4, 0.5, 10.0, 5) == 2  # the free worker: a warms a rank up
    pool.started("c", 4)
    assert pool.running["a"].k == 2 and pool.epoch_end("c", 1, 4, 0.9, 10.0, 5) == 1  # reserved: not lent twice
    pool.ended("c")
    logged = len(pool.changes())
    assert pool.epoch_end("a", 1, 4, 0.6, 10.0, 4) == 2  # still warming, at K = 1: no verdict on the growth
    assert pool.gain == {} and pool.slow == set() and pool.running["a"].grew_from == 1
    assert len(pool.changes()) == logged and pool.warming == {"a": 2}  # nor a change of K
    pool.set_waiting(1)
    assert pool.epoch_end("a", 1, 4, 0.6, 10.0, 3) == 1  # a trial waits: the warm rank is cancelled
    assert pool.changes()[-1]["why"] == "warm growth cancelled: waiting trials" and pool.running["a"].k == 1
    assert pool.warming == {}
    pool.set_waiting(0)
    assert pool.epoch_end("a", 1, 4, 0.6, 10.0, 2) == 2  # free again: warms up anew
    assert pool.epoch_end("a", 2, 4, 0.6, 6.0, 1) == 2  # joined: the first epoch at K = 2 judges it (40 % faster)
    assert pool.gain[(4, 2)] == pytest.approx(0.4) and pool.warming == {}


def test_auto_settings_refuse_what_auto_cannot_grow():
    with pytest.raises(VoxtuneError, match="drop --workers-per-trial"):
        modes.workers_per_trial("auto", 4, 2)
    with pytest.raises(VoxtuneError, match="global-batch only"):
        SearchSettings(cache_dir=".", mode="auto", workers=2, ddp_recipe="scale-lr").checked()
    with pytest.raises(VoxtuneError, match="scale_lr"):
        SearchSettings(cache_dir=".", mode="auto", workers=2, base_config={"scale_lr": True}).checked()
    with pytest.raises(VoxtuneError, match="only --mode auto regroups"):
        SearchSettings(cache_dir=".", mode="experiment", workers=2, auto_regroup_s=1.0).checked()
    checked = SearchSettings(cache_dir=".", mode="auto", workers=3).checked()
    assert checked.ddp_recipe == "global-batch" and checked.concurrent_trials == 3 and checked.per_trial() == 1
    assert modes.auto_sizes(4, 2) == [1, 2] and modes.auto_sizes(8, 12) == [1, 2, 3, 4, 6]


def _tiny_model(batch_cost: dict[int, float], epochs: int = 4):
    """Worked by hand: 4 train cases, batch 2, 4 epochs, no validation; a batch-2 step takes 1 s, so an
    epoch is 2 steps: 2 s on one worker; on two ranks of batch 1, 2 steps of batch_cost[1] s each (+
    ALPHA_S per step); a new rank warms up for 0.5 s and a regroup stops a trial 0.5 s (warmup_s and
    regroup_s: the search's start-up, 0.5 s here, with no auto run measured)."""
    from voxtune.bench.model import MakespanModel

    return MakespanModel(train_cases=4, val_cases=0, batch_size=2, epochs=epochs, step_s=1.0, param_bytes=0,
                         beta_s_per_byte=0.0, startup_s=0.5, group_startup_s=0.0, trial_overhead_s=0.0,
                         group_overhead_s=0.0, batch_cost=batch_cost, global_batch=True)


def test_the_simulated_auto_schedule_grows_the_last_trial_onto_the_idle_worker():
    from voxtune.bench.model import ALPHA_S
    from voxtune.bench.simulate import Trial, schedule

    m = _tiny_model({1: 0.5, 2: 1.0})
    trials = [Trial(), Trial(), Trial()]
    # Start-up 0.5 s; A and B train 0.5-8.5 s; C starts at 8.5 alone. Its 1st epoch on 1 worker (-> 10.5)
    # starts a warm-up (ready at 11.0; 3 epochs left, 1 of them warming: 2 x ~1 s saved > 0.5 s); its 2nd
    # epoch still on 1 (-> 12.5), then it joins (-> 13.0) and trains epochs 3 and 4 on 2 ranks: 2 steps x
    # (0.5 + ALPHA_S) s each.
    auto = schedule(m, 2, 1, trials, auto=True)
    assert auto["wall_s"] == pytest.approx(13.0 + 4 * (0.5 + ALPHA_S)) and auto["grown"] == 1
    fixed = schedule(m, 2, 1, trials)
    assert fixed["wall_s"] == pytest.approx(16.5) and fixed["grown"] == 0
    # A batch-1 step as dear as a batch-2 one (torch's batch-1 Conv3d on a CPU): growth would not pay.
    assert schedule(_tiny_model({1: 1.0, 2: 1.0}), 2, 1, trials, auto=True)["wall_s"] == pytest.approx(16.5)
    # Nor where the warm-up outlasts the epochs it could speed up: 2.5 s is 2 of C's 3 epochs left.
    dear = _tiny_model({1: 0.5, 2: 1.0})
    dear.startup_s = 2.5
    assert schedule(dear, 2, 1, trials, auto=True)["grown"] == 0
    # A trial of 2 epochs cannot repay one: its warm-up takes the one epoch left.
    assert schedule(_tiny_model({1: 0.5, 2: 1.0}, epochs=2), 2, 1, trials, auto=True)["grown"] == 0


def test_data_mode_says_before_it_starts_when_cpu_ranks_would_take_batch_one():
    def note(mode="data", workers=2, batch=2, gpus=0.0, **kw):
        kw.setdefault("base_config", {"batch_size": batch})
        return SearchSettings(cache_dir=".", mode=mode, workers=workers, gpus_per_worker=gpus,
                              **kw).checked().batch_one_note()

    line = note()  # CPU ranks pair up by default: rank 1 trains nothing
    assert "global batch of 2 goes to 1 of its 2 DDP ranks" in line and "batch_size 4" in line and "\n" not in line
    assert "goes to 2 of its 4 DDP ranks" in note(workers=4, batch=4)
    single = note(base_config={"batch_size": 2, "min_rank_batch": 1})
    assert "batch 1 (2 / 2, min_rank_batch 1)" in single and "batch_size 4" in single
    assert note(batch=4) is None  # 2 per rank
    assert note(gpus=1.0) is None  # a GPU runs batch 1 fine
    assert note(ddp_recipe="scale-lr") is None  # each rank takes the whole batch
    assert note(mode="auto") is None  # auto grows only where it measured a gain


def test_a_trial_tune_has_started_holds_its_worker_before_it_reports_to_the_pool():
    pool = PoolState(workers=2, sizes=[1, 2])
    pool.started("a", 2)
    pool.set_waiting(0, ["a", "c"])  # c placed by Tune, still importing torch
    assert pool.epoch_end("a", 1, 2, 0.5, 10.0, 5) == 1
    pool.ended("c")
    assert pool.epoch_end("a", 1, 2, 0.5, 10.0, 5) == 2


def test_growth_must_save_more_than_a_regroup_costs():
    pool = PoolState(workers=2, sizes=[1, 2])
    pool.started("a", 2)
    pool.regroup_s = 5.0  # measured on an earlier regroup
    assert pool.epoch_end("a", 1, 2, 0.5, 1.0, 3) == 1  # at best 0.5 s x 3 epochs saved < 5 s
    assert pool.epoch_end("a", 1, 2, 0.5, 1.0, 20) == 2  # 10 s > 5 s
    assert pool.epoch_end("a", 2, 2, 0.6, 0.7, 19, regroup_s=6.0) == 2  # 30 % faster: kept
    assert pool.regroup_s == 6.0 and pool.gain[(2, 2)] == pytest.approx(0.3)


def test_a_growth_pays_only_over_the_epochs_left_once_its_ranks_are_warm():
    """A new rank warms up for about a trial's start-up while the trial trains on at its old K: the
    growth saves only over the epochs after that, against a regroup's critical path (REGROUP_PRIOR_S
    until one is measured)."""
    pool = PoolState(workers=2, sizes=[1, 2])
    pool.started("a", 2)
    assert pool.epoch_end("a", 1, 2, 0.5, 1.0, 5, startup_s=4.0) == 1  # 4 of 5 epochs warming: 0.5 s < 1 s
    assert pool.epoch_end("a", 1, 2, 0.5, 1.0, 6) == 1  # 2 epochs after it: 0.5 s x 2, not more than 1 s
    assert pool.epoch_end("a", 1, 2, 0.5, 1.0, 7) == 2  # 3 epochs after it: 1.5 s > 1 s
    given = PoolState(workers=2, sizes=[1, 2], regroup_s=0.0)  # --auto-regroup-s 0: the start-up is not used
    given.started("a", 2)
    assert given.epoch_end("a", 1, 2, 0.5, 1.0, 5, startup_s=4.0) == 2


def test_a_growth_ray_could_not_place_is_not_judged_as_one_that_did_not_pay():
    pool = PoolState(workers=4, sizes=[1, 2, 4], regroup_s=0.0)
    pool.started("a", 4)
    pool.started("b", 4)
    assert pool.epoch_end("a", 1, 4, 0.9, 10.0, 9) == 2  # b holds a worker: 3 free, K 3 does not divide 4
    pool.ended("b")
    assert pool.epoch_end("a", 2, 4, 0.9, 6.0, 8) == 4  # 40 % faster at 2: kept; b gone: asks for 4
    pool.resized("a", 2)  # Ray placed none of the 2 extra bundles in time
    assert pool.epoch_end("a", 2, 4, 0.9, 6.0, 7) == 4  # an epoch on 2 is not a growth to 4 that did not pay
    assert (4, 4) not in pool.slow and (4, 2) not in pool.slow


def test_a_processs_first_trial_counts_its_start_up_from_the_process_start(monkeypatch):
    """What the Pool takes as a regroup's cost before one is measured: a new rank pays its process's
    start (Python, Ray) too, so the first trial of a process counts from there; a reused one from its own start."""
    import time

    from voxtune.parallel import trial

    monkeypatch.setattr(trial, "_FRESH", [True])
    monkeypatch.setattr(trial, "process_started", lambda: 100.0)
    assert trial._startup_since(103.5) == 100.0
    assert trial._startup_since(250.0) == 250.0  # the process's next trial: no process start to pay
    monkeypatch.setattr(trial, "_FRESH", [True])
    monkeypatch.setattr(trial, "process_started", lambda: None)  # no /proc
    assert trial._startup_since(103.5) == 103.5
    from voxtune.machine import process_started

    assert 0 <= time.time() - process_started() < 6 * 3600  # this test process (pytest), started before this test
