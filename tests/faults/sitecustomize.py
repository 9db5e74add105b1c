"""Fault injection for the reliability tests, loaded by every Python process of a test's search
(Ray workers included) because the test puts this folder on PYTHONPATH.

VOXTUNE_FAULTS='{"0.005": ["nan", 1, 0], ...}': the training run with that lr meets the fault from the
given epoch on (1: before its first report; 2: after it), on the given rank. Each fault goes through
the real code path it names:
    nan   the rank's loss becomes NaN: the loop's own divergence check (TrainingDiverged);
    file  the rank reads its cases' images from a copy truncated to 4 KiB: the cache's own read check;
    disk  the rank's file writes fail with ENOSPC: voxtune.files turns that into DiskFull.
"""
import errno
import json
import os
import tempfile

_faults = json.loads(os.environ.get("VOXTUNE_FAULTS") or "{}")
if _faults:
    import builtins

    import voxtune.data.cache as _cache
    import voxtune.data.loader as _loader
    import voxtune.files as _files
    import voxtune.train.build as _build
    import voxtune.train.loop as _loop

    _now = {"fault": None, "epoch": 0}

    def _active(kind):
        fault = _now["fault"]
        if not fault or fault[0] != kind or _now["epoch"] < fault[1]:
            return False
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return rank == fault[2]

    _fit = _loop.fit

    def _fit_with_fault(cfg, *args, **kwargs):
        _now["fault"], _now["epoch"] = _faults.get(repr(cfg.lr)), 0
        return _fit(cfg, *args, **kwargs)

    _loop.fit = _fit_with_fault

    _set_epoch = _loader.EpochSampler.set_epoch

    def _set_epoch_seen(self, epoch):
        _now["epoch"] = epoch
        return _set_epoch(self, epoch)

    _loader.EpochSampler.set_epoch = _set_epoch_seen

    _make_loss = _build.make_loss

    def _nan_loss(*args, **kwargs):
        real = _make_loss(*args, **kwargs)
        return lambda logits, label: real(logits, label) * (float("nan") if _active("nan") else 1.0)

    _build.make_loss = _nan_loss

    _real_file = _cache._file
    _truncated = {}

    def _file(cache_dir, entry, kind):
        path = _real_file(cache_dir, entry, kind)
        if kind != "image" or not _active("file"):
            return path
        if path not in _truncated:
            copy = os.path.join(tempfile.mkdtemp(prefix="voxtune-fault-"), os.path.basename(path))
            with open(path, "rb") as src, open(copy, "wb") as dst:
                dst.write(src.read(4096))
            _truncated[path] = type(path)(copy)
        return _truncated[path]

    _cache._file = _file

    def _open_full(file, mode="r", *args, **kwargs):
        # trial.json is spared: a nearly full disk still takes a few hundred bytes, and the trial's
        # error must be recorded somewhere for the test to read it.
        if "w" in mode and _active("disk") and not os.path.basename(str(file)).startswith("trial.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    _files.open = _open_full  # atomic_write's open: every file voxtune writes
