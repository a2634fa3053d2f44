"""Recipes: what "good" means for one product, as a YAML file a quality engineer edits.

A recipe is validated by pydantic and identified by the sha256 of its canonical JSON form, so two files that
say the same thing have the same hash and every record names exactly the rules it was judged by.

Coordinates of regions of interest and ignore zones are fractions of the frame's width and height (0..1), so a
recipe holds across cameras of different resolution.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qcstation.station.errors import RecipeError
from qcstation.station.types import Severity

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Point = tuple[Fraction, Fraction]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassRule(_Strict):
    """Pass/fail rule for one defect class.

    A region *qualifies* when its score >= ``threshold`` and its area >= the minimum area. The part FAILs when
    more than ``max_count`` regions qualify, or when more than ``max_small_count`` regions are above threshold
    but under the minimum area (a cluster of small pits). It is a REVIEW when it does not FAIL but the class
    score reaches ``review_from``.
    """

    threshold: float | None = Field(default=None, gt=0.0, le=1.0, description="None: the model card's")
    min_area_px: float = Field(default=0.0, ge=0.0)
    min_area_mm2: float | None = Field(default=None, ge=0.0)
    max_count: int = Field(default=0, ge=0)
    max_small_count: int | None = Field(default=None, ge=0)
    review_from: float | None = Field(default=None, gt=0.0, le=1.0)
    severity: Severity = Severity.MAJOR

    @model_validator(mode="after")
    def _review_below_threshold(self) -> Self:
        if self.review_from is not None and self.threshold is not None and self.review_from > self.threshold:
            raise ValueError(f"review_from {self.review_from} must not exceed threshold {self.threshold}")
        return self


class FailRateRule(_Strict):
    """Hold when the fail rate over the last ``window`` parts exceeds ``max_rate``."""

    window: int = Field(ge=2)
    max_rate: float = Field(gt=0.0, lt=1.0)


class PChartRule(_Strict):
    """Hold when a subgroup's fail fraction exceeds the p-chart upper control limit.

    UCL = p0 + sigma * sqrt(p0 (1 - p0) / n), evaluated on consecutive subgroups of n parts.
    """

    baseline_rate: float = Field(gt=0.0, lt=1.0)
    subgroup: int = Field(default=25, ge=2)
    sigma: float = Field(default=3.0, gt=0.0)


class HoldRules(_Strict):
    """Batch-hold rules; each is off when not given."""

    consecutive_fails: int | None = Field(default=None, ge=1)
    fail_rate: FailRateRule | None = None
    critical_class: bool = True
    p_chart: PChartRule | None = None
    station_fault_s: float | None = Field(default=None, gt=0.0)
    suspect_last: int = Field(default=0, ge=0, description="mark the last K parts before a hold suspect")
    review_counts_as_fail: bool = True


class ImageRetention(_Strict):
    """Which frames' images are archived: every FAIL/REVIEW/HOLD/ERROR image, and one PASS in N."""

    keep_pass_every: int = Field(default=10, ge=0, description="0: keep no PASS images")
    retention_days: float = Field(default=90.0, gt=0.0)


class DriftRule(_Strict):
    """Watch of passing parts' scores against the model card's validation scores of good parts
    (:mod:`qcstation.station.drift`). Advisory: an audit event and the status, never a verdict or a hold."""

    enabled: bool = True
    window: int = Field(default=200, ge=30, le=100_000, description="passed parts in the sliding window")
    z_limit: float = Field(default=4.0, gt=0.0, le=50.0, description="binomial z-score that signals drift")


class Recipe(_Strict):
    """One product's inspection recipe."""

    product: str = Field(min_length=1)
    description: str = ""
    model: str = Field(min_length=1, description="path to the .onnx model, relative to the recipe file")
    mm_per_px: float | None = Field(default=None, gt=0.0)
    roi: list[list[Point]] = Field(default_factory=list, description="polygons to inspect (none: all)")
    ignore: list[list[Point]] = Field(default_factory=list, description="polygons never inspected")
    classes: dict[str, ClassRule] = Field(default_factory=dict)
    holds: HoldRules = HoldRules()
    images: ImageRetention = ImageRetention()
    drift: DriftRule = DriftRule()

    @model_validator(mode="after")
    def _polygons(self) -> Self:
        for name, polys in (("roi", self.roi), ("ignore", self.ignore)):
            for i, poly in enumerate(polys):
                if len(poly) < 3:
                    raise ValueError(f"{name}[{i}] needs at least 3 points, got {len(poly)}")
        return self

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the validated recipe."""
        content = self.model_dump(mode="json")
        if self.drift == DriftRule():
            # Sections added after recipes were in use leave the hash of a recipe that does not set them
            # unchanged, so an upgrade alone never looks like a recipe change in the records.
            del content["drift"]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def rule_for(self, class_name: str) -> ClassRule:
        """The rule of a class; a class the recipe does not name gets the default (FAIL on any region)."""
        return self.classes.get(class_name, ClassRule())

    def check_classes(self, model_classes: tuple[str, ...]) -> None:
        """Refuse a recipe that names a class the model does not have.

        Raises:
            RecipeError: naming the unknown classes and the model's classes.
        """
        unknown = sorted(set(self.classes) - set(model_classes[1:]))
        if unknown:
            raise RecipeError(
                f"recipe for '{self.product}' names class(es) {unknown} that the model does not have; "
                f"the model's defect classes are {list(model_classes[1:])}"
            )


class LoadedRecipe(BaseModel):
    """A recipe with where it came from."""

    model_config = ConfigDict(frozen=True)

    recipe: Recipe
    path: Path
    model_path: Path


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate a recipe file.

    Raises:
        RecipeError: the file is missing, not YAML, or invalid (with pydantic's field-by-field message).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RecipeError(f"cannot read recipe {p}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {p}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"recipe {p} is invalid:\n{e}") from e
    model_path = Path(recipe.model)
    if not model_path.is_absolute():
        model_path = (p.parent / model_path).resolve()
    return LoadedRecipe(recipe=recipe, path=p.resolve(), model_path=model_path)
