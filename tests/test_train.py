"""`voxtune train`: outputs, learning, resume, the test split, and config errors."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import voxtune.train.build as build
import voxtune.train.loop as loop
from voxtune.cli import main
from voxtune.config import load_config, make_config, parse_overrides
from voxtune.data.cache import case_ids, read_manifest
from voxtune.errors import VoxtuneError


def _train(cache, run, *extra) -> int:
    return main(["train", "--cache", str(cache), "--out", str(run), "--threads", "1", *extra])


def test_train_writes_config_metrics_checkpoints_and_events(cache_dir, tmp_path):
    run = tmp_path / "run"
    assert _train(cache_dir, run, "--epochs", "2", "--set", "norm=gn", "--set", "lr=0.002") == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["norm"] == "gn" and saved["lr"] == 0.002 and saved["epochs"] == 2
    records = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "val_loss", "val_dice", "val_dice_whole_tumour"):
        assert all(isinstance(r[key], float) for r in records), key
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["regions"] == ["whole_tumour"] and best["config"]["norm"] == "gn"


def test_train_learns_the_whole_tumour(cache_dir, tmp_path):
    summary = loop.fit(make_config({"epochs": 20, "lr": 0.001}), cache_dir, tmp_path / "run", threads=1)
    first = summary["metrics"][0]
    assert summary["best_val_dice"] > 0.75 > first["val_dice"] + 0.3
    assert summary["metrics"][-1]["train_loss"] < first["train_loss"]


def test_rerun_resumes_and_keeps_each_epoch_once(cache_dir, tmp_path):
    run = tmp_path / "run"
    assert _train(cache_dir, run, "--epochs", "2") == 0
    before = json.loads((run / "metrics.json").read_text())
    assert _train(cache_dir, run, "--epochs", "3") == 0
    after = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert after[:2] == before
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 3


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_is_deterministic(cache_dir, tmp_path, workers):
    """Two epochs, stop, one more == three epochs straight (model, optimiser and RNG are restored), with
    patches and flips drawn in the training process or in two persistent DataLoader processes."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--set", f"num_workers={workers}", "--set", "patch_size=16"]
    assert _train(cache_dir, straight, "--epochs", "3", *extra) == 0
    assert _train(cache_dir, resumed, "--epochs", "2", *extra) == 0
    assert _train(cache_dir, resumed, "--epochs", "3", *extra) == 0
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    for key in ("train_loss", "val_dice"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-4)


def test_loader_processes_do_not_change_the_run(cache_dir, tmp_path):
    runs = {}
    for workers in ("0", "2"):
        assert _train(cache_dir, tmp_path / workers, "--epochs", "2", "--set", f"num_workers={workers}",
                      "--set", "patch_size=16") == 0
        runs[workers] = [r["train_loss"] for r in json.loads((tmp_path / workers / "metrics.json").read_text())]
    assert runs["0"] == pytest.approx(runs["2"], rel=1e-5)


def test_loader_processes_follow_the_cpus():
    from voxtune.data.loader import loader_workers

    auto = make_config({})
    assert auto.num_workers is None
    assert [loader_workers(auto, cpus, cuda=False) for cpus in (1, 2, 4, 32)] == [0, 0, 1, 1]
    assert [loader_workers(auto, cpus, cuda=True) for cpus in (1, 2, 8, 32)] == [0, 1, 7, 8]
    assert loader_workers(make_config({"num_workers": 3}), 1, cuda=False) == 3


