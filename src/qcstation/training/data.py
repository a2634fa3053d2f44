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

import json
import logging
import os
import random
import re
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
        from qcstation.training.layouts import complete_config, detect_layout

        detected = detect_layout(root)
        if detected is None:
            raise DatasetError(
                f"{root} has no {DATASET_YAML} (it names the layout and the classes) and no known layout "
                f"was recognised in it; known layouts: {sorted(READERS)}"
            )
        log.info("%s: no %s; detected layout %s", root, DATASET_YAML, detected)
        return complete_config(root, {}, detected)
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
    if "classes" not in config:
        from qcstation.training.layouts import complete_config

        completed = complete_config(root, config, str(layout))
        config.update(completed)
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
        image, mask = fit_pair(image, mask, self.size)
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


def train_transform(
    crop: int | None = None, *, defect_crop_p: float = 0.7, seed: int | None = None
) -> Transform:
    """The training augmentation preset (albumentations): flips, 90° turns, lighting, noise, optional crop.

    Args:
        crop: side of a random square crop (None: full image). With a crop, ``defect_crop_p`` of the crops
            are centred so that they contain defect pixels when the image has any; the network is fully
            convolutional, so training on crops and inferring on the whole input is fine and much cheaper.
        defect_crop_p: probability of a defect-containing crop.
        seed: seed of the pipeline's own random generators (albumentations ignores the global seeds that
            :func:`~qcstation.training.engine.seed_everything` sets); None: unseeded.

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
    pipeline = A.Compose(ops, seed=seed)

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


# -- mask folders (one folder per class, same-name masks) ---------------------------------------------------

GOOD_NAME_TOKENS = ("free", "good", "ok")
SPLIT_FILE = "split.json"
NUM_ID = re.compile(r"num_(\d+)")


def _is_good_folder(name: str, good: Sequence[str] | None) -> bool:
    if good is not None:
        return name in good
    tokens = re.split(r"[^a-z0-9]+", name.lower())
    return any(t in GOOD_NAME_TOKENS for t in tokens)


def class_name_of(folder: str) -> str:
    """Class name of a class folder: lower case, ``MT_``-like prefix dropped (``MT_Crack``: crack)."""
    head, sep, tail = folder.partition("_")
    name = tail if sep and head.isupper() and len(head) <= 4 and tail else folder
    return name.lower()


def numeric_id_groups(stems: Sequence[str], gap: int = 300) -> dict[str, str] | None:
    """Group file stems by neighbouring ``num_<id>`` values (ids closer than ``gap`` chain into one group).

    Returns:
        stem -> group name (``num_<first id>``), or None when some stem carries no ``num_`` id.
    """
    ids: dict[str, int] = {}
    for s in stems:
        m = NUM_ID.search(s)
        if m is None:
            return None
        ids[s] = int(m.group(1))
    out: dict[str, str] = {}
    current, last = "", -(10**12)
    for s, v in sorted(ids.items(), key=lambda kv: kv[1]):
        if v - last > gap:
            current = f"num_{v}"
        out[s] = current
        last = v
    return out


def dhash(image: np.ndarray, side: int = 8) -> int:
    """64-bit difference hash of a gray image (near-duplicates differ in few bits)."""
    small = cv2.resize(image, (side + 1, side), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def near_duplicate_groups(hashes: Mapping[str, int], max_bits: int = 6) -> dict[str, str]:
    """Union-find grouping of items whose difference hashes differ in at most ``max_bits`` bits."""
    keys = sorted(hashes)
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if bin(hashes[a] ^ hashes[b]).count("1") <= max_bits:
                parent[find(b)] = find(a)
    return {k: find(k) for k in keys}


def read_pair(
    sample: Sample,
    read_mask: Callable[[Sample, tuple[int, int]], np.ndarray | None],
    problem: Callable[[Path, str], None],
    label_kind: str,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A sample's gray image and class-index mask, or None after ``problem`` was told why not.

    Args:
        sample: the sample.
        read_mask: the layout's mask reader (image shape in; None when the label cannot be decoded; raises
            :class:`DatasetError` for a label that does not fit its image).
        problem: reports a skipped file with its reason.
        label_kind: how the message names the label file ("mask", "labels").
    """
    try:
        image = cv2.imread(str(sample.image), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        image = None
    if image is None:
        problem(sample.image, "cannot decode image (corrupt, truncated or not an image)")
        return None
    try:
        mask = read_mask(sample, image.shape[:2])
    except DatasetError as e:
        problem(sample.image, str(e))
        return None
    if mask is None:
        problem(sample.image, f"cannot decode {label_kind} {sample.label.name}")
        return None
    return image, mask


def fit_pair(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask resized to ``size`` = (H, W) (area interpolation when shrinking; the mask nearest)."""
    if size is None or image.shape[:2] == size:
        return image, mask
    h, w = size
    interp = cv2.INTER_AREA if image.shape[0] > h or image.shape[1] > w else cv2.INTER_LINEAR
    return (
        cv2.resize(image, (w, h), interpolation=interp),
        cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST),
    )


@dataclass(frozen=True)
class LoadedSample:
    """A decoded sample of a dataset (at the size it was loaded; ``shape`` is the file's own H, W)."""

    sample: Sample
    image: np.ndarray
    mask: np.ndarray
    source_class: str
    split: str | None
    shape: tuple[int, int] = (0, 0)


@register_reader
class MaskFoldersReader(LayoutReader):
    """One folder per class (``<root>/<Class>/[Imgs/]*.jpg``), same-name ``.png`` masks next to the images.

    Folders of good images (default: names containing the token free, good or ok, case-insensitive;
    dataset.yaml ``good: [...]`` overrides) need no masks. Masks are thresholded at ``mask_threshold``
    (default 127) and take the class of their folder; ``merge: defect`` maps every defect class to one.
    A ``split.json`` in the root (``{"train": [...], "test": [...]}``, paths relative to the root) gives
    each sample's side. Group keys: neighbouring ``num_<id>`` values (``group_gap``, default 300) when every
    file has one, else near-duplicate grouping by a difference hash.

    Works without a dataset.yaml: :meth:`open` infers everything.
    """

    layout = "mask_folders"

    def __init__(self, root: Path, classes: Sequence[str], config: Mapping[str, Any]) -> None:
        super().__init__(root, classes, config)
        self.threshold = int(self.config.get("mask_threshold", 127))
        good = self.config.get("good")
        self.good_folders: list[str] | None = list(good) if good is not None else None
        self.problems: list[tuple[str, str]] = []
        self._split: dict[str, str] = {}
        self._source: dict[Path, str] = {}

    @classmethod
    def class_folders(cls, root: Path, good: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
        """(good folders, defect folders) under ``root``, sorted."""
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        goods = [d for d in dirs if _is_good_folder(d, good)]
        defects = [d for d in dirs if d not in goods]
        return goods, defects

    @classmethod
    def open(
        cls, root: str | Path, *, good: Sequence[str] | None = None, merge: str | None = None
    ) -> MaskFoldersReader:
        """Reader of a mask-folders dataset, from its dataset.yaml when there is one, else inferred.

        Args:
            root: the dataset folder.
            good: names of the good-image folders (default: detected by name).
            merge: one class name for every defect class (e.g. "defect"), or None to keep the folders'.

        Raises:
            DatasetError: no class folders, or no good folder.
        """
        r = Path(root)
        config: dict[str, Any] = {"layout": cls.layout}
        if (r / DATASET_YAML).is_file():
            config.update(yaml.safe_load((r / DATASET_YAML).read_text(encoding="utf-8")) or {})
        if good is not None:
            config["good"] = list(good)
        if merge is not None:
            config["merge"] = merge
        goods, defects = cls.class_folders(r, config.get("good"))
        if not goods and not defects:
            raise DatasetError(f"dataset {r} is empty: no class folders")
        if not goods:
            log.warning(
                "%s: no folder of good images found (names with free/good/ok); all are defect classes", r
            )
        names = [class_name_of(d) for d in defects]
        classes = ["good", str(config["merge"])] if config.get("merge") else ["good", *names]
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{r}: class folders {defects} give duplicate class names {classes}")
        return cls(r, classes, config)

    def _image_dir(self, folder: Path) -> Path:
        sub = folder / "Imgs"
        return sub if sub.is_dir() else folder

    def samples(self) -> list[Sample]:
        """Every image of every class folder, with its mask (good images: none needed) and group key."""
        goods, defects = self.class_folders(self.root, self.good_folders)
        rows: list[tuple[Path, Path, str]] = []
        for folder in goods + defects:
            d = self._image_dir(self.root / folder)
            files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            stems_with_other = {p.stem for p in files if p.suffix.lower() != ".png"}
            for p in files:
                if p.suffix.lower() == ".png" and p.stem in stems_with_other:
                    continue  # the mask of a same-name .jpg/.bmp
                mask = (
                    p.with_suffix(".png") if p.suffix.lower() != ".png" else p.with_name(p.stem + "_mask.png")
                )
                if folder in defects and not mask.is_file():
                    self.problems.append((str(p), "defect image without a same-name .png mask"))
                    log.warning("skipping %s: defect image without a same-name .png mask", p)
                    continue
                rows.append((p, mask, folder))
        stems = [p.stem for p, _, _ in rows]
        groups = numeric_id_groups(stems, int(self.config.get("group_gap", 300)))
        if groups is None:
            hashes: dict[str, int] = {}
            for p, _, _ in rows:
                img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                hashes[str(p)] = dhash(img) if img is not None else hash(str(p))
            near = near_duplicate_groups(hashes)
            key_of = {str(p): Path(near[str(p)]).stem for p, _, _ in rows}
        else:
            key_of = {str(p): groups[p.stem] for p, _, _ in rows}
        self._read_split()
        out = []
        for p, mask, folder in rows:
            self._source[p] = "good" if folder in goods else class_name_of(folder)
            out.append(Sample(p, mask, key_of[str(p)]))
        return out

    def _read_split(self) -> None:
        path = self.root / SPLIT_FILE
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{path} is not valid JSON: {e}") from e
        for side in ("train", "val", "test"):
            for rel in data.get(side, []) or []:
                self._split[str((self.root / rel).resolve())] = side

    def split_of(self, sample: Sample) -> str | None:
        """The sample's side in ``split.json`` (train/val/test), or None without a split file."""
        if not self._split:
            return None
        return self._split.get(str(sample.image.resolve()))

    def source_class(self, sample: Sample) -> str:
        """The class of the sample's folder ("good" for good folders), before any merge."""
        return self._source[sample.image]

    def class_index(self, sample: Sample) -> int:
        """Class index the sample's mask pixels get."""
        src = self.source_class(sample)
        if src == "good":
            return 0
        return 1 if self.config.get("merge") else self.classes.index(src)

    def read_mask(self, sample: Sample, image_shape: tuple[int, int]) -> np.ndarray | None:
        """The thresholded mask with the folder's class index (good images without a mask: all zero).

        Raises:
            DatasetError: the mask's size differs from the image's.
        """
        k = self.class_index(sample)
        if not sample.label.is_file():
            if k == 0:
                return np.zeros(image_shape, np.uint8)
            return None
        mask = cv2.imread(str(sample.label), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            return None
        if mask.shape != image_shape:
            raise DatasetError(
                f"mask {sample.label} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{sample.image.name} is {image_shape[1]}x{image_shape[0]}"
            )
        return (
            np.where(mask > self.threshold, k, 0).astype(np.uint8) if k else np.zeros(image_shape, np.uint8)
        )

    def load(
        self, size: tuple[int, int] | None = None, samples: Sequence[Sample] | None = None
    ) -> list[LoadedSample]:
        """Decode images and masks (resized to ``size`` = (H, W)); bad ones are reported and skipped.

        Every skipped file is logged with its name and reason and kept in :attr:`problems`.
        """
        out: list[LoadedSample] = []
        for s in self.samples() if samples is None else samples:
            pair = read_pair(s, self.read_mask, self._problem, "mask")
            if pair is None:
                continue
            image, mask = pair
            shape = (int(image.shape[0]), int(image.shape[1]))
            image, mask = fit_pair(image, mask, size)
            out.append(LoadedSample(s, image, mask, self.source_class(s), self.split_of(s), shape))
        return out

    def _problem(self, path: Path, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.problems.append((str(path), reason))


@dataclass(frozen=True)
class SameView:
    """A good-labelled image that shows the same view of its part as a defective one: a suspect label.

    Attributes:
        good: the good-labelled image.
        defective: the defective image of the same group it matches best.
        similarity: correlation of the two images' fine texture (-1 .. 1).
    """

    good: Path
    defective: Path
    similarity: float


SAME_VIEW_SIMILARITY = 0.6
"""Texture correlation from which a good image counts as the same view as a defective one. Set on magnetic
tile's training side: its 12 pairs above it (sizes within 10 %) are each one crop under two lights with the
defect visible in both (checked by eye), the next pair (0.61, but 11 % apart in size) a neighbouring crop
without the defect, and every other pair of a good and a defective image of one part is at most 0.57."""


def _fine_texture(image: np.ndarray) -> np.ndarray:
    """The image at 64 x 64 minus its blur, standardised: what a change of light leaves alone."""
    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    fine = small - cv2.GaussianBlur(small, (0, 0), 4)
    out: np.ndarray = (fine - fine.mean()) / (fine.std() + 1e-6)
    return out


def same_view_suspects(
    loaded: Sequence[LoadedSample],
    *,
    min_similarity: float = SAME_VIEW_SIMILARITY,
    max_size_change: float = 0.1,
) -> list[SameView]:
    """Good-labelled images that show the same view as a defective image of their own part (group).

    A part photographed several times (under other lights) whose defect is labelled on some photographs and
    not on others: the unlabelled ones still show it, so a network trained on them learns that the defect is
    good, and a calibration on them sets the threshold above the defect. Only images of one group are
    compared, so different parts never match. Sizes must agree too (the relative changes of height and
    width add up to at most ``max_size_change``): another crop of the part is another view.

    Args:
        loaded: the samples (the original sizes are in ``LoadedSample.shape``).
        min_similarity: the fine-texture correlation from which two images are one view.
        max_size_change: the most the two images' sizes may differ.

    Returns:
        The suspects, most similar first; each good image at most once, with its best match.
    """
    by_group: dict[str, list[LoadedSample]] = {}
    for ls in loaded:
        by_group.setdefault(ls.sample.group, []).append(ls)
    found: list[SameView] = []
    for members in by_group.values():
        bad = [(ls, _fine_texture(ls.image)) for ls in members if ls.mask.any()]
        if not bad:
            continue
        for good in (ls for ls in members if not ls.mask.any()):
            texture = _fine_texture(good.image)
            best: tuple[float, Path] | None = None
            for other, t in bad:
                (h0, w0), (h1, w1) = good.shape, other.shape
                if min(h0, w0, h1, w1) > 0 and abs(h0 / h1 - 1) + abs(w0 / w1 - 1) > max_size_change:
                    continue
                sim = float((texture * t).mean())
                if sim >= min_similarity and (best is None or sim > best[0]):
                    best = (sim, other.sample.image)
            if best is not None:
                found.append(SameView(good.sample.image, best[1], round(best[0], 3)))
    return sorted(found, key=lambda v: (-v.similarity, str(v.good)))


def suspect_labels(loaded: Sequence[LoadedSample]) -> dict[Path, str]:
    """Images whose label the data itself contradicts, each with the reason (see :func:`same_view_suspects`).

    - a defective image (its folder or labels say so) whose mask is empty at the loaded size: as a training
      image it would be a *good* one;
    - a good-labelled image that shows the same view as a defective image of its part.

    Returns:
        image path -> reason, for the report and for leaving them out of training and calibration.
    """
    out: dict[Path, str] = {}
    for ls in loaded:
        if ls.source_class != "good" and not ls.mask.any():
            out[ls.sample.image] = f"labelled {ls.source_class}, but its mask is empty" + (
                f" at {ls.image.shape[1]}x{ls.image.shape[0]}" if ls.shape != ls.image.shape[:2] else ""
            )
    for v in same_view_suspects([ls for ls in loaded if ls.sample.image not in out]):
        out[v.good] = (
            f"labelled good, but shows the same view as defective {v.defective.name} "
            f"(texture correlation {v.similarity:.2f}): the defect is probably there, unlabelled"
        )
    return out


def check_leaks(
    samples: Sequence[Sample],
    side: Mapping[Path, str],
    *,
    hashes: Mapping[Path, int] | None = None,
    max_bits: int = 3,
) -> list[str]:
    """Warnings for a split that looks leaky: a group on two sides, or near-identical images across sides.

    Args:
        samples: the samples.
        side: image -> side name.
        hashes: image -> difference hash (optional; enables the near-duplicate check). Use 256-bit hashes
            (``dhash(image, 16)``): smooth, striped surfaces collide often at 64 bits.
        max_bits: hashes differing in at most this many bits count as near-identical.

    Returns:
        Human-readable warnings (also logged); empty when nothing looks leaky.
    """
    sides_of: dict[str, set[str]] = {}
    for s in samples:
        if s.image in side:
            sides_of.setdefault(s.group, set()).add(side[s.image])
    warnings_: list[str] = []
    split_groups = sorted(g for g, v in sides_of.items() if len(v) > 1)
    if split_groups:
        warnings_.append(
            f"{len(split_groups)} group(s) have images on more than one side of the split "
            f"(e.g. {', '.join(split_groups[:3])}): the split may leak one part into both sides"
        )
    if hashes:
        by_side: dict[str, list[tuple[Path, int]]] = {}
        for p, h in hashes.items():
            if p in side:
                by_side.setdefault(side[p], []).append((p, h))
        names = sorted(by_side)
        pairs = 0
        example = ""
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                for pa, ha in by_side[a]:
                    for pb, hb in by_side[b]:
                        if bin(ha ^ hb).count("1") <= max_bits:
                            pairs += 1
                            example = example or f"{pa.name} ~ {pb.name}"
        if pairs:
            warnings_.append(f"{pairs} near-identical image pair(s) across split sides (e.g. {example})")
    for w in warnings_:
        log.warning("leaky split? %s", w)
    return warnings_


# The readers of the other layouts (YOLO segmentation, labelme, VOC, plain images) register themselves on
# import; imported last because they build on the classes above.
from qcstation.training import layouts as _layouts  # noqa: E402, F401
