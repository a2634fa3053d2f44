"""Segmentation datasets: layout readers, a torch ``Dataset``, group-aware splits and augmentation presets.

A dataset folder says how it is laid out in its ``dataset.yaml``::

    layout: indexed_masks
    classes: [good, scratch, crack, pit, stain]

Each layout has a :class:`LayoutReader` registered in :data:`READERS` under its name. A reader lists the
samples (image file, label source, group key) and turns one sample's labels into an H x W class-index mask.
Only ``indexed_masks`` exists today (``<root>/<name>.png`` + ``<root>/masks/<name>.png`` whose pixel values
are class indices); mask-per-class folders, YOLO segmentation, labelme polygons and VOC boxes plug in as
further readers without touching :class:`SegmentationDataset`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from qcstation.training.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DATASET_YAML = "dataset.yaml"

#: ``transform(image HxW[xC] uint8, mask HxW uint8) -> (image, mask)``, applied before normalisation.
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled image of a dataset.

    Attributes:
        image: the image file.
        label: where its labels are (a mask file, an annotation file), as the layout reader understands it.
        group: split key; samples of one physical part share it so they never land on both sides of a split.
    """

    image: Path
    label: Path
    group: str


class LayoutReader:
    """Reads one dataset layout: which samples there are, and each sample's class-index mask.

    Subclasses set :attr:`layout`, implement :meth:`samples` and :meth:`read_mask`, and register themselves
    with :func:`register_reader`.

    Args:
        root: the dataset folder.
        classes: class names from ``dataset.yaml``, index 0 = good/background.
        config: the whole parsed ``dataset.yaml`` (layout-specific keys live there).
    """

    layout: ClassVar[str] = ""

    def __init__(self, root: Path, classes: Sequence[str], config: Mapping[str, Any]) -> None:
        self.root = root
        self.classes = tuple(classes)
        self.config = dict(config)

    def samples(self) -> list[Sample]:
        """All samples of the dataset, in a stable order."""
        raise NotImplementedError

    def read_mask(self, sample: Sample, image_shape: tuple[int, int]) -> np.ndarray | None:
        """The sample's H x W uint8 class-index mask, at the image's size.

        Args:
            sample: one of :meth:`samples`.
            image_shape: (height, width) of the decoded image.

        Returns:
            The mask, or None when the label file cannot be decoded (the sample is then skipped).

        Raises:
            DatasetError: the labels exist but contradict the image (wrong size, unknown class).
        """
        raise NotImplementedError


READERS: dict[str, type[LayoutReader]] = {}


def register_reader(cls: type[LayoutReader]) -> type[LayoutReader]:
    """Class decorator: make a layout reader available under ``cls.layout``."""
    if not cls.layout:
        raise TypeError(f"{cls.__name__} must set a non-empty 'layout'")
    READERS[cls.layout] = cls
    return cls


def group_key(path: Path) -> str:
    """Default group key: the file stem without a trailing view suffix (``part_0007_top``: ``part_0007``)."""
    stem = path.stem
    head, sep, tail = stem.rpartition("_")
    if sep and tail.isalpha() and any(ch.isdigit() for ch in head):
        return head
    return stem


@register_reader
class IndexedMaskReader(LayoutReader):
    """``<images>/<name>.<ext>`` images with ``<masks>/<name>.png`` masks holding class indices.

    ``images`` and ``masks`` are folders relative to the root, from dataset.yaml (defaults "." and "masks").
    """

    layout = "indexed_masks"

    def samples(self) -> list[Sample]:
        """Images in the root folder, each paired with the same-named mask.

        Raises:
            DatasetError: an image has no mask.
        """
        image_dir = self.root / str(self.config.get("images", "."))
        mask_dir = self.root / str(self.config.get("masks", "masks"))
        if not image_dir.is_dir():
            raise DatasetError(f"image folder {image_dir} (dataset.yaml 'images') does not exist")
        images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        out: list[Sample] = []
        missing: list[str] = []
        for img in images:
            mask = mask_dir / f"{img.stem}.png"
            if not mask.is_file():
                missing.append(img.name)
                continue
            out.append(Sample(img, mask, group_key(img)))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetError(
                f"{len(missing)} image(s) in {self.root} have no mask in {mask_dir}: {shown} "
                f"(layout indexed_masks expects masks/<image stem>.png)"
            )
        return out

    def read_mask(self, sample: Sample, image_shape: tuple[int, int]) -> np.ndarray | None:
        """Decode the indexed mask and check it against the image and the class list."""
        mask = cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)
        if mask is None:
            return None
        if mask.ndim == 3:
            raise DatasetError(
                f"mask {sample.label} has {mask.shape[2]} channels; indexed_masks expects a single-channel "
                "image of class indices"
            )
        if mask.shape != image_shape:
            raise DatasetError(
                f"mask {sample.label} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{sample.image.name} is {image_shape[1]}x{image_shape[0]}"
            )
        top = int(mask.max())
        if top >= len(self.classes):
            raise DatasetError(
                f"mask {sample.label} contains class index {top} but dataset.yaml lists only "
                f"{len(self.classes)} classes {list(self.classes)}"
            )
        return mask.astype(np.uint8)


