"""API bearer tokens: issued and revoked by the CLI, checked by the REST API, stored hashed.

Tokens live in the ``api_tokens`` table of the traceability store's database (their own SQLAlchemy Core
metadata, created on first use), scoped to one station. A token is shown once, when it is issued; the
database keeps only its sha256. Issuing and revoking are audit events in the store's hash chain.

No FastAPI here: the API package maps :class:`TokenError` and the roles onto HTTP.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from qcstation.station.errors import ConfigError, StoreError
from qcstation.station.store import Store, utc_iso

__all__ = ["IssuedToken", "Role", "TokenError", "TokenInfo", "TokenStore", "hash_token"]

TOKEN_PREFIX = "qcs_"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

metadata = sa.MetaData()

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("station", sa.String(128), nullable=False),
    sa.Column("name", sa.String(64), nullable=False, comment="who holds it: a person, the MES, a screen"),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True, comment="sha256 hex of the token"),
    sa.Column("created_at", sa.String(27), nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.String(27), nullable=True),
    sa.PrimaryKeyConstraint("station", "name", name="pk_api_tokens"),
)


class Role(StrEnum):
    """What a token may do (the API's permission table says which role may do which write)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    QUALITY = "quality"
    MES = "mes"
    ADMIN = "admin"


class TokenError(ConfigError):
    """A token cannot be issued or revoked as asked (bad name or role, name taken, unknown name)."""

    code = "token"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token, without its secret."""

    name: str
    role: Role
    created_at: str
    created_by: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        """True until revoked."""
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A newly issued token: ``secret`` is shown once and never stored."""

    info: TokenInfo
    secret: str


def hash_token(secret: str) -> str:
    """The stored form of a token.

    A plain sha256 is right here, unlike for passwords: the tokens are 256-bit random values from
    :func:`secrets.token_urlsafe`, so there is nothing to guess or look up in a dictionary, and a slow
    password hash (bcrypt, argon2) would only add tens of milliseconds to every API request. The hash is the
    lookup key, so a stolen database copy gives no usable token.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _info(m: sa.RowMapping) -> TokenInfo:
    return TokenInfo(
        name=m["name"],
        role=Role(m["role"]),
        created_at=m["created_at"],
        created_by=m["created_by"],
        revoked_at=m["revoked_at"],
    )


class TokenStore:
    """The station's API tokens, in the store's database."""

    def __init__(self, store: Store) -> None:
        """Use the store's engine and station; creates the ``api_tokens`` table if it is missing.

        Raises:
            StoreError: the table cannot be created.
        """
        self._store = store
        self._engine = store.engine
        self._station = store.station_id
        try:
            metadata.create_all(self._engine)
        except sa_exc.SQLAlchemyError as e:
            raise StoreError(f"cannot create the api_tokens table in {store.url}: {e}") from e

    def issue(self, name: str, role: Role | str, *, by: str, now: datetime | None = None) -> IssuedToken:
        """Issue a new token for ``name`` with ``role``; the secret is returned once.

        Raises:
            TokenError: a bad name or role, or an active token with that name exists.
            StoreError: the write failed.
        """
        if not _NAME_RE.fullmatch(name):
            raise TokenError(
                f"expected a token name of 1-64 letters, digits, '.', '_', '@' or '-', got {name!r}"
            )
        try:
            r = Role(role)
        except ValueError:
            raise TokenError(f"expected a role in {[x.value for x in Role]}, got {role!r}") from None
        at = utc_iso(now or datetime.now(UTC))
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        t = api_tokens
        try:
            with self._engine.begin() as conn:
                old = conn.execute(
                    sa.select(t.c.revoked_at).where(t.c.station == self._station, t.c.name == name)
                ).first()
                if old is not None and old.revoked_at is None:
                    raise TokenError(
                        f"token {name!r} exists; revoke it first (qcstation token revoke {name})"
                    )
                if old is not None:
                    conn.execute(sa.delete(t).where(t.c.station == self._station, t.c.name == name))
                conn.execute(
                    t.insert().values(
                        station=self._station,
                        name=name,
                        role=r.value,
                        token_hash=hash_token(secret),
                        created_at=at,
                        created_by=by,
                        revoked_at=None,
                    )
                )
        except sa_exc.SQLAlchemyError as e:
            raise StoreError(f"cannot issue token {name!r}: {e}") from e
        self._store.add_event(
            "token_issued", at=now or datetime.now(UTC), actor=by, data={"name": name, "role": r.value}
        )
        return IssuedToken(TokenInfo(name, r, at, by, None), secret)

    def revoke(self, name: str, *, by: str, now: datetime | None = None) -> TokenInfo:
        """Revoke the active token ``name``; it is refused from then on.

        Raises:
            TokenError: no active token with that name.
            StoreError: the write failed.
        """
        at_dt = now or datetime.now(UTC)
        t = api_tokens
        try:
            with self._engine.begin() as conn:
                res = conn.execute(
                    sa.update(t)
                    .where(t.c.station == self._station, t.c.name == name, t.c.revoked_at.is_(None))
                    .values(revoked_at=utc_iso(at_dt))
                )
                if res.rowcount != 1:
                    raise TokenError(f"no active token named {name!r} at station {self._station}")
                row = conn.execute(sa.select(t).where(t.c.station == self._station, t.c.name == name)).one()
        except sa_exc.SQLAlchemyError as e:
            raise StoreError(f"cannot revoke token {name!r}: {e}") from e
        self._store.add_event("token_revoked", at=at_dt, actor=by, data={"name": name})
        return _info(row._mapping)

    def list(self) -> list[TokenInfo]:
        """Every token of this station (active and revoked), by name."""
        t = api_tokens
        with self._read() as conn:
            rows = conn.execute(sa.select(t).where(t.c.station == self._station).order_by(t.c.name)).all()
        return [_info(r._mapping) for r in rows]

    def lookup(self, secret: str) -> TokenInfo | None:
        """The token a secret belongs to (revoked ones too, so the caller can say so), or None."""
        t = api_tokens
        with self._read() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.station == self._station, t.c.token_hash == hash_token(secret))
            ).first()
        return None if row is None else _info(row._mapping)

    def any_active(self) -> bool:
        """True when at least one token is active (then every request needs one)."""
        t = api_tokens
        with self._read() as conn:
            n = conn.scalar(
                sa.select(sa.func.count())
                .select_from(t)
                .where(t.c.station == self._station, t.c.revoked_at.is_(None))
            )
        return bool(n)

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa_exc.SQLAlchemyError as e:
            raise StoreError(f"cannot read api tokens: {e}") from e
