"""Small-data defect models: a U-Net with a jointly trained image-level head, and its time-budgeted training.

The network (:class:`DefectNet`) is :class:`~qcstation.training.nets.UNetSmall` plus a decision head in the
spirit of Božič et al., "Mixed supervision for surface-defect detection" (2021): global max and average
pooled deep features and the pooled defect logits feed a small MLP that gives N x C image logits. Image-level
supervision is what moves the image AUROC on small data; the masks still teach the network *where* to look.

The exported graph (:class:`StationModel`) averages over test-time flips and *gates* the probability maps by
the image head: the defect map is the segmentation's defect probability normalised to its maximum, times
the image head's defect probability. So the map's maximum equals the image score, and the station's region
verdict at a threshold is exactly "image score >= threshold", while the regions still show where.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import pickle
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qcstation.inspect.metrics import auroc, recall_at_frr
from qcstation.training.anomaly import paste_defect, synthesize_anomaly
from qcstation.training.augment import load_augmentation
from qcstation.training.data import _albumentations, normalise
from qcstation.training.devices import Amp, Distributed, resolve_device, resolve_precision
from qcstation.training.errors import CheckpointError, ModelBuildError, TrainingError
from qcstation.training.nets import ConvBNReLU, UNetSmall

if TYPE_CHECKING:
    from qcstation.training.backbones import BackboneDefectNet

log = logging.getLogger(__name__)

MONITOR_EVERY = 5
"""Under ``keep_last``, the epochs between validation scores (the last epoch is always scored)."""


def _window_sum(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sums of ``k`` neighbours along ``dim`` (2 or 3), centred, the outside counting as zero."""
    n = x.shape[dim]
    r = k // 2
    pad = (0, 0, r + 1, r) if dim == 2 else (r + 1, r)
    run = F.pad(x, pad).cumsum(dim)
    return run.narrow(dim, k, n) - run.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the ``k`` x ``k`` window around each pixel (odd ``k``), the window clipped to the frame.

    The same values as two separable ``avg_pool2d`` with ``count_include_pad=False``, but from running sums:
    constant work per pixel where pooling does ``k`` additions (on a 2-core CPU the pooled version of a
    31-pixel window took about a quarter of a training step; ONNX exports it as CumSum and Slice).
    """
    if k % 2 != 1:
        raise ValueError(f"box_mean needs an odd window, got {k}")
    sums = _window_sum(_window_sum(x, k, 2), k, 3)
    counts = _window_sum(torch.ones_like(x[:1, :1, :, :1]), k, 2) * _window_sum(
        torch.ones_like(x[:1, :1, :1, :]), k, 3
    )
    return sums / counts


def pooled_features(
    deep: torch.Tensor, mid: torch.Tensor, seg: torch.Tensor, pool_topk: float
) -> torch.Tensor:
    """The image head's input: max and mean of the two deepest feature maps and of the defect margin.

    ``seg`` are the segmentation logits; the margin is each defect class's logit minus good's. With
    ``pool_topk`` > 0 the mean of the margin's top ``pool_topk`` share joins.
    """
    margin = seg[:, 1:] - seg[:, :1]
    parts = [
        deep.amax(dim=(2, 3)),
        deep.mean(dim=(2, 3)),
        mid.amax(dim=(2, 3)),
        mid.mean(dim=(2, 3)),
        margin.amax(dim=(2, 3)),
        margin.mean(dim=(2, 3)),
    ]
    if pool_topk > 0:
        flat = margin.flatten(2)
        k = max(1, int(pool_topk * int(flat.shape[2])))
        parts.append(flat.topk(k, dim=2).values.mean(dim=2))
    return torch.cat(parts, dim=1)


class DefectNet(UNetSmall):
    """U-Net segmentation plus an image-level head; ``forward`` returns (N x C x H x W, N x C) logits.

    Args:
        in_channels: 1 or 3.
        num_classes: classes, index 0 = good.
        width: first-stage width of the U-Net.
        depth: strided stages.
        dropout: dropout before the head's last layer.
        stem_stride: 2 runs the stem at half resolution (about 3x cheaper; the maps are upsampled at the end).
        local_contrast: side of the box filter whose output is subtracted from the image to make a second,
            illumination-free input channel (0: off). Lighting varies a lot between shots of one part; local
            contrast is what a defect changes.
        pool_topk: share of the defect-margin map whose mean is pooled next to its maximum and mean (0: off);
            steadier than the maximum alone, which a single noisy pixel can set.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 16,
        depth: int = 4,
        dropout: float = 0.2,
        stem_stride: int = 2,
        local_contrast: int = 31,
        pool_topk: float = 0.0,
    ) -> None:
        super().__init__(in_channels, num_classes, width, depth)
        self.in_channels = in_channels
        self.stem_stride = stem_stride
        self.local_contrast = local_contrast
        self.pool_topk = pool_topk
        c0 = max(4, width // 2)  # as UNetSmall's stem
        self.stem = ConvBNReLU(in_channels * (2 if local_contrast else 1), c0, stride=stem_stride)
        deep = width * 2 ** (depth - 1)
        mid = width * 2 ** max(0, depth - 2)
        feats = 2 * deep + 2 * mid + (3 if pool_topk > 0 else 2) * (num_classes - 1)
        self.image_head = nn.Sequential(
            nn.Linear(feats, 64), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, num_classes)
        )

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoder output at the stem's resolution, deepest encoder stage, the stage above it)."""
        inp = x
        if self.local_contrast:
            inp = torch.cat([x, 4.0 * (x - box_mean(x, self.local_contrast))], dim=1)
        skips = [self.stem(inp)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        deep, mid = skips[-1], skips[-2]
        y = skips.pop()
        for reduce, refine in zip(self.reduce, self.refine, strict=True):
            skip = skips.pop()
            y = F.interpolate(reduce(y), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = refine(F.relu(y + skip))
        return y, deep, mid

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(segmentation logits N x C x H x W, image logits N x C)."""
        y, deep, mid = self.features(x)
        seg: torch.Tensor = self.head(y)
        if self.stem_stride != 1:  # a Python condition: exported graphs must not branch on shapes
            # the 2-channel logits upsampled in the default layout: from channels-last, PyTorch's CPU
            # bilinear kernel took ~30 ms of a ~250 ms training step (forward + backward, batch 12, one
            # thread), contiguous ~19 ms, for the same numbers (a no-op in the exported graph)
            seg = F.interpolate(seg.contiguous(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return seg, self.image_head(pooled_features(deep, mid, seg, self.pool_topk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only (the plain segmentation interface)."""
        return self.forward_both(x)[0]


class DefectEnsemble(nn.Module):
    """Several :class:`DefectNet` s of one class list as one network: their probabilities are averaged.

    ``forward_both`` returns the *log* of the members' mean softmax probabilities, so a softmax over its
    output (what :class:`StationModel` applies) gives exactly the averaged probabilities.

    Args:
        members: the trained networks (same classes).
    """

    def __init__(self, members: Sequence[DefectNet | BackboneDefectNet]) -> None:
        super().__init__()
        if not members:
            raise TrainingError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log mean segmentation probabilities N x C x H x W, log mean image probabilities N x C)."""
        seg_sum: torch.Tensor | None = None
        img_sum: torch.Tensor | None = None
        for net in self.members:
            seg, img = cast("DefectNet | BackboneDefectNet", net).forward_both(x)
            s, p = seg.softmax(dim=1), img.softmax(dim=1)
            seg_sum = s if seg_sum is None else seg_sum + s
            img_sum = p if img_sum is None else img_sum + p
        assert seg_sum is not None and img_sum is not None
        n = float(len(self.members))
        return (seg_sum / n).clamp(min=1e-12).log(), (img_sum / n).clamp(min=1e-12).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log mean segmentation probabilities (the plain segmentation interface)."""
        return self.forward_both(x)[0]


Transform = tuple[bool, tuple[int, ...]]
"""A dihedral test-time transform: (transpose H and W first, then flip these dims)."""


def _apply(x: torch.Tensor, t: Transform) -> torch.Tensor:
    transpose, dims = t
    x = x.transpose(2, 3) if transpose else x
    return x.flip(dims) if dims else x


def _undo(x: torch.Tensor, t: Transform) -> torch.Tensor:
    transpose, dims = t
    x = x.flip(dims) if dims else x  # flips are their own inverse
    return x.transpose(2, 3) if transpose else x


class StationModel(nn.Module):
    """What the station runs: test-time-augmented, gated probability maps and image-level probabilities.

    Args:
        net: a :class:`DefectNet` (or a :class:`DefectEnsemble`).
        tta: average over identity, horizontal, vertical and both flips.
        rotations: with ``tta``, average over all 8 dihedral transforms (the 4 flips and the 4 flips of
            the 90°-turned image); needs a square input.
    """

    def __init__(
        self, net: DefectNet | BackboneDefectNet | DefectEnsemble, tta: bool = True, rotations: bool = False
    ) -> None:
        super().__init__()
        self.net = net
        self.tta = tta
        self.rotations = rotations

    def transforms(self) -> list[Transform]:
        """The transforms averaged over (ONNX has no rot90: turns are a transpose plus flips)."""
        flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]  # identity, h-flip, v-flip, both flips
        if not self.tta:
            return [(False, ())]
        return [(t, f) for t in ((False, True) if self.rotations else (False,)) for f in flips]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs N x C x H x W, image_probs N x C)."""
        transforms = self.transforms()
        seg_sum: torch.Tensor | None = None
        img_sum: torch.Tensor | None = None
        for t in transforms:
            seg, img = self.net.forward_both(_apply(image, t))
            s = _undo(seg.softmax(dim=1), t)
            p = img.softmax(dim=1)
            seg_sum = s if seg_sum is None else seg_sum + s
            img_sum = p if img_sum is None else img_sum + p
        assert seg_sum is not None and img_sum is not None
        seg_p = seg_sum / len(transforms)
        img_p = img_sum / len(transforms)
        defect = seg_p[:, 1:]
        peak = defect.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
        # each defect class keeps its share of the map; the map's peak becomes the image score
        scale = img_p[:, 1:].amax(dim=1).reshape(-1, 1, 1, 1) / peak
        gated = defect * scale
        good = (1.0 - gated.sum(dim=1, keepdim=True)).clamp(min=0.0)
        return torch.cat([good, gated], dim=1), img_p


# -- data ---------------------------------------------------------------------------------------------------


@dataclass
class Pool:
    """Images and masks in memory at the training size.

    Attributes:
        images: H x W uint8 images.
        masks: H x W uint8 class-index masks.
        names: file names (for reports).
        groups: group keys.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        """1 for images with defect pixels."""
        return np.array([int(m.any()) for m in self.masks], np.int64)

    def subset(self, indices: Sequence[int]) -> Pool:
        """The images at ``indices``, in that order."""
        return Pool(
            [self.images[i] for i in indices],
            [self.masks[i] for i in indices],
            [self.names[i] for i in indices] if self.names else [],
            [self.groups[i] for i in indices] if self.groups else [],
        )

    def image_class(self) -> np.ndarray:
        """Per image, its most frequent defect class (0 = good)."""
        out = []
        for m in self.masks:
            counts = np.bincount(m.ravel())
            counts[0] = 0
            out.append(int(counts.argmax()) if counts.sum() else 0)
        return np.array(out, np.int64)


