"""`qcstation token issue|list|revoke` as an administrator runs them, and the API honouring them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qcstation.cli import app
from qcstation.station.store import Store
from qcstation.station.tokens import TokenError, TokenStore, hash_token


def test_issue_list_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    d = ["--data-dir", str(tmp_path)]
    r = runner.invoke(app, ["token", "issue", "--name", "mes-1", "--role", "mes", *d])
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[-1]
    assert secret.startswith("qcs_")
    r = runner.invoke(app, ["token", "list", *d])
    assert "mes-1" in r.output and "active" in r.output and secret not in r.output
    bad = runner.invoke(app, ["token", "issue", "--name", "x", "--role", "boss", *d])
    assert bad.exit_code != 0
    r = runner.invoke(app, ["token", "revoke", "mes-1", *d])
    assert r.exit_code == 0 and "revoked" in r.output
    # only the hash is stored
    raw = (tmp_path / "qcstation.db").read_bytes()
    assert secret.encode() not in raw and hash_token(secret).encode() in raw


def test_token_store_refuses_a_second_active_token_with_the_same_name(tmp_path: Path) -> None:
    with Store.open(tmp_path / "qc.db", "st1") as store:
        tokens = TokenStore(store)
        first = tokens.issue("ann", "quality", by="t")
        assert tokens.lookup(first.secret) is not None and tokens.any_active()
        with pytest.raises(TokenError, match="revoke it first"):
            tokens.issue("ann", "viewer", by="t")
        tokens.revoke("ann", by="t")
        assert not tokens.any_active()
        again = tokens.issue("ann", "viewer", by="t")
        assert tokens.lookup(first.secret) is None and tokens.lookup(again.secret) is not None
        assert store.count_outbox_pending() == len(store.outbox_pending(limit=1000))


def test_token_lookups_are_cached_and_a_revocation_takes_effect_within_the_cache_time(tmp_path: Path) -> None:
    import time

    from qcstation.station.api.auth import Authenticator
    from qcstation.station.api.errors import ApiError

    with Store.open(tmp_path / "s.db", "st-1") as store:
        tokens = TokenStore(store)
        issued = tokens.issue("mes-1", "mes", by="test")
        calls = {"n": 0}
        real_lookup = tokens.lookup

        def counting(secret: str):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            return real_lookup(secret)

        tokens.lookup = counting  # type: ignore[method-assign]
        auth = Authenticator(tokens, loopback_only=True, cache_s=0.2)
        header = f"Bearer {issued.secret}"
        for _ in range(20):
            assert auth.authenticate(header).name == "mes-1"
        assert calls["n"] == 1  # one query for twenty requests
        tokens.revoke("mes-1", by="test")
        time.sleep(0.25)
        with pytest.raises(ApiError, match="revoked"):
            auth.authenticate(header)


def test_the_cache_only_path_answers_from_memory_and_says_when_it_cannot(tmp_path: Path) -> None:
    from qcstation.station.api.auth import Authenticator
    from qcstation.station.api.errors import ApiError

    with Store.open(tmp_path / "s.db", "st-1") as store:
        tokens = TokenStore(store)
        issued = tokens.issue("mes-1", "mes", by="test")
        auth = Authenticator(tokens, loopback_only=True, cache_s=60.0)
        header = f"Bearer {issued.secret}"
        # a token never looked up, and "is any token active" never asked: the event loop must not decide
        assert auth.authenticate_cached(header) is None
        assert auth.authenticate_cached(None) is None
        # after one lookup (in a worker thread, in the app) the same answers come from memory
        assert auth.authenticate(header).name == "mes-1"
        cached = auth.authenticate_cached(header)
        assert cached is not None and cached.name == "mes-1"
        auth.anonymous_allowed()
        with pytest.raises(ApiError, match="missing bearer token"):
            auth.authenticate_cached(None)
        # a malformed header needs no lookup to be refused
        with pytest.raises(ApiError, match="malformed"):
            auth.authenticate_cached("Basic abc")
