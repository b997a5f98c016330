"""Synthesis off the critical path: ``prefetch`` batches made ahead by a background
thread are the same batches, in the same order, as those made in the step (a batch is a pure
function of (seed, step)); the thread stops on errors and interrupts; resume works."""
import threading
import time

import numpy as np
import pytest
import torch

from destseg_lib.data import TrainImages
from destseg_lib.synthesis import AnomalySynthesizer
from destseg_lib.textures import make_texture_source
from destseg_lib.train import PrefetchedBatches, SyntheticBatches, batch_loader, train_model


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "destseg-prefetch" and t.is_alive()]


def _batches(cfg, split, seed=None):
    synth = AnomalySynthesizer.from_config(cfg, make_texture_source(None), False)
    return SyntheticBatches(TrainImages.for_config(split.train, cfg), synth, cfg.batch_size,
                            cfg.seed if seed is None else seed, split.rotation, cfg.rotation_fill)


@pytest.mark.parametrize("start, ahead", [(0, 1), (0, 2), (5, 3)])  # from the start, and resumed at step 5
def test_prefetched_batches_are_bit_identical(ci_cfg, toy_split, start, ahead):
    plain = list(batch_loader(_batches(ci_cfg, toy_split), range(start, start + 6), prefetch=0))
    loader = batch_loader(_batches(ci_cfg, toy_split), range(start, start + 6), prefetch=ahead)
    assert isinstance(loader, PrefetchedBatches)
    fetched = list(loader)
    assert len(fetched) == len(plain) == 6
    for a, b in zip(plain, fetched):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # and they are the batches of those steps, not of others (the steps differ from each other)
    assert not torch.equal(fetched[0][1], fetched[1][1])
    assert not _prefetch_threads()


def test_an_error_making_a_batch_is_raised_at_that_batch_and_stops_the_thread():
    class Failing:
        def __getitem__(self, i):
            if i == 3:
                raise OSError("image 3 unreadable")
            return (torch.full((1,), float(i)),)

    got = []
    with pytest.raises(OSError, match="image 3 unreadable"):
        for (t,) in PrefetchedBatches(Failing(), range(10), ahead=2):
            got.append(int(t))
    assert got == [0, 1, 2]
    assert not _prefetch_threads()


def test_abandoning_the_iteration_stops_the_thread():
    made = []

    class Slow:
        def __getitem__(self, i):
            made.append(i)
            time.sleep(0.01)
            return (torch.zeros(1),)

    loader = PrefetchedBatches(Slow(), range(10 ** 6), ahead=2)
    for k, _ in enumerate(loader):
        if k == 3:
            break
    loader.close()
    assert not _prefetch_threads()
    assert len(made) <= 4 + 2 + 1  # at most `ahead` batches (+ the one being made) beyond those used


@pytest.mark.slow
def test_the_step_does_not_wait_when_synthesis_is_faster():
    """A batch that takes 30 ms to make and a step of 100 ms: made in the step, each waits 30 ms;
    prefetched, only the first one does (sleeps: the timing holds on a busy CPU too)."""
    class Timed:
        def __getitem__(self, i):
            time.sleep(0.03)
            return (torch.zeros(1),)

    def waits(loader):
        out, ready = [], time.perf_counter()
        for _ in loader:
            out.append(time.perf_counter() - ready)
            time.sleep(0.1)  # the training step
            ready = time.perf_counter()
        return out

    inline = waits(batch_loader(Timed(), range(5), prefetch=0))
    ahead = waits(batch_loader(Timed(), range(5), prefetch=1))
    assert min(inline) > 0.025
    assert max(ahead[1:]) < 0.015 and ahead[0] > 0.025


@pytest.mark.slow
def test_training_with_prefetch_gives_identical_losses_and_weights(ci_cfg, toy_split, tmp_path):
    cfg = ci_cfg.replace(student_steps=3, seg_steps=3)
    a = train_model(cfg.replace(prefetch=0), toy_split, tmp_path / "a", progress=False)
    b = train_model(cfg.replace(prefetch=2), toy_split, tmp_path / "b", progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # data_wait: the first batch is made while the model waits, the others while it trains
    assert all(np.isfinite(h["data_wait"]) and h["data_wait"] >= 0 for h in b.history)
    assert not _prefetch_threads()


@pytest.mark.slow
def test_resume_with_prefetch_reaches_the_same_weights(ci_cfg, toy_split, tmp_path):
    cfg = ci_cfg.replace(student_steps=3, seg_steps=3, checkpoint_every=2)  # resumed in stage 2
    full = train_model(cfg.replace(prefetch=0), toy_split, tmp_path / "full", progress=False)
    train_model(cfg.replace(prefetch=2), toy_split, tmp_path / "part", progress=False, stop_after=4)
    resumed = train_model(cfg.replace(prefetch=2), toy_split, tmp_path / "part", progress=False, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_an_interrupt_in_training_stops_the_thread(ci_cfg, toy_split, tmp_path):
    def interrupt(row):
        if row["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(ci_cfg.replace(prefetch=2), toy_split, tmp_path, progress=False, callback=interrupt)
    assert not _prefetch_threads()


def test_prefetch_is_checked_and_free_on_resume(ci_cfg):
    from destseg_lib.errors import ConfigError
    from destseg_lib.train import config_differences

    with pytest.raises(ConfigError, match="prefetch"):
        ci_cfg.replace(prefetch=-1)
    assert config_differences(ci_cfg.to_dict(), ci_cfg.replace(prefetch=0)) == []
