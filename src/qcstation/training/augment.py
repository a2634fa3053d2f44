"""Augmentation chosen by name (a preset) or by a YAML file that overrides a preset.

The presets (``light``, ``default``, ``heavy``) live in :func:`qcstation.training.defectnet.augmentation`. A
quality engineer who knows their line better than a preset does writes a YAML file instead::

    preset: default        # the starting point
    rotate90: false        # parts filmed in one orientation: no random 90° turns
    strength: 0.7          # scales the affine, lighting, blur and noise ranges (1.0 = the preset's)

or replaces the pipeline whole with albumentations' own serialisation (``A.to_dict`` of a ``Compose``, e.g.
written by ``A.save(pipeline, "aug.yaml", data_format="yaml")``)::

    pipeline: {__version__: ..., transform: {__class_fullname__: Compose, transforms: [...]}}

Both are checked when loaded: an unknown key, a preset that does not exist or a pipeline albumentations cannot
build is an :class:`AugmentationError` that says which, before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qcstation.training.errors import TrainingError

PRESETS = ("light", "default", "heavy")
"""The named augmentation presets."""

Augment = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class AugmentationError(TrainingError):
    """An augmentation preset or YAML file cannot be used."""

    code = "augmentation_error"


class AugmentConfig(BaseModel):
    """A YAML augmentation file: a preset with overrides, or a whole albumentations pipeline."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["light", "default", "heavy"] = "default"
    rotate90: bool | None = Field(default=None, description="random 90° turns (default: the trainer's)")
    strength: float | None = Field(default=None, gt=0.0, le=3.0, description="scales the preset's ranges")
    pipeline: dict[str, Any] | None = Field(
        default=None, description="albumentations Compose as A.to_dict gives it; replaces the preset"
    )


def is_preset(spec: str) -> bool:
    """True for a preset name, False for anything else (a YAML path)."""
    return spec in PRESETS


def load_config(path: str | Path) -> AugmentConfig:
    """Read and validate a YAML augmentation file.

    Raises:
        AugmentationError: missing, not YAML, unknown keys or values, or a pipeline albumentations refuses.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise AugmentationError(
            f"augmentation {str(path)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file"
        ) from e
    except (OSError, yaml.YAMLError) as e:
        raise AugmentationError(f"cannot read augmentation file {p}: {e}") from e
    if not isinstance(raw, dict):
        raise AugmentationError(f"augmentation file {p}: expected a mapping, got {type(raw).__name__}")
    try:
        cfg = AugmentConfig.model_validate(raw)
    except ValidationError as e:
        raise AugmentationError(f"augmentation file {p}: {e}") from e
    if cfg.pipeline is not None:
        _compose(cfg.pipeline, p)  # fail now, not at the first batch
    return cfg


def load_augmentation(spec: str | Path, *, rotate90: bool = True, seed: int | None = None) -> Augment:
    """The image + mask augmentation for a preset name or a YAML file.

    Args:
        spec: ``light``, ``default``, ``heavy``, or the path of a YAML file (see the module docstring).
        rotate90: the trainer's choice of 90° turns; a YAML ``rotate90`` overrides it.
        seed: seed of the pipeline's random generators (None: unseeded).

    Raises:
        AugmentationError: the spec is unusable.
    """
    from qcstation.training.defectnet import augmentation

    if isinstance(spec, str) and is_preset(spec):
        return augmentation(spec, rotate90=rotate90, seed=seed)
    cfg = load_config(spec)
    if cfg.pipeline is None:
        turn = rotate90 if cfg.rotate90 is None else cfg.rotate90
        return augmentation(cfg.preset, rotate90=turn, strength=cfg.strength, seed=seed)
    pipeline = _compose(cfg.pipeline, Path(spec))
    if seed is not None:
        pipeline.set_random_seed(seed)

    def apply(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = pipeline(image=image, mask=mask)
        return out["image"], out["mask"]

    return apply


def _compose(pipeline: dict[str, Any], where: Path) -> Any:
    import albumentations as A

    try:
        built = A.from_dict(pipeline)
    except Exception as e:  # albumentations raises several untyped errors for a bad dict
        raise AugmentationError(f"augmentation file {where}: albumentations cannot build it: {e}") from e
    if not isinstance(built, A.Compose):
        raise AugmentationError(
            f"augmentation file {where}: 'pipeline' must be a Compose, got {type(built).__name__}"
        )
    return built
