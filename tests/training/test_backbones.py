"""DefectNet on a torchvision ResNet encoder (`--backbone`) and its ImageNet weights (`--pretrained`)."""

from __future__ import annotations

import urllib.error
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from qcstation.cli import app
from qcstation.inspect.detector import Detector
from qcstation.training.backbones import BackboneDefectNet, weights_file
from qcstation.training.defectnet import DefectTrainConfig, StationModel, predict_pool, train_defect_net
from qcstation.training.errors import CheckpointError, ModelBuildError, WeightsUnavailableError
from qcstation.training.export import load_checkpoint_model
from training.test_defectnet import (
    assert_station_matches_torch,
    make_spots_dataset,
    tiny_config,
    tiny_pool,
    train_tiny,
)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and no network: a download attempt fails as it does offline."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url: str, *args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def resnet_config(**kw: Any) -> DefectTrainConfig:
    """A two-class DefectNet on resnet18 at 64 px, batches of 4, one thread; ``kw`` sets the rest."""
    return DefectTrainConfig(
        classes=("good", "defect"), backbone="resnet18", size=64, batch_size=4, seed=0, num_threads=1, **kw
    )


def cached_imagenet_weights(seed: int) -> dict[str, torch.Tensor]:
    """Stand-in ImageNet weights (a seeded resnet18) put where torchvision's weights API looks for them."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = weights_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_a_resnet_backbone_trains_exports_and_the_station_agrees_with_torch(tmp_path: Path) -> None:
    train, val = tiny_pool(16, 64, 0), tiny_pool(8, 64, 1)
    config = resnet_config(max_epochs=1)
    fit = train_defect_net(train, val, config, tmp_path / "ckpt")
    assert isinstance(fit.net, BackboneDefectNet) and fit.epochs_run == 1
    heads = assert_station_matches_torch(StationModel(fit.net).eval(), val, 64, tmp_path / "tiny.onnx")
    # the checkpoint rebuilds the same network without fetching anything
    again = load_checkpoint_model(tmp_path / "ckpt" / "best.pt")
    assert again.kind == "defectnet" and isinstance(again.net.net, BackboneDefectNet)
    heads_again, _ = predict_pool(again.net, val)
    np.testing.assert_allclose(heads_again, heads, atol=1e-5)


def test_pretrained_weights_are_read_through_torchvisions_weights_api(torch_home: Path) -> None:
    imagenet = cached_imagenet_weights(seed=3)
    assert weights_file("resnet18").is_relative_to(torch_home)
    net = BackboneDefectNet(1, 2, "resnet18", pretrained=True)
    layer1 = net.stages[0][1]  # (maxpool, layer1)
    torch.testing.assert_close(layer1.state_dict()["0.conv1.weight"], imagenet["layer1.0.conv1.weight"])
    torch.testing.assert_close(
        net.stages[3].state_dict()["1.bn2.running_var"], imagenet["layer4.1.bn2.running_var"]
    )
    conv1 = net.stem[0].weight
    # a gray image through the RGB network: the three input weights summed; the contrast channel starts silent
    torch.testing.assert_close(conv1[:, 0], imagenet["conv1.weight"].sum(dim=1))
    assert conv1[:, 1].abs().max() == 0
    fresh = BackboneDefectNet(1, 2, "resnet18", pretrained=False)
    assert not torch.equal(
        fresh.stages[0][1].state_dict()["0.conv1.weight"], imagenet["layer1.0.conv1.weight"]
    )


def test_pretrained_training_slows_the_encoder_and_resumes_without_the_weights(
    torch_home: Path, tmp_path: Path
) -> None:
    cached_imagenet_weights(seed=4)
    train, val = tiny_pool(12, 64, 0), tiny_pool(8, 64, 1)
    config = resnet_config(pretrained=True, max_epochs=1)
    train_defect_net(train, val, config, tmp_path / "ckpt")
    groups = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["opt"]["param_groups"]
    encoder, rest = groups
    assert encoder["lr"] == pytest.approx(config.backbone_lr_scale * rest["lr"]) and rest["lr"] > 0
    # a resumed run takes its weights from the checkpoint: the cached ImageNet file is not needed any more
    weights_file("resnet18").unlink()
    fit = train_defect_net(
        train, val, replace(config, max_epochs=2), tmp_path / "ckpt", resume=tmp_path / "ckpt"
    )
    assert fit.epochs_run == 2


def test_pretrained_offline_says_which_file_to_copy_where(torch_home: Path, tmp_path: Path) -> None:
    root = make_spots_dataset(tmp_path / "data")
    args = [
        "train",
        str(root),
        "--out",
        str(tmp_path / "m.onnx"),
        "--epochs",
        "1",
        "--work-dir",
        str(tmp_path / "w"),
    ]
    result = CliRunner().invoke(app, [*args, "--backbone", "resnet18", "--pretrained"])
    assert result.exit_code != 0
    message = " ".join(str(result.output).split()) + " " + " ".join(str(result.exception).split())
    assert "could not be had" in message and "resnet18-" in message and str(torch_home) in message
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(WeightsUnavailableError, match="offline"):
        BackboneDefectNet(1, 2, "resnet18", pretrained=True)


def test_pretrained_unet_and_unknown_backbones_are_refused(tmp_path: Path) -> None:
    train, val = tiny_pool(8, 32, 0), tiny_pool(4, 32, 1)
    with pytest.raises(ModelBuildError, match="needs a torchvision backbone"):
        train_defect_net(train, val, tiny_config(pretrained=True), tmp_path / "a")
    with pytest.raises(ModelBuildError, match="unknown backbone 'vgg11'; known: unet, resnet18"):
        train_defect_net(train, val, tiny_config(backbone="vgg11"), tmp_path / "b")


def test_resume_refuses_another_backbone_and_reads_checkpoints_from_before_backbones(tmp_path: Path) -> None:
    train, val = tiny_pool(8, 32, 0), tiny_pool(4, 32, 1)
    config = tiny_config(max_epochs=1, seed=0, num_threads=1)
    train_defect_net(train, val, config, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="backbone='unet', this run has backbone='resnet18'"):
        train_defect_net(
            train,
            val,
            tiny_config(backbone="resnet18", max_epochs=2),
            tmp_path / "ckpt",
            resume=tmp_path / "ckpt",
        )
    # a last.pt written before the backbone option existed is a U-Net's
    last = tmp_path / "ckpt" / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["config"]["backbone"]
    torch.save(state, last)
    fit = train_defect_net(
        train,
        val,
        tiny_config(max_epochs=2, seed=0, num_threads=1),
        tmp_path / "ckpt",
        resume=tmp_path / "ckpt",
    )
    assert fit.epochs_run == 2


def test_train_main_with_a_backbone_writes_it_into_the_card(tmp_path: Path) -> None:
    root = make_spots_dataset(tmp_path / "data")
    out = tmp_path / "m.onnx"
    train_tiny(root, out, tmp_path / "w", backbone="resnet18", evaluate_split=None)
    det = Detector.from_path(out)
    training = det.card.provenance["training"]
    assert training["backbone"] == "resnet18" and training["pretrained"] is False
    assert training["arch"].startswith("DefectNet (resnet18 + image head") and "3 members" in training["arch"]
    image = np.full((40, 48), 150, np.uint8)
    assert 0.0 <= det.inspect(image).image_score <= 1.0
