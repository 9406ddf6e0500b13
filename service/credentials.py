"""What both front-ends (REST and gRPC) need to admit a client: the API keys and the TLS pair.

Keys come from GENSERVE_API_KEYS_FILE, one a line (blank lines and # comments ignored). A presented key is
checked against every key in constant time (hmac.compare_digest over SHA-256 digests, so not even a key's
length leaks). No key is ever put in an error message or a log line: file problems name the line, not the key.
"""

import hashlib
import hmac
import ssl
import string
from pathlib import Path

from service.settings import Settings

_KEY_CHARACTERS = frozenset(string.printable) - frozenset(string.whitespace)


class CredentialsError(ValueError):
    """A keys file or TLS pair the server cannot start with; the message names the setting and the file."""


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def from_file(cls, path: Path) -> "ApiKeys":
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CredentialsError(f"GENSERVE_API_KEYS_FILE: cannot read {path}: {e}") from None
        keys = []
        for number, line in enumerate(lines, 1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if not set(key) <= _KEY_CHARACTERS:
                raise CredentialsError(f"GENSERVE_API_KEYS_FILE: line {number} of {path}: "
                                       "a key must be printable ASCII without spaces")
            keys.append(key)
        if not keys:
            raise CredentialsError(f"GENSERVE_API_KEYS_FILE: {path} holds no keys (every line is blank or a # comment)")
        return cls(keys)

    def admits(self, authorization: str | bytes | None) -> bool:
        """Whether an Authorization value ("Bearer <key>", the scheme in any case) holds one of the keys."""
        if authorization is None:
            return False
        if isinstance(authorization, str):
            authorization = authorization.encode("utf-8", "replace")
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        digest = hashlib.sha256(token.strip()).digest()
        found = False
        for key in self._digests:  # no early exit: the time does not depend on which key matched
            found |= hmac.compare_digest(digest, key)
        return found


def api_keys(settings: Settings) -> ApiKeys | None:
    """The keys of settings.api_keys_file; None when it is unset (the server is open)."""
    return None if settings.api_keys_file is None else ApiKeys.from_file(settings.api_keys_file)


def tls_pair(settings: Settings) -> tuple[Path, Path] | None:
    """(certificate, key) when TLS is on; None when both are unset; an error when only one is set."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("GENSERVE_TLS_CERT", "GENSERVE_TLS_KEY") if key is None else \
            ("GENSERVE_TLS_KEY", "GENSERVE_TLS_CERT")
        raise CredentialsError(f"{missing}: not set, but {given} is; TLS needs both the certificate and its key")
    return cert, key


def check_tls(settings: Settings) -> tuple[Path, Path] | None:
    """tls_pair(), with the pair loaded once so that a bad file is a clear error before anything listens."""
    pair = tls_pair(settings)
    if pair is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*pair)
        except (OSError, ssl.SSLError) as e:
            raise CredentialsError(f"GENSERVE_TLS_CERT/GENSERVE_TLS_KEY: cannot load {pair[0]} with {pair[1]}: "
                                   f"{e}") from None
    return pair
