"""Shared fixtures (the model factory itself lives in ``model_factory.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from model_factory import ModelFactory, build_model
from qcstation.inspect.card import CARD_KEY, ModelCard


@pytest.fixture
def make_model(tmp_path: Path) -> ModelFactory:
    """Factory: ``make_model(name="m.onnx", **build_model_kwargs) -> Path``."""

    def factory(name: str = "model.onnx", **kw: Any) -> Path:
        return build_model(tmp_path / "models" / name, **kw)

    return factory


@pytest.fixture
def tiny_model(make_model: ModelFactory) -> Path:
    """A 64x64 gray resize-mode model whose class 'dark' fires on dark pixels."""
    return make_model()


@pytest.fixture
def card_of() -> Callable[[Path], ModelCard]:
    """Read the card of a model file."""

    def read(path: Path) -> ModelCard:
        m = onnx.load(str(path))
        props = {p.key: p.value for p in m.metadata_props}
        return ModelCard.from_json(props[CARD_KEY])

    return read
