"""BatchNorm statistics that match the weights they score: validation, checkpoints and DDP ranks."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.swa_utils import update_bn

from spawned_ranks import leave_together
from voxtune.config import make_config
from voxtune.data.cache import case_ids, read_manifest
from voxtune.data.loader import CaseDataset
from voxtune.models.unet3d import UNet3D
from voxtune.train.batchnorm import batchnorm_layers, recompute_bn_stats
from voxtune.train.evaluate import evaluate, load_model
from voxtune.train.loop import fit


def _stats(model) -> list[torch.Tensor]:
    return [t.clone() for m in batchnorm_layers(model) for t in (m.running_mean, m.running_var)]


def test_saved_checkpoint_scores_as_with_statistics_recomputed_from_the_training_set(cache_dir, tmp_path):
    """The best and last checkpoints of a bn run score in eval mode what they score once the BatchNorm
    statistics are recomputed over every training case with the same weights. (With momentum-averaged
    statistics, which lag the weights, best.pt scored 0.868 as saved and 0.923 recomputed here.)"""
    run = tmp_path / "run"
    fit(make_config({"epochs": 6, "lr": 0.005, "norm": "bn"}), cache_dir, run, threads=1)
    train = CaseDataset(cache_dir, case_ids(read_manifest(cache_dir), "train"), divisor=8)
    for name in ("best.pt", "last.pt"):
        model = _model(run, name)
        as_saved = _dice(model.eval(), cache_dir)
        if name == "best.pt":  # the test evaluation after a search scores the same statistics
            assert evaluate(run / "checkpoints" / name, cache_dir, "val")["val_dice"] == pytest.approx(as_saved)
        batches = (image.float() for image, _ in torch.utils.data.DataLoader(train, batch_size=2))
        update_bn(batches, model)  # torch's own, over every training case
        recomputed = _dice(model.eval(), cache_dir)
        assert abs(as_saved - recomputed) <= 0.02, (name, as_saved, recomputed)


def _model(run, name: str):
    """The net of a checkpoint; last.pt has no metadata, so it is rebuilt from the run's config.yaml."""
    from voxtune.config import load_config
    from voxtune.models import build_model
    from voxtune.train.checkpoint import load_checkpoint

    if name == "best.pt":
        return load_model(run / "checkpoints" / name)[0]
    model = build_model(load_config(run / "config.yaml"), 4, 1)
    model.load_state_dict(load_checkpoint(run / "checkpoints" / name)["model"])
    return model


def _dice(model, cache_dir) -> float:
    from voxtune.train.metrics import dice_per_region

    ids = case_ids(read_manifest(cache_dir), "val")
    data = CaseDataset(cache_dir, ids, divisor=8)
    with torch.no_grad():
        return sum(dice_per_region(model(x[None].float()), y[None]).mean().item() for x, y in data) / len(ids)


def test_metrics_record_the_statistics_pass(cache_dir, tmp_path):
    bn = fit(make_config({"epochs": 1, "norm": "bn"}), cache_dir, tmp_path / "bn", threads=1)["metrics"][0]
    gn = fit(make_config({"epochs": 1, "norm": "gn"}), cache_dir, tmp_path / "gn", threads=1)["metrics"][0]
    assert 0 < bn["bn_stats_s"] < bn["epoch_time_s"]
    assert gn["bn_stats_s"] < 0.01  # nothing to recompute without BatchNorm


def test_recomputed_statistics_are_the_mean_of_batch_statistics():
    torch.manual_seed(0)
    model = UNet3D(2, 1, filter_start=4, depth=1)
    batches = [torch.randn(2, 2, 8, 8, 8) * (i + 1) + i for i in range(3)]
    assert recompute_bn_stats(model, iter(batches)) == 3
    first = batchnorm_layers(model)[0]
    conv = model.down[0][0]
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3, 4)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).reshape(o.shape[1], -1).var(dim=1) for o in outs]).mean(0)
    assert torch.allclose(first.running_mean, mean, atol=1e-5)
    assert torch.allclose(first.running_var, var, rtol=1e-4)
    assert model.training  # mode left as it was


def _ranks_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = UNet3D(2, 1, filter_start=4, depth=1)
    g = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    batches = [torch.randn(2, 2, 8, 8, 8, generator=g) * (rank + 1) for _ in range(2 + rank)]
    recompute_bn_stats(model, iter(batches))
    torch.save({"stats": _stats(model), "batches": batches}, f"{out}/rank{rank}.pt")
    leave_together()


@pytest.mark.slow
def test_ranks_end_with_the_statistics_of_all_their_batches(tmp_path):
    """Two gloo ranks with different data (and different batch counts) end with identical statistics:
    those one process computes from both ranks' batches together."""
    mp.spawn(_ranks_worker, args=(2, f"file://{tmp_path}/store", str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["stats"], r1["stats"]):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    alone = UNet3D(2, 1, filter_start=4, depth=1)
    recompute_bn_stats(alone, iter(r0["batches"] + r1["batches"]))
    for a, b in zip(r0["stats"], _stats(alone)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _fit_worker(rank: int, world: int, init: str, cache: str, out: str) -> None:
    import voxtune.train.loop as loop

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    seen = []
    real = loop._validate

    def spy(model, *args, **kwargs):
        seen.append(_stats(model))
        return real(model, *args, **kwargs)

    loop._validate = spy
    loop.fit(make_config({"epochs": 2, "norm": "bn", "lr": 0.005}), cache, f"{out}/run", threads=1)
    torch.save(seen, f"{out}/validated{rank}.pt")
    leave_together()


@pytest.mark.slow
def test_ddp_ranks_validate_and_save_the_same_statistics(cache_dir, tmp_path):
    """Under DDP on CPU (gloo: no SyncBatchNorm) each rank normalises its own batches while training, yet
    every rank validates with the same statistics, and rank 0's checkpoint holds exactly those."""
    mp.spawn(_fit_worker, args=(2, f"file://{tmp_path}/store", str(cache_dir), str(tmp_path)), nprocs=2)
    v0, v1 = (torch.load(tmp_path / f"validated{r}.pt") for r in (0, 1))
    assert len(v0) == len(v1) == 2
    for epoch0, epoch1 in zip(v0, v1):
        for a, b in zip(epoch0, epoch1):
            assert torch.equal(a, b)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    saved_stats = [v for k, v in saved.items() if k.endswith(("running_mean", "running_var"))]
    for a, b in zip(v0[-1], saved_stats, strict=True):
        assert torch.equal(a, b)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[-1]["workers"] == 2


@pytest.mark.parametrize("precise_bn, passes", [(True, 2), (False, 0)])
def test_precise_bn_is_a_config_key_and_off_means_momentum_statistics(precise_bn, passes, cache_dir, tmp_path,
                                                                      monkeypatch):
    """precise_bn: false validates with the running statistics training accumulated (PyTorch's momentum
    average), the ablation's other arm; true recomputes them before every validation."""
    from voxtune.config import make_config
    from voxtune.train import loop

    calls = []
    real = loop.recompute_bn_stats
    monkeypatch.setattr(loop, "recompute_bn_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    summary = loop.fit(make_config({"epochs": 2, "precise_bn": precise_bn}), cache_dir, tmp_path / "run", threads=1)
    assert len(calls) == passes and summary["epochs"] == 2
    assert all((r["bn_stats_s"] > 1e-3) == precise_bn for r in summary["metrics"])  # (a skipped pass: ~1 us)
