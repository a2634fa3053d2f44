"""The station's REST API (``/api/v1``) and, next, its operator screen; the only package that uses FastAPI.

Build the app with :func:`create_app`; ``qcstation serve`` does, and runs it with the station.
"""

from __future__ import annotations

from qcstation.station.api.app import create_app
from qcstation.station.api.deps import ApiConfig

__all__ = ["ApiConfig", "create_app"]
