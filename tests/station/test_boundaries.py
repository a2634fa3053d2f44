"""Directions of dependency: a station installs and runs without torch or the training package."""

from __future__ import annotations

import subprocess
import sys


def test_station_and_runtime_never_import_torch() -> None:
    modules = [
        "qcstation.cli",
        "qcstation.inspect.detector",
        "qcstation.inspect.overlay",
        "qcstation.station.pipeline",
        "qcstation.station.sources",
        "qcstation.station.store",
        "qcstation.station.archive",
        "qcstation.station.rules",
        "qcstation.station.holds",
        "qcstation.station.recipe",
        "qcstation.synth",
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'albumentations')"
        " or m.startswith('qcstation.training'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"imported: {res.stdout} {res.stderr}"
