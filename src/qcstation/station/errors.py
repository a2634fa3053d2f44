"""Errors raised by the station.

Hierarchy::

    StationError                  base; every error carries a short machine-readable ``code``
    ├── ConfigError               settings or command-line values are unusable          (config)
    │   └── RecipeError           a recipe is missing, invalid, or contradicts its model (recipe)
    ├── SourceError               a capture source cannot be opened                      (source)
    │   └── SourceLost            an open source stopped delivering (reconnect may help) (source_lost)
    ├── StoreError                the traceability store cannot be opened or written      (store)
    │   └── ChainBroken           the hash chain does not verify                          (chain_broken)
    ├── BatchError                a batch operation is not allowed in the batch's state   (batch)
    └── ReleaseError              a hold release was refused (no reason, no hold)          (release)
"""

from __future__ import annotations


class StationError(Exception):
    """Base class of station errors."""

    code = "station"


class ConfigError(StationError):
    """Settings or command-line values are unusable."""

    code = "config"


class RecipeError(ConfigError):
    """A recipe is missing, invalid, or does not fit its model."""

    code = "recipe"


class SourceError(StationError):
    """A capture source cannot be opened."""

    code = "source"


class SourceLost(SourceError):
    """An open source stopped delivering frames."""

    code = "source_lost"


class StoreError(StationError):
    """The traceability store cannot be opened or written."""

    code = "store"


class ChainBroken(StoreError):
    """The tamper-evidence hash chain is broken."""

    code = "chain_broken"


class BatchError(StationError):
    """A batch operation is not allowed in the batch's current state."""

    code = "batch"


class ReleaseError(StationError):
    """A hold release was refused."""

    code = "release"
