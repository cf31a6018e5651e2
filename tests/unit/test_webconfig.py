"""Reading exporter-toolkit web config files: every mistake is one UsageError
line naming the file and the problem; basic auth against real bcrypt hashes;
the SSL context each client_auth_type and TLS version gives."""

import base64
import ssl
import textwrap

import bcrypt
import pytest

from tests.certs import Pki, make_pki
from tracer.daemon import webconfig
from tracer.daemon.webconfig import TlsConfig, WebConfig, load
from tracer.errors import UsageError


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode()


def write(tmp_path, text: str, name: str = "web.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def tls_yaml(pki: Pki, **overrides: str) -> str:
    fields = {"cert_file": pki.server_cert, "key_file": pki.server_key, **overrides}
    return "tls_server_config:\n" + "".join(f"  {k}: {v}\n" for k, v in fields.items())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# (case id, config text or a function of the pki giving it, expected fragment)
PARSE_ERRORS = [
    ("bad-yaml", "tls_server_config: [unclosed\n", "not valid YAML"),
    ("top-level-list", "- a\n- b\n", "top level: expected a mapping, got a list"),
    ("unknown-top-key", "tls_config: {}\n", "unknown key 'tls_config'"),
    ("unsupported-top-key", "rate_limit: {burst: 2}\n",
     "rate_limit is an exporter-toolkit option cntrace does not support"),
    ("unknown-tls-key", "tls_server_config: {certfile: x}\n",
     "unknown key 'tls_server_config.certfile'"),
    ("unsupported-tls-key", "tls_server_config: {client_allowed_sans: [a]}\n",
     "tls_server_config.client_allowed_sans is an exporter-toolkit option"),
    ("section-not-mapping", "basic_auth_users: [alice]\n",
     "basic_auth_users: expected a mapping, got a list"),
    ("duplicate-user", "basic_auth_users:\n  alice: x\n  alice: y\n", "duplicate key 'alice'"),
    ("hash-not-bcrypt", "basic_auth_users: {alice: hunter2}\n",
     "basic_auth_users.alice: not a bcrypt hash"),
    ("hash-unknown-variant", "basic_auth_users: {alice: '$2x$10$" + "a" * 53 + "'}\n",
     "not a bcrypt hash"),
    ("hash-not-string", "basic_auth_users: {alice: 12}\n",
     "basic_auth_users.alice: expected a string, got a number"),
    ("user-not-string", "basic_auth_users: {12: x}\n", "user name 12 is not a string"),
    ("user-with-colon", lambda p, h: f"basic_auth_users: {{'a:b': '{h}'}}\n",
     "user name 'a:b' has a ':'"),
    ("cert-without-key", lambda p, h: f"tls_server_config: {{cert_file: {p.server_cert}}}\n",
     "tls_server_config: key_file is required for TLS"),
    ("auth-type-without-cert", "tls_server_config: {client_auth_type: NoClientCert}\n",
     "tls_server_config: cert_file is required for TLS"),
    ("cert-missing", lambda p, h: tls_yaml(p, cert_file=p.dir / "nope.pem"),
     "nope.pem: No such file or directory"),
    ("cert-unreadable", lambda p, h: tls_yaml(p, cert_file=p.dir), "Is a directory"),
    ("cert-not-pem", lambda p, h: tls_yaml(p, cert_file=p.server_key),
     "server.key: no PEM certificate in it"),
    ("key-missing", lambda p, h: tls_yaml(p, key_file=p.dir / "nope.key"),
     "key_file " + "{dir}/nope.key: No such file or directory"),
    ("key-not-pem", lambda p, h: tls_yaml(p, key_file=p.ca),
     "key_file {dir}/ca.pem: no PEM private key in it"),
    ("key-mismatch", lambda p, h: tls_yaml(p, key_file=p.other_key),
     "key_file {dir}/other.key does not match cert_file {dir}/server.pem"),
    ("key-encrypted", lambda p, h: tls_yaml(p, key_file=p.encrypted_key),
     "encrypted.key is encrypted"),
    ("unknown-client-auth", lambda p, h: tls_yaml(p, client_auth_type="RequireCert"),
     "unknown client_auth_type 'RequireCert' (expected one of NoClientCert, "),
    ("unknown-min-version", lambda p, h: tls_yaml(p, min_version="TLS14"),
     "unknown min_version 'TLS14' (expected one of TLS10, TLS11, TLS12, TLS13)"),
    ("unknown-max-version", lambda p, h: tls_yaml(p, max_version="1.3"), "unknown max_version"),
    ("min-above-max", lambda p, h: tls_yaml(p, min_version="TLS13", max_version="TLS12"),
     "min_version TLS13 is above max_version TLS12"),
    ("ca-without-auth-type", lambda p, h: tls_yaml(p, client_ca_file=p.ca),
     "client_ca_file is set but client_auth_type is NoClientCert"),
    ("verify-without-ca", lambda p, h: tls_yaml(p, client_auth_type="RequireAndVerifyClientCert"),
     "client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    ("ca-not-pem", lambda p, h: tls_yaml(p, client_auth_type="VerifyClientCertIfGiven",
                                         client_ca_file=p.server_key),
     "client_ca_file {dir}/server.key: no PEM certificate in it"),
]