def augmentation(
    preset: str = "default", *, rotate90: bool = True, strength: float | None = None, seed: int | None = None
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """albumentations pipeline for image + mask: flips, 90° turns, small affine, lighting, gamma, noise.

    Args:
        preset: "light" (flips and lighting) or "default" / "heavy" (adds affine, gamma, blur, noise).
        rotate90: include random 90° turns. Off for parts filmed in a fixed orientation whose texture has
            a direction (magnetic tile's grinding marks run along the tile): a turned image is then
            nothing the camera can see.
        strength: scales the preset's ranges (a YAML override, :mod:`qcstation.training.augment`); None:
            the preset's own (light 0.5, default 1.0, heavy 1.5).
        seed: seed of the pipeline's own random generators (albumentations ignores the global seeds), so a
            training run with a fixed seed sees the same augmented images; None: unseeded.
    """
    A = _albumentations()
    base = {"light": 0.5, "default": 1.0, "heavy": 1.5}[preset]
    strength = base if strength is None else base * strength
    ops: list[Any] = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if rotate90:
        ops.append(A.RandomRotate90(p=0.5))
    if preset != "light":
        ops.append(
            A.Affine(
                scale=(1 - 0.1 * strength, 1 + 0.1 * strength),
                translate_percent=(-0.05 * strength, 0.05 * strength),
                rotate=(-10 * strength, 10 * strength),
                border_mode=4,
                p=0.6,
            )
        )
    ops += [
        A.RandomBrightnessContrast(brightness_limit=0.2 * strength, contrast_limit=0.2 * strength, p=0.8),
        A.RandomGamma(gamma_limit=(80, 120), p=0.4),
    ]
    if preset != "light":
        ops += [A.GaussianBlur(blur_limit=(3, 3), p=0.15), A.GaussNoise(std_range=(0.0, 0.03), p=0.25)]
    pipeline = A.Compose(ops, seed=seed)

    def apply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"]

    return apply


class BatchMaker:
    """Draws class-balanced, augmented training batches (and synthetic anomalies in good-only mode).

    Args:
        pool: the training images.
        batch_size: images per batch.
        defect_share: share of each batch drawn from defective images (real or synthetic).
        synthetic: make the defective share by drawing anomalies onto good images (good-only mode).
        synthetic_share: in supervised mode, share of the defective draws made synthetic (class 1).
        hard_good: share of the good draws picked in proportion to how defective the network last
            scored that image (:meth:`score_good`), the rest uniformly: the good parts the network
            confuses with defects are the false rejects that set a low false-reject operating point.
        paste_share: share of the real defective draws whose defect is pasted onto a random good image
            (:func:`~qcstation.training.anomaly.paste_defect`): the same real defects on other tiles, so a
            few dozen defective parts are seen on many backgrounds. A defect that touches the frame's border
            is not pasted (drawn as it is): there it is part of the part's outline (magnetic tile's breaks),
            and another part's outline runs elsewhere.
        preset: augmentation preset (light, default, heavy) or a YAML file (training.augment).
        rotate90: random 90° turns in the augmentation.
        seed: random seed.
        mean: normalisation mean.
        std: normalisation std.
    """

    def __init__(
        self,
        pool: Pool,
        batch_size: int,
        *,
        defect_share: float = 0.5,
        synthetic: bool = False,
        synthetic_share: float = 0.0,
        hard_good: float = 0.0,
        paste_share: float = 0.0,
        preset: str = "default",
        rotate90: bool = True,
        seed: int = 0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
    ) -> None:
        self.pool = pool
        self.batch_size = batch_size
        self.defect_share = defect_share
        self.synthetic = synthetic
        self.synthetic_share = synthetic_share
        self.hard_good = hard_good
        self.paste_share = paste_share
        self.rng = np.random.default_rng(seed)
        self.aug = load_augmentation(preset, rotate90=rotate90, seed=seed)
        self.mean, self.std = tuple(mean), tuple(std)
        labels = pool.labels()
        self.good = np.flatnonzero(labels == 0)
        self.bad = np.flatnonzero(labels == 1)
        if len(self.good) == 0 or (not synthetic and len(self.bad) == 0):
            raise TrainingError(
                f"need good and defective training images, got {len(self.good)} good, "
                f"{len(self.bad)} defective"
                + ("" if synthetic else "; use good-only mode for a set without defects")
            )
        self.crop = 0  # side of the random square crops drawn (0: whole images); the training loop sets it
        # per good image, the network's last defect probability for it (0.5 until it was seen)
        self.good_scores = np.full(len(self.good), 0.5)
        self.drawn_good: list[tuple[int, int]] = []  # (position in the last batch, index into self.good)

    def _pick_good(self) -> int:
        """An index into ``self.good``: uniform, or (share ``hard_good``) weighted by its last score."""
        if self.hard_good > 0 and self.rng.random() < self.hard_good:
            w = self.good_scores + 1e-3
            return int(self.rng.choice(len(self.good), p=w / w.sum()))
        return int(self.rng.integers(len(self.good)))

    def score_good(self, defect_probs: np.ndarray) -> None:
        """Record the network's defect probability for the real good images of the last batch."""
        for pos, k in self.drawn_good:
            self.good_scores[k] = float(defect_probs[pos])

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images N x 1 x H x W, masks N x H x W long)."""
        xs, ms = [], []
        self.drawn_good = []
        for pos in range(self.batch_size):
            want_bad = self.rng.random() < self.defect_share
            if self.synthetic:
                i = int(self.rng.choice(self.good))
                img, mask = self.aug(self.pool.images[i], self.pool.masks[i])
                if want_bad:
                    others = [self.pool.images[int(j)] for j in self.rng.choice(self.good, 2)]
                    img, drawn = synthesize_anomaly(img, others, self.rng)
                    mask = drawn.astype(np.uint8)
            elif want_bad and self.rng.random() < self.synthetic_share:
                # a synthetic anomaly on a real good image: cheap extra "defects" that teach the network
                # that a local irregularity is what matters, not the lighting or the tile's shape
                i = int(self.rng.choice(self.good))
                img, mask = self.aug(self.pool.images[i], self.pool.masks[i])
                others = [self.pool.images[int(j)] for j in self.rng.choice(self.good, 2)]
                img, drawn = synthesize_anomaly(img, others, self.rng)
                mask = drawn.astype(np.uint8)
            elif want_bad:
                i = int(self.rng.choice(self.bad))
                img, mask = self.aug(self.pool.images[i], self.pool.masks[i])
                if self.rng.random() < self.paste_share and not touches_border(mask):
                    g = int(self.rng.choice(self.good))
                    base, _ = self.aug(self.pool.images[g], self.pool.masks[g])
                    img, mask = paste_defect(base, img, mask, self.rng)
            else:
                k = self._pick_good()
                self.drawn_good.append((pos, k))
                i = int(self.good[k])
                img, mask = self.aug(self.pool.images[i], self.pool.masks[i])
            if self.crop:
                img, mask = random_crop(img, mask, self.crop, self.rng)
            xs.append(normalise(img, self.mean, self.std))
            ms.append(torch.from_numpy(np.ascontiguousarray(mask)).long())
        return torch.stack(xs), torch.stack(ms)


def random_crop(
    image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` x ``size`` window of an image and its mask; one holding a labelled pixel if any is.

    With defect pixels, one of them is drawn and the window placed uniformly among those that hold it, so a
    defective draw stays defective (and its defect lands anywhere in the window, not always mid-way).
    Not albumentations' ``CropNonEmptyMaskIfExists`` (which :func:`~qcstation.training.data.train_transform`
    uses before augmenting): this crop comes after a defect is pasted or drawn, so it cannot sit in the
    augmentation pipeline; it draws from the batch maker's one seeded generator; and that transform clips an
    offset that runs off the image to the border, so a defect near the edge (magnetic tile's breaks) would
    mostly land on the crop's edge.
    """
    h, w = mask.shape[:2]
    if size > min(h, w):
        raise ValueError(f"a {size} px crop does not fit a {w}x{h} image")
    ys, xs = np.nonzero(mask)
    if len(ys):
        k = int(rng.integers(len(ys)))
        y, x = int(ys[k]), int(xs[k])
        top = int(rng.integers(max(0, y - size + 1), min(y, h - size) + 1))
        left = int(rng.integers(max(0, x - size + 1), min(x, w - size) + 1))
    else:
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return image[top : top + size, left : left + size], mask[top : top + size, left : left + size]


