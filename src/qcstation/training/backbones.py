"""DefectNet on a torchvision ResNet encoder, optionally with its ImageNet weights (``--backbone``).

Small-data defect models owe most of their quality to their features: the published magnetic-tile results
(AUROC ~0.98) stand on ImageNet-pretrained encoders, where a network trained from scratch on ~70 defective
tiles stays near 0.95. :class:`BackboneDefectNet` keeps :class:`~qcstation.training.defectnet.DefectNet`'s
contract (``forward_both`` -> segmentation and image logits, the same image head, the same gray input
normalised with mean 0.5 and std 0.25) and swaps the from-scratch U-Net encoder for a ResNet's stages,
with a light top-down decoder back to half resolution and a bilinear upsampling to the input size.

Weights come through torchvision's weights API (``ResNet18_Weights.IMAGENET1K_V1`` ...), which downloads
into the torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch``) once and reads the
file from there afterwards. Offline, :func:`fetch_weights` raises
:class:`~qcstation.training.errors.WeightsUnavailableError` naming the file and where to put it. Weights
are fetched only to start training: a trained checkpoint holds every weight, so loading, resuming and
exporting it never need the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from qcstation.training.defectnet import box_mean, pooled_features
from qcstation.training.errors import ModelBuildError, WeightsUnavailableError
from qcstation.training.nets import ConvBNReLU

if TYPE_CHECKING:
    from torchvision.models import ResNet

BACKBONES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", (64, 64, 128, 256, 512)),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", (64, 64, 128, 256, 512)),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", (64, 256, 512, 1024, 2048)),
}
"""Encoder name -> (torchvision weights enum entry, channels of its five stages at 1/2 .. 1/32)."""

# the station feeds (gray - 0.5) / 0.25; ImageNet's encoders expect (gray - 0.449) / 0.226 on every channel
_IMAGENET_GRAY_MEAN, _IMAGENET_GRAY_STD = 0.449, 0.226
_STATION_MEAN, _STATION_STD = 0.5, 0.25


def check_backbone(name: str) -> None:
    """Raise :class:`ModelBuildError` unless ``name`` is a key of :data:`BACKBONES`."""
    if name not in BACKBONES:
        raise ModelBuildError(f"unknown backbone {name!r}; known: unet, {', '.join(sorted(BACKBONES))}")


def weights_file(name: str) -> Path:
    """Where torchvision's weights API keeps (and looks for) the ImageNet weights of backbone ``name``."""
    from torchvision.models import get_weight

    check_backbone(name)
    url = str(get_weight(BACKBONES[name][0]).url)
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch_weights(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of backbone ``name`` through torchvision's weights API (download once).

    Raises:
        ModelBuildError: unknown backbone.
        WeightsUnavailableError: the weights could neither be read from the cache nor downloaded.
    """
    from torchvision.models import get_weight

    check_backbone(name)
    weights = get_weight(BACKBONES[name][0])
    try:
        state: dict[str, torch.Tensor] = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # urllib, hash-check, unpickling and I/O errors all mean "no weights"
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        file = weights_file(name)
        raise WeightsUnavailableError(
            f"--pretrained: the ImageNet weights of {name} ({BACKBONES[name][0]}) could not be had "
            f"({type(e).__name__}: {detail[:200]}); this machine may be offline. Copy {file.name} "
            f"(from {weights.url}) to {file} and run again, or train without --pretrained"
        ) from e
    return state


def _resnet(name: str) -> ResNet:
    from torchvision import models

    net: ResNet = getattr(models, name)(weights=None)
    return net


class BackboneDefectNet(nn.Module):
    """A ResNet encoder, a top-down decoder and DefectNet's image head; ``forward_both`` as DefectNet's.

    Args:
        in_channels: 1 (gray; the station's models are gray).
        num_classes: classes, index 0 = good.
        backbone: a key of :data:`BACKBONES`.
        pretrained: start from the ImageNet weights (:func:`fetch_weights`); the first convolution takes
            their sum over RGB for the gray channel (what the RGB network sees for a gray image) and zeros
            for the local-contrast channel, so the network starts as ImageNet's.
        width: decoder channels.
        dropout: dropout before the head's last layer.
        local_contrast: as DefectNet's: a second input channel, the image minus its box mean of this side.
        pool_topk: as DefectNet's.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        backbone: str = "resnet18",
        *,
        pretrained: bool = False,
        width: int = 64,
        dropout: float = 0.2,
        local_contrast: int = 31,
        pool_topk: float = 0.0,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        if in_channels != 1:
            raise ModelBuildError(f"BackboneDefectNet takes gray input (1 channel), got {in_channels}")
        self.backbone = backbone
        self.local_contrast = local_contrast
        self.pool_topk = pool_topk
        resnet = _resnet(backbone)
        if pretrained:
            resnet.load_state_dict(fetch_weights(backbone))
        rgb = resnet.conv1
        inputs = 2 if local_contrast else 1
        conv1 = nn.Conv2d(inputs, rgb.out_channels, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            if pretrained:
                conv1.weight.zero_()
                conv1.weight[:, :1].copy_(rgb.weight.sum(dim=1, keepdim=True))
        self.stem = nn.Sequential(conv1, resnet.bn1, resnet.relu)
        self.stages = nn.ModuleList(
            [nn.Sequential(resnet.maxpool, resnet.layer1), resnet.layer2, resnet.layer3, resnet.layer4]
        )
        chans = BACKBONES[backbone][1]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1, bias=False) for c in chans)
        self.refine = nn.ModuleList(ConvBNReLU(width, width) for _ in chans[:-1])
        self.head = nn.Conv2d(width, num_classes, 1)
        feats = 2 * chans[-1] + 2 * chans[-2] + (3 if pool_topk > 0 else 2) * (num_classes - 1)
        self.image_head = nn.Sequential(
            nn.Linear(feats, 64), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, num_classes)
        )

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The ResNet's own parameters (what ``backbone_lr_scale`` slows down when pretrained)."""
        return [*self.stem.parameters(), *self.stages.parameters()]

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(segmentation logits N x C x H x W, image logits N x C)."""
        gray = (x * _STATION_STD + _STATION_MEAN - _IMAGENET_GRAY_MEAN) / _IMAGENET_GRAY_STD
        inp = gray
        if self.local_contrast:
            inp = torch.cat([gray, 4.0 * (x - box_mean(x, self.local_contrast))], dim=1)
        feats = [self.stem(inp)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        y = self.lateral[-1](feats[-1])
        for i in reversed(range(len(feats) - 1)):
            skip = self.lateral[i](feats[i])
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = self.refine[i](F.relu(y + skip))
        seg: torch.Tensor = F.interpolate(
            self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        img = self.image_head(pooled_features(feats[-1], feats[-2], seg, self.pool_topk))
        return seg, img

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only (the plain segmentation interface)."""
        return self.forward_both(x)[0]


def build_backbone_net(num_classes: int, config: dict[str, Any], *, pretrained: bool) -> BackboneDefectNet:
    """The network a DefectNet config with a ResNet ``backbone`` describes (weights: ImageNet or fresh)."""
    return BackboneDefectNet(
        1,
        num_classes,
        str(config["backbone"]),
        pretrained=pretrained,
        local_contrast=int(config.get("local_contrast", 31)),
        pool_topk=float(config.get("pool_topk", 0.0)),
    )
