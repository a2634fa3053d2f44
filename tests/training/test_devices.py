"""Where training runs: device and precision choices, bf16 autocast on the CPU, several torchrun processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qcstation.training import defectnet
from qcstation.training.backbones import BackboneDefectNet
from qcstation.training.defectnet import DefectTrainConfig, Pool, train_defect_net
from qcstation.training.devices import Amp, Distributed, resolve_device, resolve_precision
from qcstation.training.errors import TrainingError
from training.test_defectnet import tiny_pool

pytestmark = [pytest.mark.train]

HERE = Path(__file__).parent
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


def pool(n: int, seed: int) -> Pool:
    """``n`` 32 px tiles, every other one with a dark square defect (test_defectnet's tiny pool)."""
    return tiny_pool(n, 32, seed)


def tiny(**kw: Any) -> DefectTrainConfig:
    return DefectTrainConfig(
        classes=("good", "defect"), width=8, depth=2, size=32, batch_size=4, num_threads=1, **kw
    )


def test_cpu_is_chosen_where_no_gpu_is_visible_and_bad_values_are_refused() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(TrainingError, match="expected one of auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(TrainingError, match="expected one of auto, fp32, bf16, fp16, got 'int4'"):
        resolve_precision("int4", torch.device("cpu"))


@no_cuda
def test_asking_for_a_gpu_where_there_is_none_says_so() -> None:
    with pytest.raises(TrainingError, match=r"no CUDA device is visible.*device 'cpu'"):
        resolve_device("cuda")
    with pytest.raises(TrainingError, match="no CUDA device"):
        resolve_device("cuda:1")


def test_the_cpu_trains_in_fp32_unless_bf16_is_asked_for_and_never_in_fp16() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("BF16", cpu) == "bf16"
    with pytest.raises(TrainingError, match=r"fp16 needs a CUDA device.*bf16 or fp32"):
        resolve_precision("fp16", cpu)


def test_torchrun_environment_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert Distributed.from_env() == Distributed(0, 0, 1) and not Distributed.from_env().active
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = Distributed.from_env()
    assert (d.rank, d.local_rank, d.world_size, d.active, d.is_main) == (3, 1, 4, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(TrainingError, match="RANK=4 WORLD_SIZE=4"):
        Distributed.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(TrainingError, match="bad torchrun environment"):
        Distributed.from_env()


def _conv_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Record the output dtype of the stem convolution of every network train_defect_net builds."""
    seen: list[torch.dtype] = []
    new_net = defectnet._new_net

    def spy(config: DefectTrainConfig, *, pretrained: bool) -> defectnet.DefectNet | BackboneDefectNet:
        net = new_net(config, pretrained=pretrained)
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        return net

    monkeypatch.setattr(defectnet, "_new_net", spy)
    return seen


@pytest.mark.slow
def test_bf16_on_the_cpu_trains_in_bfloat16_validates_and_keeps_float32_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _conv_dtypes(monkeypatch)
    fit = train_defect_net(pool(16, 0), pool(8, 1), tiny(max_epochs=2, precision="bf16"), tmp_path)
    # the training steps ran in bfloat16, the validation passes in float32 (the figures are the model's)
    assert torch.bfloat16 in seen and torch.float32 in seen
    assert fit.precision == "bf16" and fit.device == "cpu" and fit.world_size == 1
    assert all(np.isfinite(r["train_loss"]) for r in fit.history) and fit.epochs_run == 2
    assert all(p.dtype == torch.float32 for p in fit.net.parameters())
    best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert all(v.dtype != torch.bfloat16 for v in best.values())


@pytest.mark.slow
def test_the_cpu_default_is_float32_throughout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _conv_dtypes(monkeypatch)
    fit = train_defect_net(pool(16, 0), pool(8, 1), tiny(max_epochs=1), tmp_path)
    assert seen and set(seen) == {torch.float32} and fit.precision == "fp32"


def test_amp_in_fp32_is_a_plain_optimizer_step() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    amp = Amp("fp32", torch.device("cpu"))
    with amp.autocast():
        loss_a = a(x).square().mean()
    amp.step(loss_a, opt_a)
    opt_b.zero_grad()
    b(x).square().mean().backward()
    opt_b.step()
    torch.testing.assert_close(a.weight, b.weight)
    assert not amp.scaler.is_enabled()


def _torchrun(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("members", [1, 2])
def test_two_torchrun_processes_train_one_network_in_step(tmp_path: Path, members: int) -> None:
    # given two processes started by torchrun on the CPU (Gloo), each drawing its own batches
    run = _torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), str(members), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # then their gradients were averaged: both end with the same weights, and training moved them
    assert ranks[0]["weights_sha"] == ranks[1]["weights_sha"] != ranks[0]["initial_sha"]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["device"] == "cpu"
    assert all(r["left_group"] for r in ranks)  # Distributed.finish: both left the process group
    # an epoch is still one pass: 32 images in batches of 4 on each of 2 ranks are 4 steps
    folder = tmp_path / "ckpt" / ("member1" if members == 2 else "")
    last = torch.load(folder / "last.pt", weights_only=False)
    assert last["epoch"] == 2 and last["step"] == 8
    assert len((folder / "log.csv").read_text().splitlines()) == 3  # rank 0 alone wrote the log
    if members == 2:  # an ensemble's members trained in turn, and rank 0 returned their ensemble
        assert ranks[0]["members"] == 2 and (tmp_path / "ckpt" / "member0" / "best.pt").is_file()


@pytest.mark.slow
def test_qcstation_train_under_torchrun_writes_one_model_from_rank_0(tmp_path: Path) -> None:
    from qcstation.inspect.detector import Detector
    from training.test_defectnet import make_spots_dataset

    # given the default recipe (three members) started as two torchrun processes, no work dir given
    root = make_spots_dataset(tmp_path / "data")
    out = tmp_path / "model.onnx"
    args = ["-m", "qcstation.cli", "train", str(root), "--out", str(out), "--epochs", "1", "--device", "cpu"]
    run = _torchrun(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # then rank 0 alone reported and exported, into the one work dir both ranks shared
    report = json.loads(run.stdout)
    assert report["model"] == str(out) and "test" in report
    prov = Detector.from_path(out).card.provenance
    assert prov["training"]["trained_on"] == {"device": "cpu", "precision": "fp32", "processes": 2}
    checkpoints = Path(report["report"]).parents[1] / "checkpoints"  # <work dir>/eval/report.md
    lasts = [torch.load(checkpoints / f"member{k}" / "last.pt", weights_only=False) for k in range(3)]
    assert [s["epoch"] for s in lasts] == [1, 1, 1]
    assert [s["config"]["seed"] for s in lasts] == [0, 1, 2]


@pytest.mark.slow
def test_a_torchrun_rank_that_fails_exits_with_its_error_and_code(tmp_path: Path) -> None:
    # given `qcstation train` under torchrun on a dataset that is not there
    args = ["-m", "qcstation.cli", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]
    run = _torchrun(*args, "--epochs", "1", "--device", "cpu", cwd=tmp_path)
    # then the first rank to fail said why and exited 2 (through end_process, the code kept; torchrun stops
    # the other), and the job failed
    assert run.returncode != 0
    assert "not found" in run.stderr and "exitcode  : 2" in run.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_the_segmentation_engine_trains_in_bf16_on_the_cpu_too(tmp_path: Path) -> None:
    from qcstation.training.engine import TrainConfig, fit, model_from_checkpoint
    from qcstation.training.nets import build_model

    p = pool(12, 0)
    samples = [
        (torch.from_numpy(im).float().div(255).unsqueeze(0), torch.from_numpy(m).long())
        for im, m in zip(p.images, p.masks, strict=True)
    ]
    model = build_model("unet_small", 1, 2, width=8)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[torch.dtype] = []
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    config = TrainConfig(
        classes=("good", "defect"), arch_kwargs={"width": 8}, epochs=2, batch_size=4, precision="bf16"
    )
    result = fit(model, samples[:8], samples[8:], config, tmp_path)
    assert torch.bfloat16 in seen and torch.float32 in seen  # bf16 steps, fp32 validation
    assert result.epochs_run == 2 and all(np.isfinite(r["train_loss"]) for r in result.history)
    best, _ = model_from_checkpoint(result.best_checkpoint)
    assert all(q.dtype == torch.float32 for q in best.parameters())
    fp16 = TrainConfig(classes=("good", "defect"), precision="fp16")
    with pytest.raises(TrainingError, match="fp16 needs a CUDA device"):
        fit(model, samples[:8], samples[8:], fp16, tmp_path)