@pytest.mark.parametrize("config, fragment", [c[1:] for c in PARSE_ERRORS],
                         ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors_are_one_usage_error_line(tmp_path, pki, alice_hash, config, fragment):
    text = config(pki, alice_hash) if callable(config) else config
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"web config {path}: ")
    assert fragment.format(dir=pki.dir) in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"web config .*/absent.yml: cannot read: No such file"):
        load(str(tmp_path / "absent.yml"))


def test_plain_text_password_is_not_echoed(tmp_path):
    with pytest.raises(UsageError) as info:
        load(write(tmp_path, "basic_auth_users: {alice: correct-horse-battery}\n"))
    assert "correct-horse" not in str(info.value)


def test_empty_file_and_empty_sections_mean_no_tls_and_no_auth(tmp_path):
    for text in ("", "tls_server_config: {}\nbasic_auth_users:\n"):
        config = load(write(tmp_path, text))
        assert config.tls is None
        assert config.ssl_context() is None
        assert config.basic_auth_users == {}
        assert config.check_basic_auth(None)


def test_relative_paths_are_taken_from_the_config_directory(pki):
    path = write(pki.dir, """\
        tls_server_config:
          cert_file: server.pem
          key_file: server.key
        """, name="relative.yml")
    config = load(path)
    assert config.tls == TlsConfig(cert_file=str(pki.server_cert), key_file=str(pki.server_key))


def test_full_config(tmp_path, pki, alice_hash):
    config = load(write(tmp_path, f"""\
        tls_server_config:
          cert_file: {pki.server_cert}
          key_file: {pki.server_key}
          client_ca_file: {pki.ca}
          client_auth_type: RequireAndVerifyClientCert
          min_version: TLS13
        basic_auth_users:
          alice: {alice_hash}
        """))
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.basic_auth_users == {"alice": alice_hash.encode()}
    ctx = config.ssl_context()
    assert ctx is config.ssl_context()  # built once
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.get_ca_certs()[0]["subject"] == ((("commonName", "cntrace-test-ca"),),)


@pytest.mark.parametrize("auth_type, mode", [
    ("NoClientCert", ssl.CERT_NONE),
    ("RequestClientCert", ssl.CERT_OPTIONAL),
    ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
    ("RequireAnyClientCert", ssl.CERT_REQUIRED),
    ("RequireClientCert", ssl.CERT_REQUIRED),  # exporter-toolkit's old name
    ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
])
def test_client_auth_type_gives_verify_mode(pki, auth_type, mode):
    ca = None if mode == ssl.CERT_NONE else str(pki.ca)
    config = WebConfig(tls=TlsConfig(str(pki.server_cert), str(pki.server_key),
                                     client_ca_file=ca, client_auth_type=auth_type))
    ctx = config.ssl_context()
    assert ctx.verify_mode == mode
    assert len(ctx.get_ca_certs()) == (0 if ca is None else 1)


