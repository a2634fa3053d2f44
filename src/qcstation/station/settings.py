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
    """Cores minus one onnxruntime threads for each run of the model.

    On the 2-core reference machine that is one thread per run, and two runs side by side
    (:func:`default_inference_workers`): one run on two threads scaled worse (docs/PERFORMANCE.md).
    """
    return max(1, (os.cpu_count() or 2) - 1)


def default_inference_workers(*, serving: bool = False) -> int:
    """Frames in ``session.run`` at once: two where there are two cores or more, one beside the REST API.

    Measured on the 2-core reference machine (docs/PERFORMANCE.md): two one-thread runs side by side made the
    station 1.6 x faster than one (127 against 80 parts/s with the demo model) at the same latency for the
    same part rate, while one run on two threads scales worse (onnxruntime's threads wait on each other
    after every small operator). But a station at full rate on two workers takes both cores, and ``serve``
    answers the MES and the screen in the same process: there, MES reads at 100 requests/s cost the
    station 27.5 % of its rate with p99 up to 234 ms on two workers, 6.9 % and up to 107 ms on one. So
    ``serve`` keeps one unless told otherwise.
    """
    return 1 if serving else min(2, os.cpu_count() or 1)


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
        description="onnxruntime threads per operator in each run (default: cores minus one)",
    )
    inference_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="frames in session.run at once, each on its own thread; decisions keep capture order "
        "(default: 2 on 2+ cores for `run`, 1 for `serve`, which shares the process with the API)",
    )
    queue_size: int = Field(default=8, ge=1, le=1024)
    commit_linger_ms: float = Field(
        default=150.0,
        ge=0.0,
        le=2000.0,
        description="while frames wait for the model, how long the commit stage may wait to gather 16 "
        "decisions into one transaction, leaving the cores to the model (0: commit what is there)",
    )
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
