"""Fault injection for the reliability tests, loaded by every Python process of a test's search
(Ray workers included) because the test puts this folder on PYTHONPATH.

VOXTUNE_FAULT_NAN_LR=0.005: any training run with that lr gets a NaN loss from its first step.
"""
import os

_lr = os.environ.get("VOXTUNE_FAULT_NAN_LR")
if _lr:
    import voxtune.train.loop as _loop

    _fit, _dice = _loop.fit, _loop.DiceLoss

    def _nan_loss(**kwargs):
        real = _dice(**kwargs)
        return lambda logits, label: real(logits, label) * float("nan")

    def _fit_with_fault(cfg, *args, **kwargs):
        _loop.DiceLoss = _nan_loss if cfg.lr == float(_lr) else _dice
        return _fit(cfg, *args, **kwargs)

    _loop.fit = _fit_with_fault