@pytest.mark.parametrize("name, version", [
    ("TLS10", ssl.TLSVersion.TLSv1),
    ("TLS11", ssl.TLSVersion.TLSv1_1),
    ("TLS12", ssl.TLSVersion.TLSv1_2),
    ("TLS13", ssl.TLSVersion.TLSv1_3),
])
def test_min_version(pki, name, version):
    ctx = WebConfig(tls=TlsConfig(str(pki.server_cert), str(pki.server_key),
                                  min_version=name)).ssl_context()
    assert ctx.minimum_version == version
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3


def test_default_min_version_is_tls12(pki):
    ctx = WebConfig(tls=TlsConfig(str(pki.server_cert), str(pki.server_key))).ssl_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.fixture
def alice(alice_hash) -> WebConfig:
    return WebConfig(basic_auth_users={"alice": alice_hash.encode()})


@pytest.mark.parametrize("header, ok", [
    (basic("alice", "wonderland"), True),
    ("basic " + basic("alice", "wonderland")[6:], True),  # scheme is case-insensitive
    (basic("alice", "wonderlan"), False),
    (basic("alice", ""), False),
    (basic("bob", "wonderland"), False),
    (basic("ALICE", "wonderland"), False),
    (None, False),
    ("", False),
    ("Bearer abc", False),
    ("Basic", False),
    ("Basic !!!not-base64!!!", False),
    ("Basic " + base64.b64encode(b"alice-wonderland").decode(), False),  # no colon
    ("Basic " + base64.b64encode(b"\xff\xfe:wonderland").decode(), False),  # not UTF-8
    ("Basic wönderland", False),
])
def test_check_basic_auth(alice, header, ok):
    assert alice.check_basic_auth(header) is ok


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_hash_prefixes_accepted(tmp_path, alice_hash, prefix):
    hashed = prefix + alice_hash[4:]
    config = load(write(tmp_path, f"basic_auth_users:\n  alice: '{hashed}'\n"))
    assert config.check_basic_auth(basic("alice", "wonderland"))


def test_password_beyond_72_bytes_is_ignored_as_htpasswd_does():
    long = "p" * 72
    config = WebConfig(basic_auth_users={
        "alice": bcrypt.hashpw(long.encode(), bcrypt.gensalt(rounds=4))})
    assert config.check_basic_auth(basic("alice", long + "ignored"))
    assert not config.check_basic_auth(basic("alice", long[:-1]))


def test_successes_are_cached_failures_are_not(alice, monkeypatch):
    calls = []
    real = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    for _ in range(3):
        assert alice.check_basic_auth(basic("alice", "wonderland"))
    assert len(calls) == 1
    for _ in range(2):
        assert not alice.check_basic_auth(basic("alice", "wrong"))
    assert len(calls) == 3


def test_unknown_user_costs_one_bcrypt_too(alice, monkeypatch):
    calls = []
    monkeypatch.setattr(webconfig.bcrypt, "checkpw",
                        lambda password, hashed: calls.append(hashed) or True)
    assert not alice.check_basic_auth(basic("mallory", "wonderland"))
    assert calls == [alice.basic_auth_users["alice"]]


def test_cache_is_bounded(alice_hash):
    users = {f"user{i}": alice_hash.encode() for i in range(webconfig._VERIFIED_CACHE_SIZE + 5)}
    config = WebConfig(basic_auth_users=users)
    for user in users:
        assert config.check_basic_auth(basic(user, "wonderland"))
    assert len(config._verified) == webconfig._VERIFIED_CACHE_SIZE
