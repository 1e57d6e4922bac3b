"""Users: password hashing and policy, lockout, signed tokens, principals and the audit trail."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from gridmap.errors import AuthenticationError, GridmapError
from gridmap.identifiers import visible
from gridmap.ratelimit import LoginThrottle
from gridmap.security import Principal, Role
from gridmap.store import Query, Store

AUDIENCE = "gridmap"
ISSUER = "gridmap"
ALGORITHM = "HS256"
MIN_LENGTH = 12

_hasher = PasswordHasher()  # argon2id with the library's (OWASP-level) defaults
# A hash to verify against when the user does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")


_SCOPE_TABLES = ("gridmap_users", "grids", "communities")
"""What a principal's scope is derived from."""


class WeakPasswordError(GridmapError, ValueError):
    """A password the policy refuses; the message lists every reason."""


class AccountError(GridmapError, ValueError):
    """A user that cannot be added or changed as asked."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_password_policy(username: str, password: str) -> None:
    """Raise WeakPasswordError unless the password is long, varied, not the username, not common.

    At least 12 characters, three of: lower case, upper case, digits, symbols; must not
    contain the username; zxcvbn (dictionaries of common passwords, words, names,
    keyboard patterns) must rate it 3 or 4 out of 4.
    """
    reasons = []
    if len(password) < MIN_LENGTH:
        reasons.append(f"at least {MIN_LENGTH} characters")
    classes = sum(
        [
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ]
    )
    if classes < 3:
        reasons.append("three of: lower case, upper case, digits, symbols")
    if username and username.lower() in password.lower():
        reasons.append("must not contain the username")
    if len(password) <= 200:  # zxcvbn is slow on very long input
        result = zxcvbn(password, user_inputs=[username, "gridmap", "zhongxinlu", "中心路"])
        if result["score"] < 3:
            warning = result["feedback"].get("warning") or "too easy to guess"
            reasons.append(f"not a common or guessable password ({warning.rstrip('.')})")
    if reasons:
        raise WeakPasswordError("password refused: " + "; ".join(reasons))


def generate_password() -> str:
    """A random password that passes the policy (for sample users and resets)."""
    alphabet = string.ascii_letters + string.digits + "!#%-=@^_~"  # no + (form-encoding)
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(16))
        try:
            check_password_policy("", pw)
        except WeakPasswordError:
            continue
        return pw


@dataclass(frozen=True)
class Token:
    """A signed access token and when it expires."""

    access_token: str
    expires_in: int


class Accounts:
    """Users of one store: add, disable, reset, log in, and resolve tokens to principals."""

    def __init__(self, store: Store, *, secret: str, token_minutes: int = 15) -> None:
        if len(secret) < 32:
            msg = "the token secret must be at least 32 characters"
            raise AccountError(msg)
        self.store = store
        self.secret = secret
        self.token_minutes = token_minutes
        self.throttle = LoginThrottle()
        # token → (stamps, expiry, principal); valid while no user, grid or community changed
        self._verified: dict[str, tuple[tuple[int, ...], float, Principal]] = {}

    # ------------------------------------------------------------------ administration

    def add_user(
        self,
        username: str,
        password: str,
        role: Role | str,
        *,
        grid_ids: list[int] | None = None,
        community_id: int | None = None,
    ) -> None:
        """Add a user after checking the name, role, scope and password policy."""
        role = Role(role)
        if role is Role.PUBLIC:
            msg = "public is the role of callers without an account"
            raise AccountError(msg)
        if not username or len(username) > 64 or not username.replace("_", "").isalnum():
            msg = "usernames are 1–64 letters, digits or underscores"
            raise AccountError(msg)
        if self.store.user(username) is not None:
            msg = f"user {username!r} exists; use reset or disable"
            raise AccountError(msg)
        if role is Role.GRID_WORKER and not grid_ids:
            msg = "a grid worker needs at least one grid (--grid)"
            raise AccountError(msg)
        if role is Role.COMMUNITY_ADMIN and community_id is None:
            msg = "a community admin needs a community (--community)"
            raise AccountError(msg)
        for gid in grid_ids or []:
            self.store.get("grids", int(gid))
        if community_id is not None:
            self.store.get("communities", int(community_id))
        check_password_policy(username, password)
        now = _now().isoformat(timespec="seconds")
        self.store.save_user(
            {
                "username": username,
                "password_hash": _hasher.hash(password),
                "role": role.value,
                "grid_ids": grid_ids or [],
                "community_id": community_id,
                "disabled": False,
                "failed_logins": 0,
                "locked_until": None,
                "created_at": now,
                "password_changed_at": now,
            }
        )

    def reassign(
        self, username: str, *, grid_ids: list[int] | None = None, community_id: int | None = None
    ) -> None:
        """Give a grid worker other grids, or a community admin another community; their
        tokens follow on the next request."""
        rec = self._require(username)
        role = Role(rec["role"])
        if role is Role.GRID_WORKER:
            if not grid_ids:
                msg = "a grid worker needs at least one grid (--grid)"
                raise AccountError(msg)
            for gid in grid_ids:
                self.store.get("grids", int(gid))
            rec["grid_ids"] = [int(g) for g in grid_ids]
        elif role is Role.COMMUNITY_ADMIN:
            if community_id is None:
                msg = "a community admin needs a community (--community)"
                raise AccountError(msg)
            self.store.get("communities", int(community_id))
            rec["community_id"] = int(community_id)
        else:
            msg = f"{role.value} has no grids or community to assign"
            raise AccountError(msg)
        self.store.save_user(rec)

    def set_disabled(self, username: str, disabled: bool = True) -> None:
        """Disable (or enable) a user; tokens already issued stop working at once."""
        rec = self._require(username)
        rec["disabled"] = disabled
        self.store.save_user(rec)

    def reset_password(self, username: str, password: str | None = None) -> str:
        """Set a new password (generated when not given); return the password."""
        rec = self._require(username)
        password = password or generate_password()
        check_password_policy(username, password)
        rec["password_hash"] = _hasher.hash(password)
        rec["failed_logins"] = 0
        rec["locked_until"] = None
        rec["password_changed_at"] = _now().isoformat(timespec="seconds")
        self.store.save_user(rec)
        return password

    def _require(self, username: str) -> dict[str, Any]:
        rec = self.store.user(username)
        if rec is None:
            msg = f"no user {username[:64]!r}"
            raise AccountError(msg)
        return rec

    # ------------------------------------------------------------------ login and tokens

    def login(self, username: str, password: str, *, source: str = "-") -> Token:
        """Check a password and issue a short-lived token.

        Unknown names, wrong passwords and disabled accounts get the same answer after the
        same work (a hash is always verified); repeated failures slow down only the
        (name, source) pair that made them (:class:`gridmap.ratelimit.LoginThrottle`).
        """
        name = username[:64]
        self.throttle.check(name, source)
        rec = self.store.user(name)
        ok = _verify(rec["password_hash"] if rec else _DUMMY_HASH, password)
        if rec is None or not ok or rec["disabled"]:
            # nothing is written here: a write would take longer for a real name
            self.throttle.failed(name, source)
            raise AuthenticationError("wrong username or password")
        self.throttle.succeeded(name, source)
        return self.issue(rec["username"], Role(rec["role"]))

    def issue(self, username: str, role: Role) -> Token:
        """A signed token for a user (audience and issuer gridmap, expiry, unique id, and
        the version of the user's password: a new password ends every older token)."""
        rec = self._require(username)
        now = _now()
        ttl = self.token_minutes * 60
        claims = {
            "sub": username,
            "role": role.value,
            "pv": password_version(rec["password_hash"]),
            "aud": AUDIENCE,
            "iss": ISSUER,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + ttl,
            "jti": uuid.uuid4().hex,
        }
        return Token(jwt.encode(claims, self.secret, algorithm=ALGORITHM), ttl)

    def principal(self, token: str) -> Principal:
        """The principal of a bearer token; AuthenticationError if it is not acceptable.

        Rejected: bad signature, another algorithm (``none`` included), expired, another
        audience or issuer, a user that is gone, disabled or whose role changed. A token
        verified once is remembered until it expires or any user, grid or community
        changes, so a disabled user is refused and a moved grid leaves or joins a
        community admin's scope on the next request; the check stays a dictionary look-up.
        """
        stamp = self._scope_stamp()
        known = self._known(token, stamp)
        if known is not None:
            return known
        principal = self._verify_token(token)
        if len(self._verified) > 10_000:
            self._verified.clear()
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        self._verified[token] = (stamp, float(exp), principal)
        return principal

    def remembered(self, token: str) -> Principal | None:
        """The principal of a token verified before, if nothing it depends on changed since,
        answered from memory (None: call :meth:`principal`, which may ask the database)."""
        stamp = self.store.stamps_at_hand(_SCOPE_TABLES)
        return None if stamp is None else self._known(token, stamp)

    def _known(self, token: str, stamp: tuple[int, ...]) -> Principal | None:
        hit = self._verified.get(token)
        if hit is not None and min(stamp) >= 0 and hit[0] == stamp and hit[1] > time.time():
            return hit[2]
        return None

    def _scope_stamp(self) -> tuple[int, ...]:
        """What a principal's scope is derived from: users, grids, communities."""
        return self.store.stamps(_SCOPE_TABLES)

    def _verify_token(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the token has expired; log in again") from None
        except jwt.PyJWTError:
            raise AuthenticationError("the token is not valid for this service") from None
        rec = self.store.user(str(claims["sub"]))
        if rec is None or rec["disabled"] or rec["role"] != claims.get("role"):
            raise AuthenticationError("the token's user is not active; log in again")
        if claims.get("pv") != password_version(rec["password_hash"]):
            raise AuthenticationError(
                "the password changed since this token was issued; log in again"
            )
        role = Role(rec["role"])
        grid_ids: frozenset[int] | None = None
        if role is Role.GRID_WORKER:
            grid_ids = frozenset(int(g) for g in rec["grid_ids"])
        elif role is Role.COMMUNITY_ADMIN:
            fs = self.store.query("grids", Query(equals={"community_id": rec["community_id"]}))
            grid_ids = frozenset(fs.ids.tolist())
        return Principal(rec["username"], role, grid_ids, rec["community_id"])


def password_version(password_hash: str) -> str:
    """A short tag of a password hash (which changes with every new password)."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def token_secret(store: Store, configured: str | None = None) -> str:
    """The key tokens are signed with: the configured one, else one kept in the database.

    A database's own key is generated on first use (48 random bytes) and stays with the
    file, which is created owner-readable only.
    """
    if configured:
        return configured
    stored = store.meta("token_secret")
    if stored is None:
        stored = secrets.token_urlsafe(48)
        store.set_meta("token_secret", stored)
    return stored


SAMPLE_USERS: list[tuple[str, Role]] = [
    ("admin", Role.SUBDISTRICT_ADMIN),
    ("community1", Role.COMMUNITY_ADMIN),
    ("worker1", Role.GRID_WORKER),
    ("planner", Role.PLANNER),
    ("auditor", Role.AUDITOR),
]


def seed_sample_users(store: Store) -> dict[str, tuple[Role, str]]:
    """One user per role for the sample, with random passwords (returned, never stored).

    ``community1`` administers the community of grid 1, ``worker1`` works grid 1.
    """
    accounts = Accounts(store, secret=token_secret(store))
    grid = store.get("grids", 1)
    out = {}
    for username, role in SAMPLE_USERS:
        password = generate_password()
        accounts.add_user(
            username,
            password,
            role,
            grid_ids=[grid.id] if role is Role.GRID_WORKER else None,
            community_id=grid.properties["community_id"] if role is Role.COMMUNITY_ADMIN else None,
        )
        out[username] = (role, password)
    return out


def _verify(hash_: str, password: str) -> bool:
    try:
        return _hasher.verify(hash_, password)
    except (VerificationError, InvalidHashError):
        return False


def audit(
    store: Store,
    principal: Principal,
    action: str,
    *,
    result: str = "ok",
    object: str | None = None,
    grid_id: int | None = None,
    source: str | None = None,
    request_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Append one entry to the audit log (control and bidi characters written visibly)."""
    entry = {
        "at": _now().isoformat(timespec="milliseconds"),
        "username": principal.username or None,
        "role": principal.role.value,
        "action": action,
        "object": object,
        "grid_id": grid_id,
        "result": result,
        "source": source,
        "request_id": request_id,
        "detail": detail,
    }
    store.audit_append({k: visible(v) if isinstance(v, str) else v for k, v in entry.items()})
