"""Station settings: one object, made by the CLI or the app factory (never at import time).

Every field can come from the environment with the ``QCSTATION_`` prefix (``QCSTATION_DATA_DIR=/var/qc``)
or from command-line options, which win.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_intra_op_threads() -> int:
    """Cores minus one for the model: the station's capture, decision and commit threads need the last one.

    Measured on the 2-core reference machine (docs/PERFORMANCE.md): one onnxruntime thread ran the demo model
    faster than two even alone, and left a core for the rest of the pipeline.
    """
    return max(1, (os.cpu_count() or 2) - 1)


class Settings(BaseSettings):
    """Where the station keeps its data and who it is in the plant."""

    model_config = SettingsConfigDict(env_prefix="QCSTATION_", extra="ignore")

    data_dir: Path = Field(default=Path("qcstation-data"), description="store, images and logs")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in data_dir")
    station_id: str = Field(default_factory=lambda: socket.gethostname() or "station", min_length=1)
    site: str = "site"
    line: str = "line"
    intra_op_threads: int | None = Field(
        default_factory=lambda: default_intra_op_threads(),
        ge=1,
        description="onnxruntime threads per operator (default: one core left for capture and commit)",
    )
    queue_size: int = Field(default=8, ge=1, le=1024)
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: every commit survives a power cut; NORMAL: faster, the last commits may not",
    )
    switch_interval_ms: float = Field(
        default=1.0,
        ge=0.05,
        le=100.0,
        description="Python's GIL switch interval under `qcstation serve` (CPython's default is 5 ms): how "
        "long the station's threads may wait for the GIL behind API request handling",
    )
    min_free_disk: float = Field(
        default=0.10, ge=0.0, le=0.9, description="free disk share below which old PASS images are pruned"
    )

    @field_validator("station_id", "site", "line")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        bad = set(v) & set("/#+ \t\n")
        if bad:
            raise ValueError(f"must not contain {sorted(bad)} (it becomes part of MQTT topics)")
        return v

    @property
    def store_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        return self.database_url or str(self.data_dir / "qcstation.db")

    @property
    def images_dir(self) -> Path:
        """Where archived images live."""
        return self.data_dir / "images"