def touches_border(mask: np.ndarray) -> bool:
    """Whether any labelled pixel lies on the frame's outermost rows or columns."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def group_folds(pool: Pool, folds: int, seed: int) -> list[list[int]]:
    """Split a pool's image indices into ``folds`` folds by group, stratified by whether a group has defects.

    Groups with defective images and groups of good images alone are each shuffled (seeded) and dealt out in
    turn, so every fold holds defective and good parts, and no group (physical part) is in two folds.

    Args:
        pool: images with their group keys (an image without one is its own group).
        folds: number of folds, at least 2.
        seed: shuffling seed (the same seed gives the same folds).

    Returns:
        One sorted index list per fold.

    Raises:
        TrainingError: fewer than 2 folds, or fewer defective or good groups than folds.
    """
    if folds < 2:
        raise TrainingError(f"expected at least 2 folds, got {folds}")
    keys = pool.groups if pool.groups else [str(i) for i in range(len(pool.images))]
    labels = pool.labels()
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(keys):
        by_group.setdefault(g, []).append(i)
    bad = sorted(g for g, idx in by_group.items() if labels[idx].any())
    good = sorted(g for g, idx in by_group.items() if not labels[idx].any())
    if len(bad) < folds or len(good) < folds:
        raise TrainingError(
            f"cannot make {folds} folds with defective and good parts in each: {len(bad)} defective and "
            f"{len(good)} good group(s)"
        )
    rng = random.Random(seed)
    rng.shuffle(bad)
    rng.shuffle(good)
    out: list[list[int]] = [[] for _ in range(folds)]
    for k, g in enumerate(bad + good):
        out[k % folds].extend(by_group[g])
    return [sorted(f) for f in out]


def synthetic_validation(pool: Pool, seed: int) -> Pool:
    """Good-only validation: every good image as is, plus a copy with a seeded synthetic anomaly."""
    rng = np.random.default_rng(seed)
    images, masks, names = list(pool.images), list(pool.masks), list(pool.names)
    for k, img in enumerate(pool.images):
        others = [pool.images[(k + 1) % len(pool.images)]]
        out, drawn = synthesize_anomaly(img, others, rng)
        images.append(out)
        masks.append(drawn.astype(np.uint8))
        names.append(f"synthetic:{pool.names[k] if pool.names else k}")
    return Pool(images, masks, names, list(pool.groups) * 2)


# -- training -----------------------------------------------------------------------------------------------


@dataclass
class DefectTrainConfig:
    """Options of :func:`train_defect_net` (stored in the checkpoint).

    Attributes:
        classes: class names, index 0 = good.
        width: U-Net width.
        depth: U-Net depth.
        size: square training/input side.
        batch_size: images per step.
        lr: AdamW peak learning rate (warm-up, then cosine to 2 % over the run).
        weight_decay: AdamW weight decay.
        time_budget_min: stop at this wall time (minutes); the schedule is laid out over it.
        max_epochs: stop after this many epochs (an epoch = as many images as the training set).
        image_loss_weight: weight of the image-level cross-entropy next to the pixel CE + Dice.
        defect_share: share of defective images in a batch.
        synthetic: good-only mode.
        synthetic_share: supervised mode with one defect class: share of the defective draws that are
            synthetic anomalies on good training images (auxiliary, DRAEM-style).
        preset: augmentation preset (light, default, heavy) or a YAML file (training.augment).
        rotate90: random 90° turns in the training augmentation.
        tta: flip test-time augmentation in validation and export.
        tta_rotations: with ``tta``, the 8 dihedral transforms instead of the 4 flips.
        pool_topk: :class:`DefectNet` ``pool_topk`` (0: image head pools the defect margin's max and mean).
        ema_decay: per-step decay of an exponential moving average of the weights (0: off); when on, the
            averaged weights are what is validated, kept and exported.
        hard_good: :class:`BatchMaker` ``hard_good`` (supervised mode; 0: good images drawn uniformly).
        paste_share: :class:`BatchMaker` ``paste_share`` (supervised mode; 0: real defects only on their
            own images).
        synthetic_pretrain: supervised mode: share of the time budget spent first on synthetic anomalies
            only (every defective draw synthetic), before the real defects join.
        inpaint_pretrain: share of the time budget spent first on a self-supervised warm-up of the U-Net
            (:func:`inpaint_pretrain`: fill in masked blocks of the training images, labels unused) before
            the supervised training starts on its weights (0: off; the ``unet`` backbone only).
        members: networks trained (in parallel processes, each seeded ``seed + k``, each with its share
            of the threads) and averaged into one :class:`DefectEnsemble`.
        local_contrast: :class:`DefectNet` ``local_contrast``: side of the box filter of the illumination-free
            second input channel (0: the image alone).
        member_local_contrast: with ``members`` > 1, member k's ``local_contrast`` is entry ``k`` (cycled),
            so the members see the tiles at different scales of local contrast and err less alike (empty:
            every member ``local_contrast``).
        snapshots: checkpoints each member keeps: its ``snapshots`` best epochs by validation image AUROC,
            averaged like members (1: the best epoch alone).
        folds: 0: every member is chosen on the one validation set given. ``folds >= members``: the
            training set is cut into this many group folds (:func:`group_folds`) and member k trains on
            the others and is chosen on fold k (cross-fitting), so together the members learn from every
            training image, and each image of folds 0 .. members-1 gets an out-of-fold score from the one
            member that never saw it (:attr:`DefectFitResult.out_of_fold`).
        split_seed: seed of the folds.
        seed: seed.
        num_threads: torch threads (None: all cores), shared among the members.
        device: "auto" (a CUDA device when one is visible, else the CPU), "cpu", "cuda" or "cuda:N"; under
            ``torchrun`` each process takes the GPU of its local rank (:mod:`qcstation.training.devices`).
        precision: "auto" (mixed precision on a GPU, fp32 on the CPU), "fp32", "bf16" or "fp16" (GPU only);
            the weights stay float32.
        backbone: "unet" (:class:`DefectNet`, trained from scratch; ``width`` and ``depth`` apply) or a
            torchvision ResNet encoder (:class:`~qcstation.training.backbones.BackboneDefectNet`,
            "resnet18", "resnet34", "resnet50").
        pretrained: start a ResNet ``backbone`` from its ImageNet weights (torchvision's weights API; a
            clear error when they cannot be had, e.g. offline).
        backbone_lr_scale: with ``pretrained``, the encoder learns at this share of ``lr`` (the decoder and
            heads at ``lr``), so the first steps do not wash out what ImageNet taught it.
        rank_loss_weight: weight of a pairwise ranking term on the image head (0: off): every defective
            image of a batch should score above every good one (:func:`pairwise_rank_loss`), which is what
            recall at a low false-reject rate asks of the scores, where the cross-entropy judges each image
            on its own.
        keep_last: keep the last epoch's weights (the end of the cosine schedule) instead of the epoch with
            the best validation AUROC: for a refit, whose validation images hold no real defects to choose
            an epoch on. ``best.pt`` then holds the last epoch, and the validation curve, which nothing is
            chosen on, is scored every ``MONITOR_EVERY`` epochs and on the last (every epoch, it took a
            ninth of a member's time on magnetic tile), the epochs between logged without it.
        crop: side of random square crops of the training images (0: off; below ``size``, a multiple of
            ``2 ** depth``) trained on for the first ``crop_share`` of the budget, before the whole images:
            a step on a crop costs about (``crop`` / ``size``)² of one on the whole image, so the same
            minutes buy more steps (progressive resizing's idea, at the images' own scale); a defective
            draw's crop holds one of its defect pixels, so its label stays what was drawn.
        crop_share: share of the budget (or of ``max_epochs``' steps) trained on crops.
        label_smoothing: label smoothing of the image head's cross-entropy (0: off; the pixel loss is
            left sharp, so thin defects keep their edges): the head is asked for 1 - ``label_smoothing``
            on the right class rather than certainty, which limits how far it fits the few distinct
            defective parts a line has.
    """

    classes: tuple[str, ...]
    width: int = 16
    depth: int = 4
    size: int = 224
    batch_size: int = 12
    lr: float = 2e-3
    weight_decay: float = 1e-4
    time_budget_min: float = 35.0
    max_epochs: int = 200
    image_loss_weight: float = 1.0
    defect_share: float = 0.5
    synthetic: bool = False
    synthetic_share: float = 0.5
    preset: str = "default"
    rotate90: bool = True
    tta: bool = True
    tta_rotations: bool = False
    pool_topk: float = 0.0
    ema_decay: float = 0.0
    synthetic_pretrain: float = 0.0
    inpaint_pretrain: float = 0.0
    hard_good: float = 0.0
    paste_share: float = 0.0
    members: int = 1
    local_contrast: int = 31
    member_local_contrast: tuple[int, ...] = ()
    snapshots: int = 1
    folds: int = 0
    split_seed: int = 0
    seed: int = 0
    num_threads: int | None = None
    device: str = "auto"
    precision: str = "auto"
    backbone: str = "unet"
    pretrained: bool = False
    backbone_lr_scale: float = 0.1
    keep_last: bool = False
    rank_loss_weight: float = 0.0
    label_smoothing: float = 0.0
    crop: int = 0
    crop_share: float = 0.5

    def __post_init__(self) -> None:
        if self.crop and not (0 < self.crop < self.size and self.crop % 2**self.depth == 0):
            raise ModelBuildError(
                f"crop must be 0 (off) or a multiple of {2**self.depth} below size {self.size}, "
                f"got {self.crop}"
            )
        if not 0.0 <= self.crop_share <= 1.0:
            raise ModelBuildError(f"crop_share must be in [0, 1], got {self.crop_share}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ModelBuildError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for lc in (self.local_contrast, *self.member_local_contrast):
            if lc < 0 or (lc and lc % 2 != 1):
                raise ModelBuildError(
                    f"a local-contrast window must be odd (or 0: off), got {lc} "
                    f"(local_contrast={self.local_contrast}, "
                    f"member_local_contrast={self.member_local_contrast})"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["member_local_contrast"] = list(self.member_local_contrast)
        return d

    def member(self, k: int, **changes: Any) -> DefectTrainConfig:
        """Member ``k``'s own configuration: one network, seed ``seed + k``, its local-contrast scale."""
        lc = self.member_local_contrast
        return replace(
            self,
            members=1,
            folds=0,
            seed=self.seed + k,
            local_contrast=lc[k % len(lc)] if lc else self.local_contrast,
            member_local_contrast=(),
            **changes,
        )


SUPERVISED_RECIPE: dict[str, Any] = {"members": 3, "paste_share": 0.5, "time_budget_min": 44.0}
"""What ``train_main`` adds to :class:`DefectTrainConfig`'s defaults in supervised mode.

Chosen on magnetic tile's grouped validation split (docs/training-magnetic-tile.md has every run, its
command, its rule written before it started, and its figures):

- three members (seeds ``seed`` to ``seed + 2``) trained at once, sharing the 2-core station PC, and
  averaged: validation AUROC 0.948 vs 0.922 and recall at 2 % false rejects 0.52 vs 0.48 against two
  members (runs 22-23); four were worse (run 31); two again, with the 1.5x epochs they get, judged on
  their last epochs on two seeds (runs 55-58): mean AUROC 0.913 vs 0.918, recall at 2 % 0.47 vs 0.53,
  so three stay;
- half the real-defect draws pasted onto good tiles, except defects on the frame's border
  (``paste_share=0.5``: over two seeds AUROC 0.919 vs 0.899, recall at 2 % 0.60 vs 0.48, runs 13-16);
- a 44 min budget, nearly all of the 45 min allowed (AUROC 0.958 vs 0.938 at 35 min, runs 17-18): the
  budget is wall time, so quality follows the PC's speed.

``train_main`` also refits by default (its ``refit``): the held-out defective groups train and the members
keep their last epoch (``keep_last``), because choosing epochs on ~25 held-out defects fits their noise
(``scripts/nested_epoch_choice.py`` on run 49: chosen epochs AUROC 0.878 on validation groups they were
not chosen on, last epochs 0.916). Run 35 had turned this down on a comparison tilted by that same noise.

Tried there and left off, each against the default on the same validation split: weight EMA, no 90° turns,
top-k margin pooling, a synthetic-only warm-up, 8-fold dihedral TTA, hard-negative mining of good images
(``hard_good``, runs 39 and earlier, and on last epochs 59-60), 320 px inputs, five classes, the ``heavy``
(runs 6-8) and ``light`` (run 41) augmentation presets, snapshot averaging (runs 9-10), pasting border
defects too, ``defect_share`` 0.33 (run 19) and 0.67 (run 45), ``synthetic_share`` 0.25 (runs 25-26) and
0.75 (run 44), group-fold cross-fitted members (runs 27-28), label cleaning (run 29), log-odds averaging, a
nearest-neighbour feature score (run 30), bfloat16 autocast (runs 32-33), two post-hoc image scores (run
34), weight decay 0.05 (run 36), a wider U-Net (run 37), a pairwise ranking term (run 38), an inpainting
warm-up (run 40), other local-contrast scales (runs 42-43), a peak learning rate of 4e-3 (worse, run 46) or
1e-3 (no better, run 47), label smoothing of the image head (run 48), the first half of the budget on 160 px
crops (``crop``, 2x the epochs there; validation AUROC 0.865 vs 0.895 side by side, runs 65-66). Good-only
mode has its own, :data:`GOOD_ONLY_RECIPE`.
"""


GOOD_ONLY_RECIPE: dict[str, Any] = {"max_epochs": 40, "keep_last": True}
"""What ``train_main`` adds to :class:`DefectTrainConfig`'s defaults in good-only mode: 40 epochs, last kept.

Chosen on magnetic tile's training split (docs/training-magnetic-tile.md, runs 68-71): good-only validation
is synthetic and saturates (AUROC ~0.99 from epoch ~50), so it cannot tell which epoch finds real defects.
Scored on the training split's real defective images (which good-only training never sees) and held-out
good images, the 35-min default ran 290 epochs and fell from a peak of 0.74 (5-epoch mean, epoch 20) to
0.64; with the cosine laid over 20 epochs its last epoch made 0.75, over 40 epochs 0.77. The network keeps
learning the synthetic anomalies after it has stopped learning what is not good about real tiles.
"""


@dataclass
class DefectFitResult:
    """Outcome of :func:`train_defect_net`: the best network, its validation scores and the history."""

    net: DefectNet | BackboneDefectNet | DefectEnsemble
    best_epoch: int
    best_auroc: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]
    stopped_by: str
    members: list[DefectFitResult] = field(default_factory=list)
    snapshot_epochs: list[int] = field(default_factory=list)
    out_of_fold: OutOfFold | None = None
    device: str = "cpu"
    precision: str = "fp32"
    world_size: int = 1


@dataclass
class OutOfFold:
    """Cross-fitted members' scores on the images each of them never trained on.

    Attributes:
        names: image names.
        labels: 1 for a defective image.
        scores: N x C image probabilities from the one member that held the image out (with the
            members' test-time flips).
        fold: per image, the fold (= the member) that scored it.
    """

    names: list[str]
    labels: np.ndarray
    scores: np.ndarray
    fold: np.ndarray


@torch.no_grad()
def predict_pool(
    model: nn.Module,
    pool: Pool,
    *,
    batch_size: int = 16,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.25,),
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a :class:`StationModel` over a pool: (N x C image probabilities, N x C map maxima).

    ``device``: where the model is (default: the CPU); the results come back as NumPy arrays.
    """
    model.eval()
    heads, maxima = [], []
    for i in range(0, len(pool.images), batch_size):
        x = torch.stack([normalise(im, mean, std) for im in pool.images[i : i + batch_size]])
        probs, img = model(x if device is None else x.to(device))
        heads.append(img.cpu().numpy())
        maxima.append(probs.amax(dim=(2, 3)).cpu().numpy())
    return np.concatenate(heads), np.concatenate(maxima)


def block_mask(n: int, size: int, block: int, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    """N x 1 x size x size mask, 1 where a ``block``-pixel square is hidden (a ``ratio`` of them)."""
    g = -(-size // block)
    hidden = torch.from_numpy((rng.random((n, 1, g, g)) < ratio).astype(np.float32))
    return hidden.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :size, :size]


def inpaint_pretrain(
    net: DefectNet,
    pool: Pool,
    config: DefectTrainConfig,
    seconds: float,
    out: Path | None,
    *,
    device: torch.device | None = None,
    block: int = 32,
    ratio: float = 0.5,
    steps: int | None = None,
) -> list[dict[str, float]]:
    """Self-supervised warm-up: the U-Net learns to fill in hidden blocks of the training images.

    A ``ratio`` of every image's ``block``-pixel squares is set to the normalised mean and the network,
    through its decoder and a throw-away 1x1 head, predicts the hidden pixels (L1 loss on them alone). The
    labels are not used: what it learns is what these parts' surfaces look like, from every training image,
    before the few dozen labeled defects teach it what matters (a context encoder / masked image
    modelling on the images at hand, the one kind of pretraining a station without ImageNet weights has).
    AdamW at ``config.lr`` with a warm-up and a cosine decay over ``seconds``; the image head is untouched.
    With ``steps``, the schedule is laid over that many optimizer steps instead and ``seconds`` is ignored:
    the same steps on any machine, whatever its speed or load (reproducible runs, tests).

    Returns:
        One row per pass over the images: {"pass", "steps", "loss", "seconds"} (also appended to
        ``out/inpaint.csv``).

    Raises:
        ValueError: ``steps`` below 1.
        TrainingError: the loss became non-finite (the learning rate is too high).
    """
    if steps is not None and steps < 1:
        raise ValueError(f"inpainting warm-up steps must be at least 1, got {steps}")
    device = device or torch.device("cpu")
    rng = np.random.default_rng(config.seed + 7)
    maker = BatchMaker(
        pool, config.batch_size, preset=config.preset, rotate90=config.rotate90, seed=config.seed + 7
    )
    c0 = net.head.in_channels
    head = nn.Conv2d(c0, net.in_channels, 1).to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_pass = max(1, len(pool.images) // config.batch_size)
    rows: list[dict[str, float]] = []
    net.train()
    t0 = time.perf_counter()
    warm = 50 if steps is None else min(50, max(1, steps // 10))
    step, loss_sum, done = 0, 0.0, False
    while not done:
        t_pass = time.perf_counter()
        for _ in range(steps_per_pass):
            progress = step / steps if steps is not None else (time.perf_counter() - t0) / seconds
            if progress >= 1.0:
                done = True
                break
            scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * progress))
            for g in opt.param_groups:
                g["lr"] = config.lr * scale
            x, _ = maker()
            hidden = block_mask(x.shape[0], x.shape[-1], block, ratio, rng)
            x, hidden = x.to(device), hidden.to(device)
            y, _, _ = net.features((x * (1 - hidden)).contiguous(memory_format=torch.channels_last))
            recon = F.interpolate(head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
            loss = ((recon - x).abs() * hidden).sum() / hidden.sum().clamp(min=1.0) / x.shape[1]
            if not torch.isfinite(loss):
                raise TrainingError(f"inpainting warm-up loss became {loss.item()}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
            loss_sum += float(loss.item())
        n = step - sum(int(r["steps"]) for r in rows)
        if n:
            row = {
                "pass": len(rows) + 1,
                "steps": n,
                "loss": loss_sum / n,
                "seconds": time.perf_counter() - t_pass,
            }
            rows.append(row)
            loss_sum = 0.0
            log.info("inpainting warm-up pass %d  L1 %.4f  %.0fs", row["pass"], row["loss"], row["seconds"])
            if out is not None:
                _append(out / "inpaint.csv", row)
    return rows


def train_defect_net(
    train: Pool,
    val: Pool,
    config: DefectTrainConfig,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
) -> DefectFitResult:
    """Train a :class:`DefectNet` within a time budget; keep the epoch with the best validation image AUROC.

    With ``config.keep_last`` the last epoch is kept instead (validation is scored every ``MONITOR_EVERY``
    epochs and on the last).

    With ``config.members > 1`` the members train at the same time in separate processes (each with its
    share of the threads, seed ``seed + k``, folder ``member<k>``) and the result is their
    :class:`DefectEnsemble`.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1), every process calls this function: they train one network
    together (DistributedDataParallel; each rank draws its own batches, a step sees ``world_size`` of them),
    rank 0 validates, keeps the checkpoints and the log, and decides for all when the budget is spent; an
    ensemble's members then train one after another, each with its share of the budget. On the other ranks
    the result's network is the last epoch's, not the best. Every rank then calls
    :meth:`~qcstation.training.devices.Distributed.finish` once the ranks need each other no more.

    Args:
        train: training images (defective and good; good only in synthetic mode).
        val: validation images with real (or, in good-only mode, synthetic) defects.
        config: options.
        out_dir: where ``best.pt``, ``last.pt`` and ``log.csv`` go.
        resume: continue an interrupted run: its ``last.pt`` (written after every epoch with the optimizer,
            the step, the time spent and the best so far), or the folder holding it (an ensemble's folder
            holds one ``member<k>/last.pt`` per member). The time budget counts the time already spent.

    Returns:
        The best network (eval mode) and the run's history.

    Raises:
        TrainingError: empty sets, validation without both classes, a diverging loss, or a failed member.
        CheckpointError: ``resume`` is missing, unreadable, or from another network, input or class list.
    """
    dist = Distributed.from_env()
    device = resolve_device(config.device, dist)
    precision = resolve_precision(config.precision, device)
    if config.backbone != "unet":
        from qcstation.training.backbones import check_backbone

        check_backbone(config.backbone)
    if config.keep_last and config.snapshots > 1:
        raise TrainingError(
            "keep_last keeps the last epoch; snapshots > 1 keeps several chosen by validation AUROC: pick one"
        )
    if config.pretrained and config.backbone == "unet":
        raise ModelBuildError(
            "--pretrained needs a torchvision backbone (e.g. --backbone resnet18); "
            "the unet is trained from scratch"
        )
    dist.init(device)
    if config.pretrained and resume is None and (config.members > 1 or dist.active):
        if dist.is_main:  # once, before members or ranks start: offline, a clear error before any training
            from qcstation.training.backbones import fetch_weights

            fetch_weights(config.backbone)
        dist.barrier()
    if config.members > 1:
        if dist.active:
            return _train_members_in_turn(train, val, config, Path(out_dir), dist, resume=resume)
        return _train_ensemble(train, val, config, Path(out_dir), resume=resume)
    state = _resume_state(resume, config) if resume is not None else None
    t_start = time.perf_counter() - (state["elapsed"] if state else 0.0)
    out = Path(out_dir)
    main = dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    threads = config.num_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    val_y = val.labels()
    if len(val_y) == 0 or val_y.min() == val_y.max():
        raise TrainingError("validation needs good and defective images to measure the image AUROC")
    if main:
        _write_val_images(out / "val_images.csv", val, val_y)
    c = len(config.classes)
    # channels-last convolutions: ~1.1x faster steps on the CPU (oneDNN's NHWC kernels, above all the
    # 2-channel stem's weight gradient); the saved weights are the same numbers in any layout
    net = (
        _new_net(config, pretrained=config.pretrained and state is None)
        .to(device)
        .to(memory_format=torch.channels_last)
    )
    budget = config.time_budget_min * 60.0
    if config.inpaint_pretrain > 0:
        if not isinstance(net, DefectNet):
            raise TrainingError("inpaint_pretrain warms up the unet backbone only")
        warm_up = budget * config.inpaint_pretrain
        budget -= warm_up  # the supervised loop's budget, its schedule and a resumed run's clock
        if state is None:  # a resumed run's last.pt holds weights that were warmed up already
            inpaint_pretrain(net, train, config, warm_up, out if main else None, device=device)
            t_start = time.perf_counter()
    both = _BothHeads(net)
    # DDP hooks the wrapped module's forward, hence the wrapper around forward_both
    gpu = [device.index] if device.type == "cuda" else None
    model: nn.Module = nn.parallel.DistributedDataParallel(both, device_ids=gpu) if dist.active else both
    amp = Amp(precision, device)
    ema = copy.deepcopy(net) if config.ema_decay > 0 else None
    kept = ema if ema is not None else net
    # the epoch monitor runs without flips (4x cheaper); the exported model and calibration use them
    monitor = StationModel(kept, tta=False)
    synthetic_share = config.synthetic_share if c == 2 else 0.0
    maker = BatchMaker(
        train,
        config.batch_size,
        defect_share=config.defect_share,
        synthetic=config.synthetic,
        synthetic_share=synthetic_share,
        hard_good=0.0 if config.synthetic else config.hard_good,
        paste_share=0.0 if config.synthetic else config.paste_share,
        preset=config.preset,
        rotate90=config.rotate90,
        seed=config.seed + 1000 * dist.rank,  # each rank its own batches (rank 0: a single process's)
    )
    # one epoch is still one pass over the training images, shared among the ranks
    steps_per_epoch = max(1, len(train.images) // (config.batch_size * dist.world_size))
    opt = torch.optim.AdamW(_param_groups(net, config), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.max_epochs * steps_per_epoch
    warmup = min(100, total_steps // 10 + 1)
    pixels = np.bincount(np.concatenate([m.ravel() for m in train.masks]), minlength=c)[:c].astype(np.float64)
    if config.synthetic:
        pixels[1:] = max(1.0, pixels[0] * 0.01)
    weights = np.clip(np.sqrt(pixels[0] / np.maximum(pixels, 1.0)), 1.0, 10.0)
    ce_w = torch.tensor(weights, dtype=torch.float32, device=device)
    defect_ids = torch.arange(1, c, device=device).view(1, -1, 1, 1)  # the defect classes, to one-hot masks
    log.info(
        "DefectNet %s at %dx%d: %d train / %d val images, %d steps/epoch, budget %.1f min, %d threads, "
        "pixel CE weights %s, seed %d, %s in %s%s",
        f"w{config.width} d{config.depth}"
        if config.backbone == "unet"
        else f"on {config.backbone}{' (ImageNet weights)' if config.pretrained else ''}",
        config.size,
        config.size,
        len(train.images),
        len(val.images),
        steps_per_epoch,
        budget / 60,  # after an inpainting warm-up: what is left for the supervised epochs
        threads,
        np.round(weights, 2).tolist(),
        config.seed,
        device,
        precision,
        f", rank {dist.rank} of {dist.world_size}" if dist.active else "",
    )
    history: list[dict[str, float]] = []
    best_auc, best_epoch, step = -1.0, 0, 0
    stopped_by = "max_epochs"
    best_path = out / "best.pt"
    epoch_seconds = monitor_seconds = 0.0
    epoch = 0
    lr_scale = 1.0
    first_epoch = 1
    snaps: list[tuple[float, int]] = []  # (val AUROC, epoch) of the kept snapshots
    if state is not None:
        net.load_state_dict(state["net"])
        if ema is not None:
            ema.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        amp.load_state_dict(state.get("scaler"))
        history, step, first_epoch = list(state["history"]), int(state["step"]), int(state["epoch"]) + 1
        best_auc, best_epoch = float(state["best_auc"]), int(state["best_epoch"])
        if state["best"] is not None and main:
            torch.save(state["best"], best_path)
        snaps = [
            (r["val_auroc"], int(r["epoch"])) for r in history if _snap_path(out, int(r["epoch"])).is_file()
        ]
        log.info("resuming at epoch %d (step %d, %.1f min spent)", first_epoch, step, state["elapsed"] / 60)
    if state is not None and dist.broadcast_float(time.perf_counter() - t_start, device) >= budget:
        # a resumed run whose budget was already spent (e.g. a finished member): nothing more to train
        first_epoch, stopped_by = config.max_epochs + 1, "time_budget"
        epoch = int(state["epoch"])
    for epoch in range(first_epoch, config.max_epochs + 1):
        t0 = time.perf_counter()
        net.train()
        loss_sum = 0.0
        for _ in range(steps_per_epoch):
            # rank 0's clock for every rank, so that all follow one learning-rate schedule
            elapsed = dist.broadcast_float(time.perf_counter() - t_start, device)
            progress = max(step / total_steps, elapsed / budget)
            if not config.synthetic and synthetic_share > 0:
                # synthetic anomalies only at first, then mixed with the real defects
                maker.synthetic_share = 1.0 if progress < config.synthetic_pretrain else synthetic_share
            maker.crop = config.crop if progress < config.crop_share else 0
            lr_scale = (
                (step + 1) / warmup
                if step < warmup
                else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            )
            for g in opt.param_groups:
                g["lr"] = config.lr * g.get("lr_factor", 1.0) * lr_scale
            x, m = maker()
            y_img = torch.from_numpy(
                np.array(
                    [
                        int(np.bincount(mm.ravel().numpy(), minlength=c)[1:].argmax()) + 1 if mm.any() else 0
                        for mm in m
                    ]
                )
            ).to(device)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            m = m.to(device, non_blocking=True)
            with amp.autocast():
                seg, img = model(x)
            seg, img = seg.float(), img.float()  # the losses in float32
            # one log-softmax serves the cross-entropy and the Dice term (a softmax less per step)
            logp = seg.log_softmax(dim=1)
            ce = F.nll_loss(logp, m, weight=ce_w)
            probs = logp[:, 1:].exp()
            onehot = (m.unsqueeze(1) == defect_ids).float()
            inter = (probs * onehot).sum((0, 2, 3))
            dice = 1 - ((2 * inter + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()
            image_ce = F.cross_entropy(img, y_img, label_smoothing=config.label_smoothing)
            loss = ce + dice + config.image_loss_weight * image_ce
            if config.rank_loss_weight > 0:
                loss = loss + config.rank_loss_weight * pairwise_rank_loss(img, y_img)
            if maker.hard_good > 0:
                maker.score_good(1.0 - img.detach().softmax(dim=1)[:, 0].cpu().numpy())
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch}; lower the lr")
            amp.step(loss, opt)
            step += 1
            if ema is not None:
                _ema_update(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
            loss_sum += float(loss.item())
        train_seconds = time.perf_counter() - t0
        # under keep_last nothing is chosen on validation: score it now and then, and on the last epoch
        last = epoch == config.max_epochs or (
            time.perf_counter() - t_start + train_seconds + monitor_seconds > budget
        )
        monitored = not config.keep_last or last or (epoch - first_epoch) % MONITOR_EVERY == 0
        if main:  # rank 0 validates and keeps the files; the other ranks follow its decisions
            auc = recall_2pct = raw_auc = math.nan
            if monitored:
                t_val = time.perf_counter()
                heads, _ = predict_pool(monitor, val, device=device)
                score = heads[:, 1:].max(axis=1)
                auc = auroc(score, val_y)
                recall_2pct = recall_at_frr(score, val_y, 0.02)[0]
                if ema is not None:
                    raw_heads, _ = predict_pool(StationModel(net, tta=False), val, device=device)
                    raw_auc = auroc(raw_heads[:, 1:].max(axis=1), val_y)
                monitor_seconds = time.perf_counter() - t_val
                _append_scores(out / "val_scores.csv", epoch, score)
            epoch_seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "lr": config.lr * lr_scale,
                "train_loss": loss_sum / steps_per_epoch,
                "val_auroc": auc,
                "val_recall_2pct": recall_2pct,
                "seconds": epoch_seconds,
            }
            if ema is not None:
                row["val_auroc_raw"] = raw_auc
            history.append(row)
            improved = auc > best_auc or config.keep_last
            if improved:
                best_auc, best_epoch = auc, epoch
                best = {"config": config.to_dict(), "epoch": epoch, "model": kept.state_dict()}
                torch.save(best, best_path)
            _append(out / "log.csv", row)
            if config.snapshots > 1:
                snaps = _keep_snapshot(out, snaps, auc, epoch, kept, config)
            log.info(
                "epoch %d  loss %.4f  %s  %.0fs (total %.1f min)%s",
                epoch,
                row["train_loss"],
                f"val image AUROC {auc:.4f}  recall@2% {recall_2pct:.3f}" if monitored else "(not validated)",
                epoch_seconds,
                (time.perf_counter() - t_start) / 60,
                "  *best*" if improved and not config.keep_last else "",
            )
            _save_last(
                out,
                config,
                epoch,
                kept,
                net,
                opt,
                step,
                time.perf_counter() - t_start,
                history,
                best_path,
                best_auc=best_auc,
                best_epoch=best_epoch,
                scaler=amp.state_dict(),
            )
        # the next epoch's cost: this one's, and a validation if it comes to be the last
        epoch_seconds = max(time.perf_counter() - t0, train_seconds + monitor_seconds)
        if dist.broadcast_float(float(time.perf_counter() - t_start + epoch_seconds > budget), device):
            stopped_by = "time_budget"
            break
    dist.barrier()  # rank 0's best.pt is complete
    kept_net: DefectNet | BackboneDefectNet | DefectEnsemble = kept.eval()  # other ranks: the last epoch's
    snapshot_epochs: list[int] = []
    if main:
        kept_net, snapshot_epochs = _load_net(best_path, config), [best_epoch]
        if config.snapshots > 1 and len(snaps) > 1:
            snapshot_epochs = sorted(e for _, e in snaps)
            kept_net = DefectEnsemble([load_snapshot(out, e, config) for e in snapshot_epochs]).eval()
            log.info("kept %d snapshots: epochs %s", len(snapshot_epochs), snapshot_epochs)
    return DefectFitResult(
        kept_net,
        best_epoch,
        best_auc,
        epoch,
        time.perf_counter() - t_start,
        history,
        stopped_by,
        snapshot_epochs=snapshot_epochs,
        device=str(device),
        precision=precision,
        world_size=dist.world_size,
    )


def _snap_path(out: Path, epoch: int) -> Path:
    return out / f"snapshot_e{epoch:04d}.pt"


def _keep_snapshot(
    out: Path,
    snaps: list[tuple[float, int]],
    auc: float,
    epoch: int,
    net: nn.Module,
    config: DefectTrainConfig,
) -> list[tuple[float, int]]:
    """Keep the ``config.snapshots`` best epochs' weights on disk; return the updated (AUROC, epoch) list."""
    ranked = sorted([*snaps, (auc, epoch)], key=lambda t: (-t[0], t[1]))
    keep, drop = ranked[: config.snapshots], ranked[config.snapshots :]
    if (auc, epoch) in keep:
        torch.save(
            {"config": config.to_dict(), "epoch": epoch, "model": net.state_dict()}, _snap_path(out, epoch)
        )
    for _, e in drop:
        _snap_path(out, e).unlink(missing_ok=True)
    return keep


