"""The network registry: shapes, sizes and clear errors."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch

from qcstation.training.errors import ModelBuildError, WeightsUnavailableError
from qcstation.training.nets import build_model, count_parameters

pytestmark = pytest.mark.train


@pytest.mark.parametrize(("channels", "size"), [(1, 64), (3, 48), (1, 256)])
def test_unet_small_returns_full_resolution_logits(channels: int, size: int) -> None:
    net = build_model("unet_small", channels, 5).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 5, size, size)


def test_unet_small_default_size_is_small() -> None:
    assert 300_000 <= count_parameters(build_model("unet_small", 1, 5)) <= 1_000_000
    assert count_parameters(build_model("unet_small", 1, 5, width=8)) < 150_000


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ModelBuildError, match=r"unknown architecture 'resnet9000'; known: \[.*'unet_small'"):
        build_model("resnet9000", 1, 5)


def test_bad_option_is_a_build_error() -> None:
    with pytest.raises(ModelBuildError, match="bad options for unet_small"):
        build_model("unet_small", 1, 5, colour="red")


def test_torchvision_model_is_adapted_to_one_channel() -> None:
    net = build_model("lraspp_mobilenet_v3_large", 1, 3).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64)


def test_pretrained_weights_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # given no network: torchvision's weights download fails as it does offline
    import torchvision.models._api as api

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match=r"could not be fetched .*Pass pretrained=False"):
        build_model("lraspp_mobilenet_v3_large", 1, 3, pretrained=True)


def test_unet_small_has_no_pretrained_weights() -> None:
    with pytest.raises(ModelBuildError, match="no pretrained weights; pass pretrained=False"):
        build_model("unet_small", 1, 2, pretrained=True)
