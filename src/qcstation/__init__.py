"""qcstation: a line-side visual quality inspection station.

Subpackages:
    inspect   - the detector runtime (numpy, OpenCV, onnxruntime only).
    station   - sources, recipes, rules, batch holds, the store and the pipeline.
    training  - datasets, networks, training and ONNX export (needs the ``train`` extra).
"""

from __future__ import annotations

__version__ = "0.1.0"