def load_snapshot(out: str | Path, epoch: int, config: DefectTrainConfig) -> DefectNet | BackboneDefectNet:
    """One kept snapshot of a member's folder, in eval mode."""
    return _load_net(_snap_path(Path(out), epoch), config)


def _load_net(path: Path, config: DefectTrainConfig) -> DefectNet | BackboneDefectNet:
    net = _new_net(config, pretrained=False)  # every weight comes from the checkpoint
    # map_location: a GPU-trained checkpoint loads (and exports) on a machine without one
    net.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["model"])
    return net.eval()


_ARCHITECTURE = ("classes", "width", "depth", "size", "pool_topk", "backbone", "local_contrast")
"""Config keys a resumed run must share with its checkpoint (the rest may change, e.g. the time budget)."""
# what a checkpoint from before a key existed was trained with
_ARCHITECTURE_DEFAULTS = {"backbone": "unet", "local_contrast": 31}


def _resume_file(resume: str | Path) -> Path:
    p = Path(resume)
    return p / "last.pt" if p.is_dir() else p


def _resume_state(resume: str | Path, config: DefectTrainConfig) -> dict[str, Any]:
    """The state saved in a run's ``last.pt``, checked against ``config``'s architecture."""
    path = _resume_file(resume)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")  # our own training's file
    except Exception as e:  # torch raises several untyped errors for a bad file
        raise CheckpointError(f"cannot resume from {path}: not a readable checkpoint ({e})") from e
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"cannot resume from {path}: not a DefectNet training checkpoint")
    if "opt" not in state:
        raise CheckpointError(
            f"cannot resume from {path}: it holds weights only (a best.pt or an older last.pt); resume from "
            "the run's last.pt"
        )
    mine = config.to_dict()
    for key in _ARCHITECTURE:
        theirs = state["config"].get(key, _ARCHITECTURE_DEFAULTS.get(key))
        if theirs != mine[key]:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {key}={theirs!r}, this "
                f"run has {key}={mine[key]!r}"
            )
    return dict(state)


