"""The `--web.config.file` of Prometheus exporters: TLS and basic auth.

The format is exporter-toolkit's (its docs/web-configuration.md), so one file can
serve node_exporter and cntrace alike. cntrace reads the subset it can honour
with Python's ssl module and refuses the rest by name, since an option that is
silently ignored (client_allowed_sans, rate_limit) would leave a user believing
in a protection that is not there:

    tls_server_config:   cert_file, key_file, client_ca_file, client_auth_type,
                         min_version, max_version
    basic_auth_users:    user: bcrypt hash ($2a$, $2b$ or $2y$)

As in exporter-toolkit, relative file names are taken from the config file's
directory and duplicate keys are an error. Unlike it, the file is read once, at
start: everything is checked, certificate and key loaded, before the daemon
attaches anything, and any problem is one UsageError line.

Python verifies every client certificate it accepts, so the two Go modes that
take one unverified (RequestClientCert, RequireAnyClientCert) verify against
client_ca_file too, and every mode but NoClientCert needs that file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import ssl
import threading
import warnings
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import yaml

from tracer.errors import UsageError, one_line

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit still accepts its old name for RequireAnyClientCert.
_CLIENT_AUTH_MODES = {**CLIENT_AUTH_TYPES, "RequireClientCert": ssl.CERT_REQUIRED}

_TOP_KEYS = ("tls_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type",
             "min_version", "max_version")
# exporter-toolkit options that cntrace does not implement.
_UNSUPPORTED_TOP = ("http_server_config", "rate_limit")
_UNSUPPORTED_TLS = ("cert", "key", "client_ca", "client_allowed_sans", "cipher_suites",
                    "prefer_server_cipher_suites", "curve_preferences")

_BCRYPT_HASH = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt reads at most 72 bytes of a password; htpasswd and Go ignore the rest,
# while bcrypt>=5 raises instead, so cut to match the hashes people have.
_BCRYPT_MAX_PASSWORD = 72
_VERIFIED_CACHE_SIZE = 64


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"


@dataclass(frozen=True, eq=False)
class WebConfig:
    """A checked web config: constructing one loads the TLS files and checks
    every hash, raising UsageError, so an instance is always usable."""

    tls: TlsConfig | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    _context: ssl.SSLContext | None = field(init=False, repr=False, default=None)
    # Successful verifications, keyed by HMAC(user:pass) under a per-process key
    # so that a memory dump does not hold a fast-to-brute-force password digest.
    _verified: dict[bytes, None] = field(init=False, repr=False, default_factory=dict)
    _cache_key: bytes = field(init=False, repr=False,
                              default_factory=lambda: secrets.token_bytes(32))
    _cache_lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    # One bcrypt at a time, as exporter-toolkit does: wrong passwords from many
    # clients then cost one core, not all of them.
    _bcrypt_lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for user, hashed in self.basic_auth_users.items():
            _check_user(user, hashed)
        if self.tls is not None:
            object.__setattr__(self, "_context", _build_context(self.tls))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side context, built once at construction; None without TLS."""
        return self._context

    def check_basic_auth(self, header: str | None) -> bool:
        """Whether an Authorization header value passes; always True when no
        users are configured."""
        if not self.basic_auth_users:
            return True
        credentials = _decode_basic(header)
        if credentials is None:
            return False
        key = hmac.new(self._cache_key, credentials, hashlib.sha256).digest()
        with self._cache_lock:
            if key in self._verified:
                return True
        user_bytes, _, password = credentials.partition(b":")
        try:
            user = user_bytes.decode()
        except UnicodeDecodeError:
            return False
        # An unknown user still costs one bcrypt, against a real hash, so
        # response time does not tell which user names exist.
        hashed = self.basic_auth_users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = next(iter(self.basic_auth_users.values()))
        with self._bcrypt_lock:
            matches = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)
        if not (known and matches):
            return False
        with self._cache_lock:
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[key] = None
        return True


def load(path: str) -> WebConfig:
    """Read, check and build the web config at `path`; UsageError on any problem."""
    shown = one_line(path)
    try:
        return _parse(path)
    except UsageError as exc:
        raise UsageError(f"web config {shown}: {exc}") from None
    except RecursionError:
        raise UsageError(f"web config {shown}: nested too deeply") from None
    except ValueError as exc:   # a NUL in a file name: open() refuses it
        raise UsageError(f"web config {shown}: {exc}") from None
    except UnicodeError as exc:  # a lone surrogate in a file name or hash
        raise UsageError(f"web config {shown}: not encodable text ({exc.reason})") from None


def _parse(path: str) -> WebConfig:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror}") from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise UsageError(f"not valid YAML: {_yaml_problem(exc)}") from None
    top = _mapping(doc, "top level")
    _check_keys(top, _TOP_KEYS, _UNSUPPORTED_TOP, "")
    base = os.path.dirname(os.path.abspath(path))
    users = _mapping(top.get("basic_auth_users"), "basic_auth_users")
    return WebConfig(
        tls=_parse_tls(_mapping(top.get("tls_server_config"), "tls_server_config"), base),
        basic_auth_users={user: _hash_bytes(user, hashed) for user, hashed in users.items()},
    )


