"""Segmentation networks and the registry :func:`build_model` makes them from.

Every network maps N x C_in x H x W normalised images to N x C x H x W class logits at full input
resolution (the export wraps it with a softmax). ``unet_small`` is what the station ships: small enough to
run a 256 x 256 frame in tens of milliseconds on two CPU cores. torchvision architectures are available
under their torchvision names, adapted to one input channel when asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcstation.training.errors import ModelBuildError, WeightsUnavailableError

log = logging.getLogger(__name__)

DEFAULT_ARCH = "unet_small"


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (optionally strided), batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNetSmall(nn.Module):
    """A compact U-Net: a full-resolution stem, ``depth`` strided stages, and an additive-skip decoder.

    Encoder channels are ``width * 2**i`` at 1/2 .. 1/2**depth of the input; the stem keeps ``width // 2``
    channels at full resolution so thin defects (scratches, hairline cracks) survive to the output. Each
    decoder step reduces the deeper features with a 1x1 convolution at low resolution (cheap), upsamples
    bilinearly, adds the skip, and refines with one 3x3 convolution.

    Args:
        in_channels: 1 (gray) or 3.
        num_classes: output classes (index 0 = good).
        width: channels of the first stage; the default 16 gives about 0.35 M parameters.
        depth: number of strided stages; input height and width should be multiples of ``2**depth``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        if width < 4 or depth < 1:
            raise ModelBuildError(f"unet_small: expected width >= 4 and depth >= 1, got {width}, {depth}")
        c0 = max(4, width // 2)
        chans = [c0] + [width * 2**i for i in range(depth)]
        self.stem = ConvBNReLU(in_channels, c0)
        self.down = nn.ModuleList(
            nn.Sequential(
                ConvBNReLU(chans[i], chans[i + 1], stride=2), ConvBNReLU(chans[i + 1], chans[i + 1])
            )
            for i in range(depth)
        )
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i + 1], chans[i], 1, bias=False), nn.BatchNorm2d(chans[i]))
            for i in reversed(range(depth))
        )
        self.refine = nn.ModuleList(ConvBNReLU(chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(c0, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, N x num_classes x H x W."""
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        y = skips.pop()
        for reduce, refine in zip(self.reduce, self.refine, strict=True):
            skip = skips.pop()
            y = F.interpolate(reduce(y), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = refine(F.relu(y + skip))
        out: torch.Tensor = self.head(y)
        return out


class TorchvisionSegmenter(nn.Module):
    """Adapts a torchvision segmentation model (it returns ``{"out": ...}``) to return the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, N x num_classes x H x W."""
        out: torch.Tensor = self.model(x)["out"]
        return out


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first 3-channel convolution with an ``in_channels`` one (gray: summed RGB weights)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride,  # type: ignore[arg-type]
                    padding=child.padding,  # type: ignore[arg-type]
                    dilation=child.dilation,  # type: ignore[arg-type]
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                with torch.no_grad():
                    conv.weight.copy_(child.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1))
                    if child.bias is not None and conv.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
                return
    raise ModelBuildError(f"no 3-channel input convolution found in {type(model).__name__} to adapt")


def _torchvision_builder(fn_name: str, backbone_weights: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, *, pretrained: bool = False, **kw: Any) -> nn.Module:
        from torchvision.models import get_weight, segmentation

        fn = getattr(segmentation, fn_name)
        weights_backbone = get_weight(backbone_weights) if pretrained else None
        try:
            model = fn(weights=None, weights_backbone=weights_backbone, num_classes=num_classes, **kw)
        except (OSError, RuntimeError, ValueError) as e:
            if not pretrained:
                raise ModelBuildError(f"cannot build {fn_name}: {e}") from e
            detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
            raise WeightsUnavailableError(
                f"pretrained weights {backbone_weights} for {fn_name} could not be fetched "
                f"({type(e).__name__}: {detail}); this machine may be offline. Pass pretrained=False to "
                "train from scratch, or copy the weights file into the torch hub cache "
                "($TORCH_HOME/hub/checkpoints) first."
            ) from e
        if in_channels != 3:
            _adapt_first_conv(model, in_channels)
        return TorchvisionSegmenter(model)

    return build


def _unet_small(in_channels: int, num_classes: int, *, pretrained: bool = False, **kw: Any) -> nn.Module:
    if pretrained:
        raise ModelBuildError("unet_small has no pretrained weights; pass pretrained=False")
    return UNetSmall(in_channels, num_classes, **kw)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet_small": _unet_small,
    "fcn_resnet50": _torchvision_builder("fcn_resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    "deeplabv3_resnet50": _torchvision_builder("deeplabv3_resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    "deeplabv3_mobilenet_v3_large": _torchvision_builder(
        "deeplabv3_mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    ),
    "lraspp_mobilenet_v3_large": _torchvision_builder(
        "lraspp_mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    ),
}


def build_model(name: str, in_channels: int, num_classes: int, **kw: Any) -> nn.Module:
    """Build a segmentation network by name.

    Args:
        name: a key of :data:`ARCHITECTURES` ("unet_small", "fcn_resnet50", "deeplabv3_mobilenet_v3_large",
            "lraspp_mobilenet_v3_large", ...).
        in_channels: 1 (gray) or 3; torchvision models get their first convolution adapted for 1.
        num_classes: output classes, index 0 = good.
        **kw: architecture options, e.g. ``width`` for unet_small, ``pretrained=True`` for torchvision
            models (ImageNet backbone weights through torchvision's weights API).

    Returns:
        A module mapping N x in_channels x H x W to N x num_classes x H x W logits.

    Raises:
        ModelBuildError: unknown name or impossible options.
        WeightsUnavailableError: ``pretrained=True`` but the weights could not be fetched.
    """
    if name not in ARCHITECTURES:
        raise ModelBuildError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    if in_channels not in (1, 3):
        raise ModelBuildError(f"expected in_channels 1 or 3, got {in_channels}")
    if num_classes < 2:
        raise ModelBuildError(f"expected at least 2 classes (index 0 = good), got {num_classes}")
    try:
        return ARCHITECTURES[name](in_channels, num_classes, **kw)
    except TypeError as e:
        raise ModelBuildError(f"bad options for {name}: {e}") from e


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