def _save_last(
    out: Path,
    config: DefectTrainConfig,
    epoch: int,
    kept: nn.Module,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    elapsed: float,
    history: list[dict[str, float]],
    best_path: Path,
    *,
    best_auc: float,
    best_epoch: int,
    scaler: dict[str, Any] | None = None,
) -> None:
    """Everything a resumed run needs, written atomically so an interruption never leaves half a file."""
    state = {
        "scaler": scaler,
        "config": config.to_dict(),
        "epoch": epoch,
        "model": kept.state_dict(),
        "net": net.state_dict(),
        "opt": opt.state_dict(),
        "step": step,
        "elapsed": elapsed,
        "history": history,
        "best_auc": best_auc,
        "best_epoch": best_epoch,
        "best": torch.load(best_path, weights_only=True) if best_path.exists() else None,
    }
    tmp = out / "last.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "last.pt")


def _new_net(config: DefectTrainConfig, *, pretrained: bool) -> DefectNet | BackboneDefectNet:
    return net_from_config(len(config.classes), config.to_dict(), pretrained=pretrained)


def net_from_config(
    num_classes: int, config: dict[str, Any], *, pretrained: bool = False
) -> DefectNet | BackboneDefectNet:
    """The untrained network a :class:`DefectTrainConfig` (as a dict, e.g. a checkpoint's) describes.

    ``pretrained`` starts a ResNet backbone from its ImageNet weights (training only: a checkpoint's own
    weights replace them anyway, so loading one never fetches anything).
    """
    backbone = str(config.get("backbone", "unet"))
    if backbone != "unet":
        from qcstation.training.backbones import build_backbone_net

        return build_backbone_net(num_classes, config, pretrained=pretrained)
    return DefectNet(
        1,
        num_classes,
        int(config.get("width", 16)),
        int(config.get("depth", 4)),
        local_contrast=int(config.get("local_contrast", 31)),
        pool_topk=float(config.get("pool_topk", 0.0)),
    )


