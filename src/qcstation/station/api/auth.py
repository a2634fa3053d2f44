"""Access control: bearer tokens with roles, and which role may do what.

A request names its token in ``Authorization: Bearer <token>``; the token store maps the token's sha256 to
a name and a role. 401 says why a request is not authenticated (missing, unknown or revoked token), 403 says
which role an action needs. Reads need any role; each write needs one of the roles in :data:`PERMISSIONS`.

Anonymous read-only access: while no token is active and the API listens on loopback only, a request without
a token is let in as an anonymous viewer, so a fresh station on a workstation works out of the box. Writes
always need a token. ``qcstation serve`` refuses to bind a non-loopback address while no token is active.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from qcstation.station.api.errors import ApiError
from qcstation.station.tokens import Role, TokenInfo, TokenStore, hash_token


class Action(StrEnum):
    """Things a request may do."""

    READ = "read"
    INSPECT = "inspect"
    TRIGGER = "trigger"
    BATCH = "manage batches"
    RAISE_HOLD = "raise holds"
    RELEASE_HOLD = "release holds"
    OVERRIDE = "override verdicts"
    ADMIN = "administer the station"


_ALL = frozenset(Role)
PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.READ: _ALL,
    Action.INSPECT: frozenset({Role.OPERATOR, Role.QUALITY, Role.MES, Role.ADMIN}),
    Action.TRIGGER: frozenset({Role.OPERATOR, Role.QUALITY, Role.MES, Role.ADMIN}),
    Action.BATCH: frozenset({Role.OPERATOR, Role.QUALITY, Role.MES, Role.ADMIN}),
    Action.RAISE_HOLD: frozenset({Role.OPERATOR, Role.QUALITY, Role.MES, Role.ADMIN}),
    # Only quality decides that a held batch may go on, or that a verdict was wrong.
    Action.RELEASE_HOLD: frozenset({Role.QUALITY, Role.ADMIN}),
    Action.OVERRIDE: frozenset({Role.QUALITY, Role.ADMIN}),
    Action.ADMIN: frozenset({Role.ADMIN}),
}
"""Which roles may do each action."""


def _needs(roles: frozenset[Role]) -> str:
    named = [r.value for r in Role if r in roles and r is not Role.ADMIN]
    return f"{', '.join(named)} (or admin)" if named else "admin"


_NEEDS = {a: _needs(roles) for a, roles in PERMISSIONS.items()}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as; ``name`` is what audit events record as the actor."""

    name: str
    role: Role
    anonymous: bool = False

    @property
    def actor(self) -> str:
        """The actor recorded in audit events: ``api:<name>``."""
        return f"api:{self.name}"


ANONYMOUS = Principal("anonymous", Role.VIEWER, anonymous=True)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: TokenStore) -> None:
    """Refuse to listen beyond this machine while no token is active.

    Raises:
        ConfigError: ``host`` is not loopback and no token is active.
    """
    from qcstation.station.errors import ConfigError

    if not is_loopback(host) and not tokens.any_active():
        raise ConfigError(
            f"refusing to listen on {host}: no API token is configured, so anyone on the network could "
            "read the station. Issue one first (qcstation token issue --name NAME --role ROLE) or bind "
            "127.0.0.1"
        )


def _unauthorized(detail: str, *, invalid: bool) -> ApiError:
    challenge = 'Bearer realm="qcstation"'
    if invalid:
        challenge += ', error="invalid_token"'
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


class Authenticator:
    """Turns an Authorization header into a :class:`Principal`, or a 401 that says why."""

    def __init__(self, tokens: TokenStore, *, loopback_only: bool, cache_s: float = 2.0) -> None:
        """Check against ``tokens``; allow anonymous reads only when ``loopback_only`` and no token exists.

        Args:
            tokens: the token store.
            loopback_only: the API listens on loopback only.
            cache_s: how long "is any token active" and a token's lookup are remembered (one query per
                request otherwise); a token revoked from the CLI stops working within this time.
        """
        self.tokens = tokens
        self.loopback_only = loopback_only
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._any: tuple[float, bool] | None = None
        self._known: dict[str, tuple[float, TokenInfo | None]] = {}

    def anonymous_allowed(self) -> bool:
        """True while anonymous read-only access is on (loopback bind, no active token)."""
        allowed = self._anonymous(query=True)
        assert allowed is not None
        return allowed

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a request (may query the token store).

        Raises:
            ApiError: 401 for a missing (when required), malformed, unknown or revoked token.
        """
        principal = self._principal(authorization, query=True)
        assert principal is not None
        return principal

    def authenticate_cached(self, authorization: str | None) -> Principal | None:
        """:meth:`authenticate` from what is remembered, never touching the store; None when it would have to.

        Raises:
            ApiError: as :meth:`authenticate`.
        """
        return self._principal(authorization, query=False)

    def _principal(self, authorization: str | None, *, query: bool) -> Principal | None:
        if not authorization:
            allowed = self._anonymous(query=query)
            if allowed is None:
                return None
            if allowed:
                return ANONYMOUS
            raise _unauthorized(
                "missing bearer token: send 'Authorization: Bearer <token>' "
                "(issue one with: qcstation token issue --name NAME --role ROLE)",
                invalid=False,
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise _unauthorized("malformed Authorization header: expected 'Bearer <token>'", invalid=True)
        if len(secret) > 256:
            raise _unauthorized("unknown token", invalid=True)
        known, info = self._lookup(secret, query=query)
        if not known:
            return None
        if info is None:
            raise _unauthorized("unknown token", invalid=True)
        if not info.active:
            raise _unauthorized(f"token {info.name!r} was revoked at {info.revoked_at}", invalid=True)
        return Principal(info.name, info.role)

    def _anonymous(self, *, query: bool) -> bool | None:
        """Anonymous reads allowed; None when that is not remembered and ``query`` is False."""
        if not self.loopback_only:
            return False
        now = time.monotonic()
        with self._lock:
            cached = self._any
        if cached is None or now - cached[0] > self.cache_s:
            if not query:
                return None
            cached = (now, self.tokens.any_active())
            with self._lock:
                self._any = cached
        return not cached[1]

    def _lookup(self, secret: str, *, query: bool) -> tuple[bool, TokenInfo | None]:
        """(known, ``tokens.lookup``), remembered for ``cache_s``; (False, None) if not and not ``query``."""
        key = hash_token(secret)  # never keep the secret itself, not even in memory
        now = time.monotonic()
        with self._lock:
            hit = self._known.get(key)
        if hit is not None and now - hit[0] <= self.cache_s:
            return True, hit[1]
        if not query:
            return False, None
        info = self.tokens.lookup(secret)
        with self._lock:
            if len(self._known) > 1024:
                self._known.clear()
            self._known[key] = (now, info)
        return True, info


def authorize(principal: Principal, action: Action) -> Principal:
    """Return ``principal`` when its role may do ``action``.

    Raises:
        ApiError: 401 when an anonymous viewer tries a write (writes always need a token); 403 naming the
            role needed otherwise.
    """
    if principal.role in PERMISSIONS[action]:
        return principal
    if principal.anonymous:
        raise _unauthorized(
            f"to {action.value} you need a bearer token (anonymous access is read-only)", invalid=False
        )
    raise ApiError(
        403,
        "forbidden",
        f"role '{principal.role.value}' cannot {action.value}; needs {_NEEDS[action]}",
    )