def read_dataset_config(root: Path) -> dict[str, Any]:
    """Parse and check ``<root>/dataset.yaml``.

    Args:
        root: the dataset folder.

    Returns:
        The parsed mapping (it has at least ``layout`` and ``classes``).

    Raises:
        DatasetError: the folder or file is missing, or the YAML lacks a known layout or a class list.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    path = root / DATASET_YAML
    if not path.is_file():
        raise DatasetError(f"{root} has no {DATASET_YAML} (it names the layout and the classes)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(config, dict):
        raise DatasetError(
            f"{path}: expected a mapping with 'layout' and 'classes', got {type(config).__name__}"
        )
    layout = config.get("layout")
    if layout not in READERS:
        raise DatasetError(f"{path}: layout {layout!r} is not supported; known layouts: {sorted(READERS)}")
    classes = config.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise DatasetError(f"{path}: expected 'classes' to list at least 2 distinct names, got {classes!r}")
    return config


@dataclass(eq=False)
class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A segmentation dataset as tensors: ``(image float 1|3 x H x W normalised, mask long H x W)``.

    Every sample is decoded once on construction, so a bad dataset fails (or, for an unreadable image, is
    reported and skipped) before the first epoch rather than in the middle of one. Decoded samples are
    kept in memory at the training size when ``cache`` is true.

    Build it with :meth:`from_folder`.

    Attributes:
        classes: class names, index 0 = good.
        samples: the usable samples (unreadable ones removed).
        skipped: (file, reason) of every sample left out.
    """

    reader: LayoutReader
    samples: list[Sample]
    size: tuple[int, int]
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    transform: Transform | None = None
    cache: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _images: list[np.ndarray] = field(default_factory=list, repr=False)
    _masks: list[np.ndarray] = field(default_factory=list, repr=False)

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        *,
        size: int | tuple[int, int] = 256,
        channels: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
        transform: Transform | None = None,
        cache: bool = True,
    ) -> SegmentationDataset:
        """Read a dataset folder described by its ``dataset.yaml``.

        Args:
            root: the dataset folder.
            size: training (height, width), or one number for a square; images and masks are resized to it.
            channels: 1 (gray) or 3 (RGB) network input.
            mean: per-channel normalisation mean, on intensities scaled to [0, 1] (the model card's).
            std: per-channel normalisation std (the model card's).
            transform: augmentation applied to the uint8 image and mask before normalisation.
            cache: keep decoded samples in memory.

        Returns:
            The dataset.

        Raises:
            DatasetError: no dataset.yaml, unknown layout, no usable samples, a mask of the wrong size or
                with unknown class indices, or an image without a mask.
        """
        root = Path(root)
        config = read_dataset_config(root)
        reader = READERS[config["layout"]](root, config["classes"], config)
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if channels not in (1, 3):
            raise DatasetError(f"expected channels 1 or 3, got {channels}")
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise DatasetError(
                f"expected {channels} mean and {channels} positive std values, got {mean}, {std}"
            )
        samples = reader.samples()
        if not samples:
            raise DatasetError(f"dataset {root} is empty: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        ds = cls(reader, samples, hw, channels, tuple(mean), tuple(std), transform, cache)
        ds._scan()
        return ds

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, index 0 = good."""
        return self.reader.classes

    @property
    def root(self) -> Path:
        """The dataset folder."""
        return self.reader.root

    def _decode(self, sample: Sample) -> tuple[np.ndarray, np.ndarray] | str:
        """The resized (image, mask) of a sample, or why it cannot be read."""
        flag = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        try:
            image = cv2.imread(str(sample.image), flag)
        except cv2.error as e:
            return f"cannot decode image: {str(e).strip().splitlines()[-1]}"
        if image is None:
            return "cannot decode image (corrupt, truncated or not an image)"
        mask = self.reader.read_mask(sample, image.shape[:2])
        if mask is None:
            return f"cannot decode mask {sample.label.name}"
        h, w = self.size
        if image.shape[:2] != (h, w):
            interp = cv2.INTER_AREA if image.shape[0] > h or image.shape[1] > w else cv2.INTER_LINEAR
            image = cv2.resize(image, (w, h), interpolation=interp)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        if self.channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return image, mask

    def _scan(self) -> None:
        kept: list[Sample] = []
        for s in self.samples:
            got = self._decode(s)
            if isinstance(got, str):
                log.warning("skipping %s: %s", s.image, got)
                self.skipped.append((str(s.image), got))
                continue
            kept.append(s)
            if self.cache:
                self._images.append(got[0])
                self._masks.append(got[1])
        self.samples = kept
        if not kept:
            raise DatasetError(
                f"dataset {self.root} has no readable samples: all {len(self.skipped)} were skipped "
                f"(first: {self.skipped[0][0]}: {self.skipped[0][1]})"
            )
        if self.skipped:
            log.warning(
                "%d of %d samples in %s skipped", len(self.skipped), len(self.skipped) + len(kept), self.root
            )

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized uint8 image and mask of a sample, before augmentation and normalisation."""
        if self.cache:
            return self._images[index], self._masks[index]
        got = self._decode(self.samples[index])
        if isinstance(got, str):
            raise DatasetError(
                f"{self.samples[index].image}: {got} (it was readable when the dataset was opened)"
            )
        return got

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return normalise(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(mask)).long()

    def image_labels(self) -> np.ndarray:
        """Per sample, 1 when its mask has any defect pixel, else 0 (image-level ground truth)."""
        return np.array([int(self.raw(i)[1].any()) for i in range(len(self))], np.int64)

    def class_pixel_counts(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Pixel count of every class over the given samples (all by default)."""
        counts = np.zeros(len(self.classes), np.int64)
        for i in range(len(self)) if indices is None else indices:
            counts += np.bincount(self.raw(i)[1].ravel(), minlength=len(self.classes))[: len(self.classes)]
        return counts


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxW or HxWxC image -> float32 C x H x W tensor, ``(x / 255 - mean) / std`` (as the runtime does).

    Args:
        image: the image.
        mean: per-channel mean.
        std: per-channel std.

    Returns:
        The tensor.
    """
    x = image.astype(np.float32) / 255.0
    x = x[np.newaxis] if x.ndim == 2 else x.transpose(2, 0, 1)
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((x - m) / s))


def split_by_group(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split sample indices into train and validation so no group is on both sides.

    Args:
        samples: the dataset's samples.
        val_fraction: share of groups for validation, in (0, 1).
        seed: shuffling seed (the same seed gives the same split).

    Returns:
        (train indices, validation indices), each sorted.

    Raises:
        DatasetError: the fraction is out of range or there are too few groups for two non-empty sides.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"expected val_fraction in (0, 1), got {val_fraction}")
    groups = sorted({s.group for s in samples})
    if len(groups) < 2:
        raise DatasetError(
            f"cannot split {len(samples)} sample(s) in {len(groups)} group(s) into train and val"
        )
    random.Random(seed).shuffle(groups)
    n_val = min(len(groups) - 1, max(1, round(len(groups) * val_fraction)))
    val_groups = set(groups[:n_val])
    train = [i for i, s in enumerate(samples) if s.group not in val_groups]
    val = [i for i, s in enumerate(samples) if s.group in val_groups]
    return train, val


def _albumentations() -> Any:
    # albumentations asks PyPI for a newer version on import (a blocking network call); a training box on a
    # plant network is usually offline, so switch that off unless the user asked for it.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def train_transform(crop: int | None = None, *, defect_crop_p: float = 0.7) -> Transform:
    """The training augmentation preset (albumentations): flips, 90° turns, lighting, noise, optional crop.

    Args:
        crop: side of a random square crop (None: full image). With a crop, ``defect_crop_p`` of the crops
            are centred so that they contain defect pixels when the image has any; the network is fully
            convolutional, so training on crops and inferring on the whole input is fine and much cheaper.
        defect_crop_p: probability of a defect-containing crop.

    Returns:
        A transform for :class:`SegmentationDataset`.
    """
    A = _albumentations()
    ops: list[Any] = []
    if crop is not None:
        ops.append(
            A.OneOf(
                [
                    A.CropNonEmptyMaskIfExists(height=crop, width=crop, p=defect_crop_p),
                    A.RandomCrop(height=crop, width=crop, p=1.0 - defect_crop_p),
                ],
                p=1.0,
            )
        )
    ops += [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.7),
        A.GaussNoise(std_range=(0.0, 0.03), p=0.3),
    ]
    pipeline = A.Compose(ops)

    def apply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"]

    return apply


class Subset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A view of some samples of a dataset, with its own transform (train and val differ in augmentation).

    Args:
        base: the dataset.
        indices: which samples.
        transform: augmentation for this view (None: none).
    """

    def __init__(
        self, base: SegmentationDataset, indices: Sequence[int], transform: Transform | None = None
    ) -> None:
        self.base = base
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base.raw(self.indices[index])
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return (
            normalise(image, self.base.mean, self.base.std),
            torch.from_numpy(np.ascontiguousarray(mask)).long(),
        )
