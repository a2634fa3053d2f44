"""The training package must stay import-light: the CLI imports it on a station without torch."""

from __future__ import annotations

import subprocess
import sys


def test_import_training_does_not_import_torch() -> None:
    # given a fresh interpreter, when qcstation.training is imported
    code = (
        "import sys, qcstation.training; "
        "print(sorted(m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    # then none of the heavy libraries was loaded
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