def test_rerun_with_another_config_is_refused(cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(cache_dir, run, "--epochs", "1") == 0
    capsys.readouterr()
    assert _train(cache_dir, run, "--epochs", "2", "--set", "norm=gn") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config (norm)" in err[0]


@pytest.mark.parametrize("folds", [1, 3])
def test_train_never_reads_the_test_split(cache_dir, tmp_path, monkeypatch, folds):
    seen: list[str] = []
    real = build.CaseDataset

    def spy(cache, ids, *args, **kwargs):
        seen.extend(ids)
        return real(cache, ids, *args, **kwargs)

    monkeypatch.setattr(build, "CaseDataset", spy)
    loop.fit(make_config({"epochs": 1, "folds": folds}), cache_dir, tmp_path / "run", threads=1)
    test_ids = set(case_ids(read_manifest(cache_dir), "test"))
    assert test_ids and seen and not test_ids & set(seen)


def test_nan_loss_stops_with_a_clear_error(cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "make_loss", lambda name, softmax: (lambda logits, label: logits.mean() * float("nan")))
    assert _train(cache_dir, tmp_path / "run", "--epochs", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became nan at epoch 1" in err[0]


@pytest.mark.parametrize("args, expected", [
    (["--set", "colour=red"], "unknown config key 'colour'"),
    (["--set", "lr=2"], "config key 'lr'"),
    (["--set", "norm=batch"], "config key 'norm'"),
    (["--set", "depth=three"], "config key 'depth': expected an integer"),
    (["--set", "patch_size=20"], "config key 'patch_size'"),
    (["--set", "lr"], "--set expects key=value"),
    (["--set", "model=segresnet", "--set", "kernel_size=5"], "config key 'kernel_size': 5: SegResNet has 3x3x3"),
    (["--set", "model=segresnet", "--set", "norm=none"], "config key 'norm': 'none': segresnet always normalises"),
    (["--set", "model=dynunet", "--set", "norm=none"], "config key 'norm': 'none': dynunet always normalises"),
    (["--set", "amp=true"], "config key 'amp': true needs a CUDA device"),
    (["--set", "val_metric=iou"], "config key 'val_metric'"),
    (["--set", "foreground_prior=1"], "config key 'foreground_prior'"),
    (["--epochs", "0"], "config key 'epochs'"),
])
def test_bad_config_is_one_line_naming_the_key(args, expected, cache_dir, tmp_path, capsys):
    assert _train(cache_dir, tmp_path / "run", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run").exists()


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("lr: 0.001\nwidth: 3\n")
    with pytest.raises(VoxtuneError, match=r"train.yaml: unknown config key 'width'"):
        load_config(bad)
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(VoxtuneError, match="train.yaml: not readable as YAML"):
        load_config(bad)
    with pytest.raises(VoxtuneError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_typed_per_key():
    cfg = make_config(parse_overrides(["amsgrad=true", "patch_size=16,16,16", "beta2=0.99", "depth=2"]))
    assert cfg.amsgrad is True and cfg.patch_size == [16, 16, 16] and cfg.beta2 == 0.99 and cfg.depth == 2
    cfg = make_config(parse_overrides(["patch_size=64", "num_workers=auto"]))
    assert cfg.patch_size == [64, 64, 64] and cfg.num_workers is None  # one integer: a cube
    assert make_config({"patch_size": 32}).patch_size == [32, 32, 32]
    assert make_config(parse_overrides(["num_workers=2"])).num_workers == 2


def test_patch_training_with_sliding_window_validation(cache_dir, tmp_path, monkeypatch):
    seen = {"train": [], "infer": []}
    from voxtune.train import evaluate

    real_infer, real_forward = evaluate.infer, build.Trainer.to_device

    def spy_infer(model, image, patch_size, *args, **kwargs):
        seen["infer"].append((tuple(image.shape[2:]), patch_size))
        return real_infer(model, image, patch_size, *args, **kwargs)

    def spy_to_device(self, image):
        seen["train"].append(tuple(image.shape[2:]))
        return real_forward(self, image)

    monkeypatch.setattr(evaluate, "infer", spy_infer)
    monkeypatch.setattr(build.Trainer, "to_device", spy_to_device)
    summary = loop.fit(make_config({"epochs": 1, "patch_size": [16, 16, 16]}), cache_dir, tmp_path / "run", threads=1)
    assert 0.0 <= summary["best_val_dice"] <= 1.0
    assert seen["train"] and set(seen["train"]) == {(16, 16, 16)}  # training takes patches (the BN pass too)
    # validation sees whole volumes (larger than a patch), through 16^3 windows
    assert seen["infer"] and all(max(shape) > 16 and patch == [16, 16, 16] for shape, patch in seen["infer"])


@pytest.mark.parametrize("model", ["segresnet", "dynunet"])
def test_monai_models_train_from_the_same_config(model, cache_dir, tmp_path):
    summary = loop.fit(make_config({"epochs": 1, "model": model, "norm": "in"}), cache_dir, tmp_path / "run",
                       threads=1)
    assert summary["epochs"] == 1


def test_the_papers_recipe_as_a_preset(cache_dir, tmp_path):
    """`--config paper`: 20 epochs, no augmentation, lr x replicas, a zero-bias head, batch soft Dice loss and
    the paper's soft validation Dice; --set still overrides it."""
    cfg = load_config("paper", parse_overrides(["epochs=1"]))
    assert (cfg.epochs, cfg.augment, cfg.scale_lr, cfg.foreground_prior) == (1, False, True, 0.5)
    assert cfg.loss == "batch_dice" and cfg.val_metric == "soft_dice" and cfg.patch_size is None
    assert load_config("paper").epochs == 20
    run = tmp_path / "run"
    assert _train(cache_dir, run, "--config", "paper", "--epochs", "1") == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["augment"] is False and saved["val_metric"] == "soft_dice" and saved["unet_style"] == "paper"
    weights = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert weights["head.weight"].shape[2:] == (3, 3, 3)  # the paper's net was trained, not voxtune's


@pytest.mark.parametrize("kernel", [3, 5])
def test_the_papers_net_as_its_code_builds_it(kernel):
    """unet_style paper (DistMIS model.py): k^3 transposed convolutions and head, every convolution with a
    bias, kernels TruncatedNormal(0.05) cut at 2 sigma, zero biases; the default keeps 2^3 up, a 1^3 head
    and no bias under a norm. Either way the output keeps the input's size."""
    from voxtune.models import build_model

    paper = build_model(make_config({"unet_style": "paper", "kernel_size": kernel, "foreground_prior": 0.5}), 4, 1)
    ours = build_model(make_config({"kernel_size": kernel}), 4, 1)
    assert [u.kernel_size for u in paper.upsample] == [(kernel,) * 3] * 3
    assert [u.kernel_size for u in ours.upsample] == [(2,) * 3] * 3
    assert paper.head.kernel_size == (kernel,) * 3 and ours.head.kernel_size == (1,) * 3
    convs = [m for m in paper.modules() if type(m) is torch.nn.Conv3d]
    assert len(convs) == 15 and all(c.bias is not None and not c.bias.any() for c in convs)
    assert all(c.bias is None for m in ours.modules() if type(m) is torch.nn.Conv3d and m is not ours.head
               for c in [m])
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert weights.abs().max() <= 0.1 and 0.04 < weights.std() < 0.048  # truncated at 2 sigma: 0.88 x 0.05
    x = torch.randn(2, 4, 16, 24, 32)
    assert paper(x).shape == ours(x).shape == (2, 1, 16, 24, 32)
    with pytest.raises(VoxtuneError, match="config key 'unet_style': 'paper': segresnet is not unet3d"):
        make_config({"model": "segresnet", "norm": "gn", "unet_style": "paper"})


def test_soft_validation_dice_is_the_papers_formula():
    from voxtune.train.metrics import soft_dice_per_region

    logits = torch.tensor([[[[[0.0, 2.0], [-2.0, 0.0]]]]])  # [1, 1, 1, 2, 2]
    label = torch.tensor([[[[[0.0, 1.0], [0.0, 1.0]]]]])
    p = torch.sigmoid(logits).flatten()
    want = (2 * (p * label.flatten()).sum() + 0.01) / (p.sum() + 2 + 0.01)
    assert soft_dice_per_region(logits, label).item() == pytest.approx(want.item())


def test_no_augmentation_means_no_flips(cache_dir, tmp_path, monkeypatch):
    seen = []
    real = build.CaseDataset

    def spy(cache, ids, *args, **kwargs):
        seen.append(kwargs.get("augment"))
        return real(cache, ids, *args, **kwargs)

    monkeypatch.setattr(build, "CaseDataset", spy)
    loop.fit(make_config({"epochs": 1, "augment": False}), cache_dir, tmp_path / "run", threads=1)
    assert seen[0] is False


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                                "9000000000 bytes")])
def test_out_of_memory_is_one_line_naming_the_run_and_its_sizes(error, cache_dir, tmp_path, monkeypatch):
    real = build.build_model

    def hungry(cfg, *args, **kwargs):
        model = real(cfg, *args, **kwargs)

        def forward(*_):
            raise error

        model.forward = forward
        return model

    monkeypatch.setattr(build, "build_model", hungry)
    with pytest.raises(loop.OutOfMemory) as caught:
        loop.fit(make_config({"epochs": 1, "batch_size": 3, "patch_size": [16, 16, 16]}), cache_dir,
                 tmp_path / "trial_7", threads=1)
    line = str(caught.value)
    assert "\n" not in line and line.startswith("trial_7: out of memory on cpu in epoch 1")
    assert "batch_size 3" in line and "patch_size [16, 16, 16]" in line


def test_an_error_that_is_not_out_of_memory_stays_itself(cache_dir, tmp_path, monkeypatch):
    real = build.build_model

    def broken(cfg, *args, **kwargs):
        model = real(cfg, *args, **kwargs)
        model.forward = lambda *_: (_ for _ in ()).throw(RuntimeError("shapes do not match"))
        return model

    monkeypatch.setattr(build, "build_model", broken)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        loop.fit(make_config({"epochs": 1}), cache_dir, tmp_path / "run", threads=1)


def test_the_config_accepts_exactly_the_registered_networks(monkeypatch):
    """Adding a network is its builder plus one NETWORKS line: the config then accepts its name."""
    import voxtune.models as models
    from voxtune.errors import VoxtuneError

    with pytest.raises(VoxtuneError, match="'tiny' is not one of unet3d, segresnet, dynunet"):
        make_config({"model": "tiny"})
    monkeypatch.setitem(models.NETWORKS, "tiny", "voxtune.models.unet3d:build")
    assert make_config({"model": "tiny"}).model == "tiny"
    assert type(models.build_model(make_config({"model": "tiny"}), 4, 1)).__name__ == "UNet3D"


@pytest.mark.parametrize("model", ["unet3d", "segresnet", "dynunet"])
@pytest.mark.parametrize("prior", [0.01, 0.5])
def test_every_network_starts_at_its_foreground_prior(model, prior):
    """The head's bias is logit(prior) when built: 0 for the paper's 0.5, -4.595 for voxtune's 0.01."""
    import math

    from voxtune.models import build_model

    net = build_model(make_config({"model": model, "norm": "gn", "foreground_prior": prior}), 4, 1)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    assert torch.allclose(head.bias, torch.full_like(head.bias, math.log(prior / (1 - prior))))


def test_dice_of_an_empty_region_is_one_when_predicted_empty_and_zero_when_not():
    from voxtune.train.metrics import dice_per_region

    label = torch.zeros(1, 2, 4, 4, 4)
    label[0, 0, :2] = 1  # region 0 present, region 1 absent
    logits = torch.full((1, 2, 4, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0
    assert dice_per_region(logits, label).tolist() == [[1.0, 1.0]]  # found, and rightly empty
    logits[0, 1, 0, 0, 0] = 5.0  # one voxel of a region the case does not have
    assert dice_per_region(logits, label).tolist() == [[1.0, 0.0]]


def test_sliding_window_inference_stitches_to_the_whole_volume_output():
    """A voxel-wise network gives the same logits through 8^3 windows (Gaussian blending of equal
    values) as on the whole volume: any seam or blending error shows."""
    from voxtune.train.metrics import infer

    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 1, kernel_size=1)
    image = torch.randn(1, 4, 20, 16, 12)
    with torch.no_grad():
        assert torch.allclose(infer(net, image, [8, 8, 8]), infer(net, image, None), atol=1e-5)
