"""Dataset layouts beside mask folders: YOLO segmentation, labelme, Pascal VOC, and plain good images.

Every reader here is a registered :class:`~qcstation.training.data.LayoutReader`, so a ``dataset.yaml``
naming its layout works with :class:`~qcstation.training.data.SegmentationDataset`. They also work without a
``dataset.yaml``: :func:`detect_layout` recognises the folder, and the readers infer the class list.

=============  ====================================================================================
layout         folder
=============  ====================================================================================
yolo_seg       ``images/[train|val|test/]*.jpg`` + ``labels/…/<stem>.txt`` lines ``class x1 y1 x2 y2 …``
               (normalised polygon; ``class cx cy w h`` boxes too) + a yaml with ``names``
labelme        ``<stem>.json`` (labelme polygons, rectangles, circles, lines) beside ``<stem>.jpg``
voc            ``Annotations/<stem>.xml`` + ``JPEGImages/<stem>.jpg`` (boxes become box masks);
               ``ImageSets/Main/{train,val,test}.txt`` give the split
plain_images   a folder of good images alone (no labels): class ``anomaly`` for good-only training
=============  ====================================================================================

Index 0 of the classes is always good/background; vector labels are drawn with OpenCV (``fillPoly``,
``rectangle``) largest first, so a small defect inside a large one stays visible. Points outside the image
are clipped and reported with the label file's name; a malformed label file is reported by name and its
image skipped; a class name the label map does not know stops with a :class:`DatasetError` naming it.

Group keys (so one physical part stays on one side of a split): ``group_pattern`` in dataset.yaml (a
regular expression on the file stem; its first group, or the whole match, is the key), else the default
stem key (:func:`~qcstation.training.data.group_key`) joined with near-duplicate grouping by a 256-bit
difference hash. A ``split.json`` (``{"train": [...], "val": [...], "test": [...]}``, paths relative to
the root) or the layout's own split (YOLO's ``images/<side>/``, VOC's ``ImageSets/Main``) names each
image's side.

:func:`open_dataset` opens any layout (given, from dataset.yaml, or detected) behind one interface,
:class:`DatasetReader`: the samples, decoded images and masks, and every problem by file name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcstation.training.data import (
    DATASET_YAML,
    IMAGE_SUFFIXES,
    READERS,
    SPLIT_FILE,
    LayoutReader,
    LoadedSample,
    MaskFoldersReader,
    Sample,
    dhash,
    fit_pair,
    group_key,
    read_pair,
    register_reader,
)
from qcstation.training.errors import DatasetError

log = logging.getLogger(__name__)

ShapeKind = Literal["polygon", "box", "circle", "line"]
SIDES = ("train", "val", "test")
SIDE_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SIDE_ALIASES |= {"test": "test", "testing": "test"}
GOOD_LABELS = frozenset({"good", "ok", "background", "_background_", "bg"})
#: 256-bit difference hashes this close (under a tenth of the bits; unrelated frames differ in about half)
#: are near-duplicates, one part shot twice, and share a group.
NEAR_DUPLICATE_BITS = 24


@dataclass(frozen=True)
class Shape:
    """One vector label.

    Attributes:
        cls: class index (into the reader's classes, 0 = good).
        kind: polygon, box (two corners), circle (centre and a point on it) or line (a polyline).
        points: K x 2 (x, y) coordinates, in pixels or, when ``normalised``, as fractions of width/height.
        normalised: coordinates are fractions of the image size (YOLO).
    """

    cls: int
    kind: ShapeKind
    points: np.ndarray
    normalised: bool = False


class LabelFileError(ValueError):
    """A label file that cannot be parsed (the reader reports it by name and skips its image)."""


class UnknownClassError(DatasetError):
    """A label names a class the label map does not have.

    Args:
        label: the label file.
        name: the class as the label names it.
        classes: the label map.
    """

    def __init__(self, label: Path, name: str, classes: Sequence[str]) -> None:
        super().__init__(f"{label.name}: class {name!r} is not in the label map {list(classes)}")
        self.label = label
        self.name = name


def _list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in it
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _shown(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


class _UnionFind:
    def __init__(self, keys: Sequence[str]) -> None:
        self.parent = {k: k for k in keys}

    def find(self, k: str) -> str:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_groups(
    images: Sequence[Path], root: Path, config: Mapping[str, Any], *, max_bits: int = NEAR_DUPLICATE_BITS
) -> dict[Path, str]:
    """Group key of every image (see the module docstring).

    Args:
        images: the dataset's images.
        root: the dataset folder (group names are paths relative to it).
        config: dataset.yaml; ``group_pattern`` (a regular expression on the stem) wins when given.
        max_bits: 256-bit difference hashes differing in at most this many bits are near-duplicates.

    Returns:
        image -> group key.

    Raises:
        DatasetError: ``group_pattern`` is not a valid regular expression.
    """
    pattern = config.get("group_pattern")
    if pattern:
        try:
            rx = re.compile(str(pattern))
        except re.error as e:
            raise DatasetError(
                f"dataset.yaml group_pattern {pattern!r} is not a regular expression: {e}"
            ) from e
        out: dict[Path, str] = {}
        for p in images:
            m = rx.search(p.stem)
            out[p] = (m.group(1) if m.groups() else m.group(0)) if m else p.stem
        return out
    names = {p: p.relative_to(root).with_suffix("").as_posix() for p in images}
    uf = _UnionFind(sorted(names.values()))
    by_key: dict[str, str] = {}
    for p in images:
        key = str(Path(names[p]).parent / group_key(p))
        if key in by_key:
            uf.union(by_key[key], names[p])
        else:
            by_key[key] = names[p]
    hashed: list[tuple[str, int]] = []
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is not None and img.size:
            hashed.append((names[p], dhash(img, 16)))
    if len(hashed) > 1:
        bits = np.array([[(h >> i) & 1 for i in range(256)] for _, h in hashed], dtype=np.float32)  # N x 256
        # Hamming distances as two matrix products (bits differ where one has 1, the other 0), in row
        # blocks so a large dataset never holds the whole N x N matrix
        for start in range(0, len(hashed), 1024):
            block = bits[start : start + 1024]
            dist = block @ (1.0 - bits).T + (1.0 - block) @ bits.T
            for i, j in np.argwhere(dist <= max_bits):
                if start + int(i) < int(j):
                    uf.union(hashed[start + int(i)][0], hashed[int(j)][0])
    out = {p: uf.find(names[p]) for p in images}
    biggest = Counter(out.values()).most_common(1)
    if len(images) >= 10 and biggest and biggest[0][1] > len(images) // 2:
        log.warning(
            "%s: near-duplicate grouping put %d of %d images into one group (%s); if they are different "
            "parts, set group_pattern in %s",
            root,
            biggest[0][1],
            len(images),
            biggest[0][0],
            DATASET_YAML,
        )
    return out


def _read_split_json(root: Path) -> dict[Path, str]:
    path = root / SPLIT_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected {{'train': [...], 'test': [...]}}, got {type(data).__name__}")
    out: dict[Path, str] = {}
    for side in SIDES:
        for rel in data.get(side, []) or []:
            out[(root / str(rel)).resolve()] = side
    return out


class AnnotationReader(LayoutReader):
    """Base of the readers whose labels are vector shapes, rasterised into class-index masks.

    Subclasses implement :meth:`find` (images and their label files), :meth:`parse` (one label file to
    shapes) and, to work without a dataset.yaml, :meth:`detect` and :meth:`infer_classes`.

    Attributes:
        problems: (file, reason) of every label file reported: malformed (image skipped) or clipped (kept).
    """

    def __init__(self, root: Path, classes: Sequence[str], config: Mapping[str, Any]) -> None:
        super().__init__(root, classes, config)
        self.problems: list[tuple[str, str]] = []
        self._shapes: dict[Path, list[Shape]] = {}
        self._declared: dict[Path, tuple[int, int]] = {}
        self._side: dict[Path, str] = {}
        self._reported: set[tuple[str, str]] = set()

    # -- what a layout supplies --------------------------------------------------------------------------

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this layout."""
        return False

    @classmethod
    def infer_classes(cls, root: Path, config: Mapping[str, Any]) -> list[str]:
        """The class list (index 0 = good) when dataset.yaml gives none.

        Raises:
            DatasetError: the classes cannot be inferred.
        """
        raise DatasetError(f"{root}: layout {cls.layout} needs 'classes' in {DATASET_YAML}")

    def find(self) -> list[tuple[Path, Path | None, str | None]]:
        """(image, its label file or None for an unlabelled = good image, split side or None)."""
        raise NotImplementedError

    def parse(self, label: Path, image: Path) -> tuple[list[Shape], tuple[int, int] | None]:
        """Shapes of one label file and the image size it declares as (H, W), if it declares one.

        Raises:
            LabelFileError: the file is malformed (reported, image skipped).
            UnknownClassError: it names a class the label map does not know (collected, then raised).
        """
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------------

    def class_of(self, name: str, label: Path) -> int:
        """Index of a class name in the label map.

        Raises:
            UnknownClassError: an unknown name (the message names the file and the known classes).
        """
        if name in self.classes:
            return self.classes.index(name)
        if name.lower() in GOOD_LABELS:
            return 0
        raise UnknownClassError(label, name, self.classes)

    def report(self, path: Path, reason: str) -> None:
        """Record (once) and log a problem with a file."""
        if (str(path), reason) in self._reported:
            return
        self._reported.add((str(path), reason))
        self.problems.append((str(path), reason))
        log.warning("%s: %s", path, reason)

    def samples(self) -> list[Sample]:
        """Every image whose labels parse, with its group key; unknown class names stop with a clear error.

        Raises:
            DatasetError: label files name classes that are not in the label map.
        """
        rows = self.find()
        unknown: dict[str, list[str]] = {}
        kept: list[tuple[Path, Path]] = []
        split = _read_split_json(self.root)
        for image, label, side in rows:
            shapes: list[Shape] = []
            if label is not None:
                try:
                    shapes, declared = self.parse(label, image)
                except LabelFileError as e:
                    self.report(label, f"malformed label file, image {image.name} skipped: {e}")
                    continue
                except UnknownClassError as e:
                    unknown.setdefault(repr(e.name), []).append(label.name)
                    continue
                if declared is not None:
                    self._declared[image] = declared
            self._shapes[image] = shapes
            chosen = split.get(image.resolve(), side)
            if chosen is not None:
                self._side[image] = chosen
            # an unlabelled (good) image gets a label path that does not exist: nothing to read or hash
            kept.append((image, label if label is not None else image.with_suffix(".nolabel")))
        if unknown:
            parts = [f"{name} (in {_shown(files, 3)})" for name, files in sorted(unknown.items())]
            raise DatasetError(
                f"{self.root}: label files name classes that are not in the label map {list(self.classes)}: "
                + "; ".join(parts)
                + f" — add them to 'classes' in {DATASET_YAML}, or fix the labels"
            )
        groups = assign_groups([i for i, _ in kept], self.root, self.config)
        return [Sample(image, label, groups[image]) for image, label in kept]

    def split_of(self, sample: Sample) -> str | None:
        """The sample's side (split.json, else the layout's own split), or None."""
        return self._side.get(sample.image)

    def read_mask(self, sample: Sample, image_shape: tuple[int, int]) -> np.ndarray | None:
        """Rasterise the sample's shapes (largest first) at the image's size; clip and report strays.

        Raises:
            DatasetError: the label file declares another image size than the image has.
        """
        if sample.image not in self._shapes:
            self.samples()
        h, w = image_shape
        declared = self._declared.get(sample.image)
        if declared is not None and declared != (h, w):
            raise DatasetError(
                f"label {sample.label} is for a {declared[1]}x{declared[0]} (WxH) image but its image "
                f"{sample.image.name} is {w}x{h}"
            )
        mask = np.zeros((h, w), np.uint8)
        drawn: list[tuple[float, Shape, np.ndarray]] = []
        outside = False
        for s in self._shapes.get(sample.image, []):
            pts = s.points * np.array([w, h], np.float64) if s.normalised else s.points.astype(np.float64)
            tol = 0.5 if not s.normalised else 1e-3 * max(w, h)
            if (pts < -tol).any() or (pts[:, 0] > w + tol).any() or (pts[:, 1] > h + tol).any():
                outside = True
            pts = np.clip(pts, 0.0, [w - 1, h - 1])
            area = float(np.ptp(pts[:, 0]) * np.ptp(pts[:, 1])) if len(pts) else 0.0
            drawn.append((area, s, pts))
        if outside:
            self.report(sample.label, f"label points outside the {w}x{h} (WxH) image were clipped")
        for _, s, pts in sorted(drawn, key=lambda t: -t[0]):
            ipts = np.round(pts).astype(np.int32)
            if s.kind == "polygon":
                cv2.fillPoly(mask, [ipts.reshape(-1, 1, 2)], int(s.cls))
            elif s.kind == "box":
                x0, y0 = ipts.min(axis=0)
                x1, y1 = ipts.max(axis=0)
                cv2.rectangle(mask, (int(x0), int(y0)), (int(x1), int(y1)), int(s.cls), -1)
            elif s.kind == "circle":
                r = round(float(np.hypot(*(pts[1] - pts[0]))))
                cv2.circle(mask, (int(ipts[0, 0]), int(ipts[0, 1])), max(1, r), int(s.cls), -1)
            else:
                cv2.polylines(
                    mask, [ipts.reshape(-1, 1, 2)], False, int(s.cls), max(1, round(max(h, w) / 200))
                )
        return mask


# -- YOLO segmentation -----------------------------------------------------------------------------------


def _yolo_names(root: Path, config: Mapping[str, Any]) -> list[str] | None:
    """YOLO class names from dataset.yaml / data.yaml / any root yaml with ``names``."""
    if "names" in config:
        candidates: list[Any] = [config]
    else:
        candidates = []
        for p in [root / DATASET_YAML, root / "data.yaml", *sorted(root.glob("*.y*ml"))]:
            if p.is_file():
                try:
                    candidates.append(yaml.safe_load(p.read_text(encoding="utf-8")))
                except yaml.YAMLError as e:
                    raise DatasetError(f"{p} is not valid YAML: {e}") from e
    for c in candidates:
        if isinstance(c, dict) and "names" in c:
            names = c["names"]
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


@register_reader
class YoloSegReader(AnnotationReader):
    """YOLO segmentation: ``images/`` + ``labels/*.txt`` (one object a line) + a yaml with ``names``.

    A line is ``<class> x1 y1 x2 y2 … `` (a polygon of at least 3 points) or ``<class> cx cy w h`` (a box),
    coordinates as fractions of the image. YOLO class ``k`` is class ``k + 1`` here (0 is good); an image
    without a label file is a good image. ``images/train``, ``images/val``, ``images/test`` give the split.
    """

    layout = "yolo_seg"

    @classmethod
    def detect(cls, root: Path) -> bool:
        """``images/`` and ``labels/`` folders side by side."""
        return (root / "images").is_dir() and (root / "labels").is_dir()

    @classmethod
    def infer_classes(cls, root: Path, config: Mapping[str, Any]) -> list[str]:
        """``good`` + the yaml's ``names``.

        Raises:
            DatasetError: no yaml with ``names``.
        """
        names = _yolo_names(root, config)
        if not names:
            raise DatasetError(
                f"{root}: YOLO layout without class names; add a data.yaml with 'names: [...]' "
                f"(or 'classes: [good, ...]' in {DATASET_YAML})"
            )
        return ["good", *names]

    def find(self) -> list[tuple[Path, Path | None, str | None]]:
        """Images under ``images/``, labels at the mirrored path under ``labels/``."""
        images_dir, labels_dir = self.root / "images", self.root / "labels"
        if not images_dir.is_dir():
            raise DatasetError(f"{self.root}: YOLO layout expects an images/ folder")
        out: list[tuple[Path, Path | None, str | None]] = []
        for img in _list_images(images_dir, recursive=True):
            rel = img.relative_to(images_dir)
            label = (labels_dir / rel).with_suffix(".txt")
            side = SIDE_ALIASES.get(rel.parts[0].lower()) if len(rel.parts) > 1 else None
            out.append((img, label if label.is_file() else None, side))
        return out

    def parse(self, label: Path, image: Path) -> tuple[list[Shape], tuple[int, int] | None]:
        """One shape per non-empty line.

        Raises:
            LabelFileError: a line that is not numbers, or has too few or an odd number of coordinates.
            UnknownClassError: a class id beyond the names.
        """
        shapes: list[Shape] = []
        try:
            text = label.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LabelFileError(f"cannot read: {e}") from e
        for n, line in enumerate(text.splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                cls_id = int(tokens[0])
                values = [float(t) for t in tokens[1:]]
            except ValueError as e:
                raise LabelFileError(
                    f"line {n}: expected '<class> x1 y1 x2 y2 ...', got {line[:60]!r}"
                ) from e
            if cls_id < 0 or cls_id + 1 >= len(self.classes):
                raise UnknownClassError(label, f"YOLO class id {cls_id}", self.classes)
            if len(values) == 4:
                cx, cy, bw, bh = values
                pts = np.array([[cx - bw / 2, cy - bh / 2], [cx + bw / 2, cy + bh / 2]])
                shapes.append(Shape(cls_id + 1, "box", pts, normalised=True))
            elif len(values) >= 6 and len(values) % 2 == 0:
                pts = np.array(values, np.float64).reshape(-1, 2)
                shapes.append(Shape(cls_id + 1, "polygon", pts, normalised=True))
            else:
                raise LabelFileError(
                    f"line {n}: {len(values)} coordinates; expected 4 (a box) or an even number >= 6 "
                    "(a polygon)"
                )
        return shapes, None


# -- labelme -------------------------------------------------------------------------------------------


class _LabelmeShape(BaseModel):
    model_config = ConfigDict(extra="ignore")
    label: str
    points: list[tuple[float, float]]
    shape_type: str | None = "polygon"


class _LabelmeFile(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    image_path: str = Field(alias="imagePath")
    image_height: int | None = Field(default=None, alias="imageHeight")
    image_width: int | None = Field(default=None, alias="imageWidth")
    shapes: list[_LabelmeShape]


def _labelme_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.json")
        if p.name != SPLIT_FILE and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _looks_like_labelme(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "shapes" in data and "imagePath" in data


@register_reader
class LabelmeReader(AnnotationReader):
    """labelme JSON files beside their images: polygons, rectangles, circles, lines and line strips.

    The image is the file's ``imagePath`` (relative to the JSON); images with no JSON are good images.
    Shape labels are class names; ``good``/``background`` labels draw nothing.
    """

    layout = "labelme"
    _SHAPES: ClassVar[dict[str, ShapeKind]] = {
        "polygon": "polygon",
        "rectangle": "box",
        "circle": "circle",
        "line": "line",
        "linestrip": "line",
    }

    @classmethod
    def detect(cls, root: Path) -> bool:
        """A labelme JSON (``shapes`` and ``imagePath``) under the root."""
        return any(_looks_like_labelme(p) for p in _labelme_files(root)[:20])

    @classmethod
    def infer_classes(cls, root: Path, config: Mapping[str, Any]) -> list[str]:
        """``good`` + every shape label found, sorted (malformed files are skipped here, reported later).

        Raises:
            DatasetError: no label names at all.
        """
        names: set[str] = set()
        for p in _labelme_files(root):
            try:
                data = _LabelmeFile.model_validate_json(p.read_bytes())
            except (OSError, ValidationError):
                continue
            names.update(s.label for s in data.shapes if s.label.lower() not in GOOD_LABELS)
        if not names:
            raise DatasetError(
                f"{root}: no labelme shapes found; a folder of good images is layout plain_images"
            )
        return ["good", *sorted(names)]

    def find(self) -> list[tuple[Path, Path | None, str | None]]:
        """Each JSON's image, plus images without a JSON (good)."""
        out: dict[Path, tuple[Path, Path | None, str | None]] = {}
        for js in _labelme_files(self.root):
            try:
                data = json.loads(js.read_text(encoding="utf-8"))
                ref = data.get("imagePath") if isinstance(data, dict) else None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                ref = None
            image: Path | None = None
            if ref:
                # labelme on Windows writes backslashes; a path outside the dataset folder is not used
                cand = Path(os.path.normpath(js.parent / str(ref).replace("\\", "/")))
                root = os.path.abspath(self.root)
                if cand.is_file() and os.path.commonpath([os.path.abspath(cand), root]) == root:
                    image = cand
            if image is None:
                same = [js.with_suffix(s) for s in IMAGE_SUFFIXES if js.with_suffix(s).is_file()]
                image = same[0] if same else None
            if image is None:
                self.report(
                    js,
                    "label file without its image (imagePath missing, not found or outside the dataset); "
                    "skipped",
                )
                continue
            out[image.resolve()] = (image, js, None)
        for img in _list_images(self.root, recursive=True):
            out.setdefault(img.resolve(), (img, None, None))
        return sorted(out.values(), key=lambda t: str(t[0]))

    def parse(self, label: Path, image: Path) -> tuple[list[Shape], tuple[int, int] | None]:
        """Validate the JSON with pydantic and convert its shapes.

        Raises:
            LabelFileError: not JSON, or not labelme's structure, or a shape with too few points.
            UnknownClassError: an unknown label name.
        """
        try:
            data = _LabelmeFile.model_validate_json(label.read_bytes())
        except OSError as e:
            raise LabelFileError(f"cannot read: {e}") from e
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise LabelFileError(f"not a labelme file: {where}: {first['msg']}") from e
        shapes: list[Shape] = []
        for k, s in enumerate(data.shapes):
            if s.label.lower() in GOOD_LABELS:
                continue
            cls = self.class_of(s.label, label)
            kind = self._SHAPES.get(s.shape_type or "polygon")
            if kind is None:
                self.report(label, f"shape {k} ({s.shape_type}) is not drawable as a mask; ignored")
                continue
            need = {"polygon": 3, "box": 2, "circle": 2, "line": 2}[kind]
            if len(s.points) < need:
                raise LabelFileError(f"shape {k} ({s.label}, {s.shape_type}) has {len(s.points)} point(s)")
            shapes.append(Shape(cls, kind, np.array(s.points, np.float64)))
        declared = (
            (data.image_height, data.image_width)
            if data.image_height is not None and data.image_width is not None
            else None
        )
        return shapes, declared


# -- Pascal VOC ------------------------------------------------------------------------------------------


def _voc_xmls(root: Path) -> list[Path]:
    ann = root / "Annotations"
    return sorted(ann.glob("*.xml")) if ann.is_dir() else sorted(root.glob("*.xml"))


def _parse_voc(path: Path) -> ET.Element:
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise LabelFileError(f"not valid XML: {e}") from e
    node = tree.getroot()
    if node.tag != "annotation":
        raise LabelFileError(f"root element <{node.tag}>, expected <annotation>")
    return node


@register_reader
class VocReader(AnnotationReader):
    """Pascal VOC: ``Annotations/<stem>.xml`` boxes, ``JPEGImages/`` images (or both in the root).

    Boxes (1-based inclusive pixel corners) become filled box masks. ``ImageSets/Main/{train,val,test}.txt``
    name the split. Images without an XML are good images.
    """

    layout = "voc"

    @classmethod
    def detect(cls, root: Path) -> bool:
        """An ``Annotations/`` folder or root XML files with an ``<annotation>`` element."""
        for p in _voc_xmls(root)[:20]:
            try:
                _parse_voc(p)
            except LabelFileError:
                continue
            return True
        return False

    @classmethod
    def infer_classes(cls, root: Path, config: Mapping[str, Any]) -> list[str]:
        """``good`` + every object name found, sorted.

        Raises:
            DatasetError: no objects at all.
        """
        names: set[str] = set()
        for p in _voc_xmls(root):
            try:
                node = _parse_voc(p)
            except LabelFileError:
                continue
            names.update(
                (o.findtext("name") or "").strip()
                for o in node.iter("object")
                if (o.findtext("name") or "").strip().lower() not in GOOD_LABELS
            )
        names.discard("")
        if not names:
            raise DatasetError(
                f"{root}: no VOC objects found; a folder of good images is layout plain_images"
            )
        return ["good", *sorted(names)]

    def _image_dir(self) -> Path:
        d = self.root / "JPEGImages"
        return d if d.is_dir() else self.root

    def find(self) -> list[tuple[Path, Path | None, str | None]]:
        """Images of the image folder, each with ``<stem>.xml`` when there is one, and its ImageSets side."""
        ann = self.root / "Annotations"
        xml_dir = ann if ann.is_dir() else self.root
        sides: dict[str, str] = {}
        sets = self.root / "ImageSets" / "Main"
        for side in SIDES:
            f = sets / f"{side}.txt"
            if f.is_file():
                for line in f.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        sides[line.split()[0]] = side
        out: list[tuple[Path, Path | None, str | None]] = []
        for img in _list_images(self._image_dir()):
            xml = xml_dir / f"{img.stem}.xml"
            out.append((img, xml if xml.is_file() else None, sides.get(img.stem)))
        return out

    def parse(self, label: Path, image: Path) -> tuple[list[Shape], tuple[int, int] | None]:
        """Boxes of every ``<object>``.

        Raises:
            LabelFileError: not VOC XML, or a box without four numeric corners.
            UnknownClassError: an unknown object name.
        """
        node = _parse_voc(label)
        shapes: list[Shape] = []
        for k, obj in enumerate(node.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name.lower() in GOOD_LABELS:
                continue
            cls = self.class_of(name, label)
            box = obj.find("bndbox")
            try:
                if box is None:
                    raise ValueError("no <bndbox>")
                x0, y0, x1, y1 = (float(box.findtext(t) or "") for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as e:
                raise LabelFileError(f"object {k} ({name}): bounding box is not four numbers ({e})") from e
            # VOC corners are 1-based and inclusive
            shapes.append(Shape(cls, "box", np.array([[x0 - 1, y0 - 1], [x1 - 1, y1 - 1]], np.float64)))
        size = node.find("size")
        declared: tuple[int, int] | None = None
        if size is not None:
            try:
                w, h = int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
            except ValueError:
                w = h = 0
            declared = (h, w) if h > 0 and w > 0 else None
        return shapes, declared


# -- plain images (good only) ----------------------------------------------------------------------------


@register_reader
class PlainImagesReader(AnnotationReader):
    """A folder of good images alone (recursively), no labels: every mask is empty.

    Classes default to ``[good, anomaly]``, for good-only training with synthetic anomalies.
    """

    layout = "plain_images"

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Any image under the root (checked last: every other layout has images too)."""
        return bool(_list_images(root, recursive=True))

    @classmethod
    def infer_classes(cls, root: Path, config: Mapping[str, Any]) -> list[str]:
        """``[good, anomaly]``."""
        return ["good", "anomaly"]

    def find(self) -> list[tuple[Path, Path | None, str | None]]:
        """Every image, no label."""
        return [(p, None, None) for p in _list_images(self.root, recursive=True)]

    def parse(self, label: Path, image: Path) -> tuple[list[Shape], tuple[int, int] | None]:
        """Never called: there are no label files."""
        return [], None


# -- detection and one interface over every layout -------------------------------------------------------


def _looks_like_mask_folders(root: Path) -> bool:
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folder = d / "Imgs" if (d / "Imgs").is_dir() else d
        files = _list_images(folder)
        stems = {p.stem for p in files if p.suffix.lower() != ".png"}
        if any(p.suffix.lower() == ".png" and (p.stem in stems or p.stem.endswith("_mask")) for p in files):
            return True
    return False


#: detection order: the most specific layouts first, plain images last
DETECT_ORDER: tuple[str, ...] = (
    "yolo_seg",
    "voc",
    "labelme",
    "indexed_masks",
    "mask_folders",
    "plain_images",
)


def _looks_like_indexed_masks(root: Path) -> bool:
    masks = root / "masks"
    return masks.is_dir() and any((masks / f"{p.stem}.png").is_file() for p in _list_images(root))


def detect_layout(root: Path) -> str | None:
    """The layout of a dataset folder: dataset.yaml's ``layout`` when it names one, else recognised.

    Args:
        root: the dataset folder.

    Returns:
        A key of :data:`~qcstation.training.data.READERS`, or None when nothing fits (no images at all).
    """
    cfg_path = root / DATASET_YAML
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            cfg = None
        if isinstance(cfg, dict) and cfg.get("layout") in READERS:
            return str(cfg["layout"])
    if not root.is_dir():
        return None
    for name in DETECT_ORDER:
        if name == "indexed_masks":
            if _looks_like_indexed_masks(root):
                return name
            continue
        if name == MaskFoldersReader.layout:
            if _looks_like_mask_folders(root):
                return name
            continue
        cls = READERS.get(name)
        if isinstance(cls, type) and issubclass(cls, AnnotationReader) and cls.detect(root):
            return name
    return None


def complete_config(root: Path, config: Mapping[str, Any], layout: str) -> dict[str, Any]:
    """dataset.yaml's mapping with ``layout`` set and ``classes`` inferred when the layout can infer them.

    Raises:
        DatasetError: the layout needs a class list and none can be inferred.
    """
    out = dict(config)
    out["layout"] = layout
    if "classes" not in out and layout == MaskFoldersReader.layout:
        out["classes"] = list(MaskFoldersReader.open(root, merge=out.get("merge")).classes)
    elif "classes" not in out:
        cls = READERS[layout]
        if isinstance(cls, type) and issubclass(cls, AnnotationReader):
            out["classes"] = cls.infer_classes(root, out)
        else:
            raise DatasetError(
                f"{root}: layout {layout} needs 'classes' in {DATASET_YAML} (the names of the mask values "
                "0, 1, …; 0 = good)"
            )
    return out


class DatasetReader:
    """Any layout behind one interface: samples, decoded gray images with masks, and problems by file.

    Build it with :func:`open_dataset`. With ``merge``, every defect class becomes the one class ``merge``
    (``classes`` is then ``(good, merge)``); :attr:`LoadedSample.source_class` keeps the original name.

    Args:
        reader: the layout reader.
        merge: one class name for every defect class, or None.
    """

    def __init__(self, reader: LayoutReader, merge: str | None = None) -> None:
        self.reader = reader
        self.merge = merge if not isinstance(reader, MaskFoldersReader) else None
        self._own: list[tuple[str, str]] = []

    @property
    def layout(self) -> str:
        """The layout name."""
        return self.reader.layout

    @property
    def root(self) -> Path:
        """The dataset folder."""
        return self.reader.root

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names the model gets (after any merge), index 0 = good."""
        return ("good", self.merge) if self.merge else self.reader.classes

    @property
    def problems(self) -> list[tuple[str, str]]:
        """(file, reason) of everything reported, once each."""
        inner = getattr(self.reader, "problems", [])
        seen: set[tuple[str, str]] = set()
        out: list[tuple[str, str]] = []
        for p in [*inner, *self._own]:
            if p not in seen:
                seen.add(p)
                out.append(p)
        return out

    def samples(self) -> list[Sample]:
        """The layout's samples."""
        return self.reader.samples()

    def split_of(self, sample: Sample) -> str | None:
        """The sample's split side, or None."""
        r = self.reader
        if isinstance(r, (AnnotationReader, MaskFoldersReader)):
            return r.split_of(sample)
        side = _read_split_json(self.root)
        return side.get(sample.image.resolve())

    def _problem(self, path: Path, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self._own.append((str(path), reason))

    def load(
        self, size: tuple[int, int] | None = None, samples: Sequence[Sample] | None = None
    ) -> list[LoadedSample]:
        """Decode gray images and masks (resized to ``size`` = (H, W)); bad ones are reported and skipped.

        Args:
            size: (H, W) to resize to, or None for the native size.
            samples: which samples (default: all).

        Returns:
            The decoded samples.
        """
        if isinstance(self.reader, MaskFoldersReader):
            return self.reader.load(size, samples)
        out: list[LoadedSample] = []
        names = self.reader.classes
        for s in self.samples() if samples is None else samples:
            pair = read_pair(s, self.reader.read_mask, self._problem, "labels")
            if pair is None:
                continue
            image, mask = pair
            counts = np.bincount(mask.ravel(), minlength=len(names))
            counts[0] = 0
            source = names[int(counts.argmax())] if counts.any() else "good"
            if self.merge:
                mask = (mask > 0).astype(np.uint8)
            shape = (int(image.shape[0]), int(image.shape[1]))
            image, mask = fit_pair(image, mask, size)
            out.append(LoadedSample(s, image, mask, source, self.split_of(s), shape))
        return out


def open_dataset(root: str | Path, *, layout: str | None = None, merge: str | None = None) -> DatasetReader:
    """Open a dataset folder of any layout.

    Args:
        root: the dataset folder.
        layout: the layout (default: dataset.yaml's, else detected).
        merge: one class name for every defect class (e.g. "defect", or "anomaly" for good-only), or None.

    Returns:
        The opened dataset.

    Raises:
        DatasetError: the folder is missing or empty, the layout is unknown or not recognised, or the
            classes cannot be inferred.
    """
    r = Path(root)
    if not r.is_dir():
        raise DatasetError(f"dataset folder not found: {r}")
    name = layout or detect_layout(r)
    if name is None:
        raise DatasetError(
            f"dataset {r} is empty or not recognised: no images ({', '.join(IMAGE_SUFFIXES)}) found; "
            f"known layouts: {sorted(READERS)}"
        )
    if name not in READERS:
        raise DatasetError(f"layout {name!r} is not supported; known layouts: {sorted(READERS)}")
    if name == MaskFoldersReader.layout:
        return DatasetReader(MaskFoldersReader.open(r, merge=merge))
    config: dict[str, Any] = {}
    if (r / DATASET_YAML).is_file():
        try:
            loaded = yaml.safe_load((r / DATASET_YAML).read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DatasetError(f"{r / DATASET_YAML} is not valid YAML: {e}") from e
        config = dict(loaded) if isinstance(loaded, dict) else {}
    config = complete_config(r, config, name)
    classes = config.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) != len(classes):
        raise DatasetError(f"{r}: expected 'classes' to list at least 2 distinct names, got {classes!r}")
    reader = READERS[name](r, [str(c) for c in classes], config)
    return DatasetReader(reader, merge)


def class_counts(loaded: Sequence[LoadedSample], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per class, the images containing it and its labelled pixels (``good``: images without a defect)."""
    images: Counter[str] = Counter()
    pixels: Counter[str] = Counter()
    for s in loaded:
        counts = np.bincount(s.mask.ravel(), minlength=len(classes))[: len(classes)]
        if not counts[1:].any():
            images["good"] += 1
        for k in range(1, len(classes)):
            if counts[k]:
                images[classes[k]] += 1
                pixels[classes[k]] += int(counts[k])
    return {c: {"images": images[c], "pixels": pixels[c]} for c in classes}