def _param_groups(net: nn.Module, config: DefectTrainConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups, each with the ``lr_factor`` the schedule multiplies ``lr`` by."""
    encoder = getattr(net, "encoder_parameters", None)
    if not (config.pretrained and encoder is not None):
        return [{"params": list(net.parameters()), "lr_factor": 1.0}]
    slow = {id(p) for p in encoder()}
    return [
        {"params": [p for p in net.parameters() if id(p) in slow], "lr_factor": config.backbone_lr_scale},
        {"params": [p for p in net.parameters() if id(p) not in slow], "lr_factor": 1.0},
    ]


class _BothHeads(nn.Module):
    """``net.forward_both`` as a module's ``forward``: what DistributedDataParallel wraps and hooks."""

    def __init__(self, net: DefectNet | BackboneDefectNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_both(x)


def pairwise_rank_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RankNet's logistic loss over every (defective, good) pair of a batch, on the image head's log-odds.

    Args:
        logits: N x C image logits, class 0 = good.
        labels: N image labels (0: good).

    Returns:
        The mean of ``softplus(s_good - s_defective)`` over the pairs, where ``s`` is the log-odds of any
        defect (``logsumexp`` of the defect logits minus the good logit); 0 when the batch lacks either kind.
    """
    s = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
    bad, good = s[labels > 0], s[labels == 0]
    if bad.numel() == 0 or good.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (and the device) of a real loss
    return F.softplus(good.unsqueeze(0) - bad.unsqueeze(1)).mean()


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(b)


def _train_ensemble(
    train: Pool, val: Pool, config: DefectTrainConfig, out: Path, *, resume: str | Path | None = None
) -> DefectFitResult:
    """Train ``config.members`` networks at once, one process each, and average them.

    With ``config.folds``, member k trains on the folds of ``train`` other than k and is chosen on fold k;
    ``val`` (which may then be empty) is only reported on.
    """
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    total = config.num_threads or os.cpu_count() or 1
    per = max(1, total // config.members)
    folds = _folds(train, config)
    procs: list[tuple[Path, subprocess.Popen[bytes]]] = []
    for k in range(config.members):
        member_dir = out / f"member{k}"
        member_dir.mkdir(parents=True, exist_ok=True)
        member = config.member(k, num_threads=per)
        member_train, member_val = _member_sets(train, val, folds, k)
        member_resume = None
        if resume is not None:
            member_resume = Path(resume) / f"member{k}" / "last.pt"
            if not member_resume.is_file():
                raise CheckpointError(
                    f"cannot resume an ensemble of {config.members} from {resume}: no {member_resume}"
                )
        job = member_dir / "job.pkl"
        with job.open("wb") as f:
            pickle.dump(
                (member_train, member_val, member, member_dir, member_resume),
                f,
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        env = {**os.environ, "OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per)}
        cmd = [sys.executable, "-c", f"from {__name__} import _member_main; _member_main({str(job)!r})"]
        procs.append((member_dir, subprocess.Popen(cmd, env=env)))
    log.info("training %d members in parallel, %d thread(s) each: %s", config.members, per, out)
    failed = [str(d) for d, proc in procs if proc.wait() != 0]
    if failed:
        raise TrainingError(f"ensemble member(s) failed: {failed} (see the log above)")
    torch.set_num_threads(total)
    fits: list[DefectFitResult] = []
    for member_dir, _ in procs:
        with (member_dir / "result.pkl").open("rb") as fr:
            fits.append(pickle.load(fr))  # our own child process wrote it
        (member_dir / "job.pkl").unlink(missing_ok=True)
    return _ensemble_result(train, val, config, folds, fits, t_start)


def _train_members_in_turn(
    train: Pool,
    val: Pool,
    config: DefectTrainConfig,
    out: Path,
    dist: Distributed,
    *,
    resume: str | Path | None = None,
) -> DefectFitResult:
    """Under ``torchrun``: the members one after another, each trained by all ranks in its budget share.

    A resumed run goes on with each member's ``last.pt``; a member that had finished returns at once, one
    that had not started starts afresh.
    """
    t_start = time.perf_counter()
    folds = _folds(train, config)
    share = config.time_budget_min / config.members
    fits: list[DefectFitResult] = []
    for k in range(config.members):
        member = config.member(k, time_budget_min=share)
        member_train, member_val = _member_sets(train, val, folds, k)
        last = Path(resume) / f"member{k}" / "last.pt" if resume is not None else None
        log.info("member %d of %d: %.1f min, %d ranks", k + 1, config.members, share, dist.world_size)
        fits.append(
            train_defect_net(
                member_train,
                member_val,
                member,
                out / f"member{k}",
                resume=last if last is not None and last.is_file() else None,
            )
        )
    if not dist.is_main:
        return replace(fits[-1], members=fits)
    return _ensemble_result(train, val, config, folds, fits, t_start)


def _folds(train: Pool, config: DefectTrainConfig) -> list[list[int]]:
    """The cross-fitting folds of ``train`` (none without ``config.folds``)."""
    if not config.folds:
        return []
    if config.folds < config.members:
        raise TrainingError(
            f"cross-fitting needs at least as many folds as members, got {config.folds} folds for "
            f"{config.members} members"
        )
    return group_folds(train, config.folds, config.split_seed)


def _member_sets(train: Pool, val: Pool, folds: list[list[int]], k: int) -> tuple[Pool, Pool]:
    """Member k's training and validation pools: ``train`` and ``val``, or the folds but k and fold k."""
    if not folds:
        return train, val
    held = set(folds[k])
    return train.subset([i for i in range(len(train.images)) if i not in held]), train.subset(folds[k])


def _ensemble_result(
    train: Pool,
    val: Pool,
    config: DefectTrainConfig,
    folds: list[list[int]],
    fits: list[DefectFitResult],
    t_start: float,
) -> DefectFitResult:
    """The members' :class:`DefectEnsemble`, measured on ``val`` (or out of fold)."""
    # a member that kept several snapshots contributes each of them, so every network weighs the same
    nets: list[DefectNet | BackboneDefectNet] = []
    for f in fits:  # DefectEnsemble.members holds DefectNets or BackboneDefectNets
        nets += list(f.net.members) if isinstance(f.net, DefectEnsemble) else [f.net]  # type: ignore[arg-type]
    ensemble = DefectEnsemble(nets).eval()
    oof = _out_of_fold(train, folds, fits, config) if folds else None
    if oof is not None:
        auc, measured = auroc(oof.scores[:, 1:].max(axis=1), oof.labels), "out-of-fold"
    else:
        heads, _ = predict_pool(StationModel(ensemble, tta=False), val)
        auc, measured = auroc(heads[:, 1:].max(axis=1), val.labels()), "val"
    log.info(
        "ensemble of %d: %s image AUROC %.4f (members %s)",
        len(fits),
        measured,
        auc,
        [round(f.best_auroc, 4) for f in fits],
    )
    return DefectFitResult(
        ensemble,
        max(f.best_epoch for f in fits),
        auc,
        max(f.epochs_run for f in fits),
        time.perf_counter() - t_start,
        [row | {"member": float(k)} for k, f in enumerate(fits) for row in f.history],
        ",".join(sorted({f.stopped_by for f in fits})),
        fits,
        out_of_fold=oof,
        device=fits[0].device,
        precision=fits[0].precision,
        world_size=fits[0].world_size,
    )


def _out_of_fold(
    train: Pool, folds: list[list[int]], fits: list[DefectFitResult], config: DefectTrainConfig
) -> OutOfFold:
    """Each member's scores (with the members' flips) on the fold it was chosen on and never trained on."""
    names: list[str] = []
    labels, scores, fold = [], [], []
    for k, fit in enumerate(fits):
        held = train.subset(folds[k])
        heads, _ = predict_pool(StationModel(fit.net, tta=config.tta), held)
        names += held.names or [str(i) for i in folds[k]]
        labels.append(held.labels())
        scores.append(heads)
        fold.append(np.full(len(folds[k]), k))
    return OutOfFold(names, np.concatenate(labels), np.concatenate(scores), np.concatenate(fold))


def _member_main(job: str) -> None:
    """Child-process entry of :func:`_train_ensemble`: train one member, pickle its result."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s member %(process)d %(message)s")
    with open(job, "rb") as f:
        train, val, config, out, resume = pickle.load(f)  # written by our parent process
    fit = train_defect_net(train, val, config, out, resume=resume)
    with (Path(out) / "result.pkl").open("wb") as f:
        pickle.dump(fit, f, protocol=pickle.HIGHEST_PROTOCOL)


def _write_val_images(path: Path, val: Pool, labels: np.ndarray) -> None:
    """The validation images in the order of ``val_scores.csv``'s columns: image, group, defective (1/0)."""
    names = val.names or [str(i) for i in range(len(val.images))]
    groups = val.groups or names
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group", "defective"])
        w.writerows(zip(names, groups, (int(v) for v in labels), strict=True))


def _append_scores(path: Path, epoch: int, scores: np.ndarray) -> None:
    """One line per epoch: the epoch, then each validation image's score (no flips), for later analysis.

    ``val_images.csv`` beside it names the columns' images, their groups and labels
    (``scripts/nested_epoch_choice.py`` reads both).
    """
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{epoch}," + ",".join(f"{v:.6g}" for v in scores) + "\n")


def _append(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{v:.6g}" for v in row.values()) + "\n")
