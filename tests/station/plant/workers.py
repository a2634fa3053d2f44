"""Subprocess entry points for the plant tests: ``python -m station.plant.workers write URL STATION N``."""

from __future__ import annotations

import sys

from qcstation.station.store import Store
from station.factories_store import PRODUCT, RECIPE_HASH, T0, Factory


def write(url: str, station: str, n: int, group: int = 50) -> None:
    """Commit ``n`` records for ``station`` as fast as the store takes them, in group commits."""
    with Store.open(url, station) as store:
        store.open_batch(f"B-{station}", product=PRODUCT, recipe_hash=RECIPE_HASH, at=T0, actor="mes")
        f = Factory(batch_id=f"B-{station}")
        done = 0
        while done < n:
            k = min(group, n - done)
            decisions = []
            for j in range(k):
                decisions.append(f.decision(serial=f"{station}-{done + j:06d}"))
            store.commit(decisions, product=PRODUCT, recipe_hash=RECIPE_HASH, image_refs={})
            done += k


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]!r}")