def _parse_tls(section: dict[str, Any], base: str) -> TlsConfig | None:
    _check_keys(section, _TLS_KEYS, _UNSUPPORTED_TLS, "tls_server_config.")
    raw = {key: section[key] for key in _TLS_KEYS if section.get(key) is not None}
    for key in ("min_version", "max_version"):
        if isinstance(raw.get(key), int | float):  # `min_version: 1.2`: list the known names
            raw[key] = str(raw[key])
    values = {key: _string(value, f"tls_server_config.{key}") for key, value in raw.items()}
    if not values:
        return None  # an empty section means no TLS, as in exporter-toolkit
    for required in ("cert_file", "key_file"):
        if required not in values:
            raise UsageError(f"tls_server_config: {required} is required for TLS")
    for key in ("cert_file", "key_file", "client_ca_file"):
        if key in values:
            values[key] = os.path.join(base, values[key])
    return TlsConfig(**values)


def _build_context(tls: TlsConfig) -> ssl.SSLContext:
    versions = [_tls_version(tls.min_version, "min_version"),
                _tls_version(tls.max_version, "max_version")]
    if versions[0] > versions[1]:
        raise UsageError(f"tls_server_config: min_version {tls.min_version} is above "
                         f"max_version {tls.max_version}")
    verify_mode = _CLIENT_AUTH_MODES.get(tls.client_auth_type)
    if verify_mode is None:
        raise UsageError(f"unknown client_auth_type '{tls.client_auth_type}' "
                         f"(expected one of {', '.join(CLIENT_AUTH_TYPES)})")
    if tls.client_ca_file is not None and verify_mode == ssl.CERT_NONE:
        raise UsageError("client_ca_file is set but client_auth_type is NoClientCert: "
                         "set client_auth_type to RequireAndVerifyClientCert")
    if tls.client_ca_file is None and verify_mode != ssl.CERT_NONE:
        raise UsageError(f"client_auth_type {tls.client_auth_type} needs client_ca_file: "
                         "cntrace verifies every client certificate it accepts")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS10/TLS11 are deprecated, but asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = versions
    _check_readable(tls.cert_file, "cert_file")
    _check_readable(tls.key_file, "key_file")
    # load_cert_chain names neither file in its errors: check the certificate
    # alone first, so what fails after it is the key.
    _load_certificates(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls.cert_file, "cert_file")
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file,
                            password=lambda: _refuse_encrypted_key(tls.key_file))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(f"key_file {tls.key_file} does not match "
                             f"cert_file {tls.cert_file}") from None
        raise UsageError(f"key_file {tls.key_file}: no PEM private key in it") from None
    if tls.client_ca_file is not None:
        _check_readable(tls.client_ca_file, "client_ca_file")
        _load_certificates(ctx, tls.client_ca_file, "client_ca_file")
    ctx.verify_mode = verify_mode
    return ctx


def _refuse_encrypted_key(key_file: str) -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal.
    raise UsageError(f"key_file {key_file} is encrypted: cntrace needs an unencrypted key")


def _load_certificates(ctx: ssl.SSLContext, path: str, key: str) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise UsageError(f"{key} {path}: no PEM certificate in it") from None


def _check_readable(path: str, key: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{key} {path}: {exc.strerror}") from None


def _tls_version(name: str, key: str) -> ssl.TLSVersion:
    try:
        return TLS_VERSIONS[name]
    except KeyError:
        raise UsageError(f"unknown {key} '{name}' (expected one of "
                         f"{', '.join(TLS_VERSIONS)})") from None


def _check_user(user: str, hashed: bytes) -> None:
    if ":" in user:
        raise UsageError(f"basic_auth_users: user name '{user}' has a ':', "
                         "which basic auth cannot carry")
    if not _BCRYPT_HASH.fullmatch(hashed):
        # The value is not echoed: it may be a plain-text password.
        raise UsageError(f"basic_auth_users.{user}: not a bcrypt hash ($2a$, $2b$ or $2y$); "
                         "make one with: htpasswd -nBC 10 '' | tr -d ':\\n'")


def _hash_bytes(user: Any, hashed: Any) -> bytes:
    if not isinstance(user, str):
        raise UsageError(f"basic_auth_users: user name {user!r} is not a string (quote it)")
    return _string(hashed, f"basic_auth_users.{user}").encode()


def _decode_basic(header: str | None) -> bytes | None:
    """The `user:pass` bytes of a Basic Authorization header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        credentials = base64.b64decode(token.strip(), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return None
    return credentials if b":" in credentials else None


def _check_keys(section: dict[str, Any], known: tuple[str, ...],
                unsupported: tuple[str, ...], prefix: str) -> None:
    for key in section:
        if key in unsupported:
            raise UsageError(f"{prefix}{key} is an exporter-toolkit option cntrace does not "
                             f"support (supported: {', '.join(known)})")
        if key not in known:
            raise UsageError(f"unknown key '{prefix}{key}' (expected one of "
                             f"{', '.join(known)})")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected a mapping, got {_yaml_type(value)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: expected a string, got {_yaml_type(value)}")
    return value


def _yaml_type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, like Go's yaml.UnmarshalStrict:
    otherwise a second `alice:` would silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
