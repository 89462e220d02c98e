"""Bearer tokens: who may call the server, and which models each caller may use.

The token file (`zoo serve --auth-tokens FILE`) holds one token per line, optionally followed by
the model names it may use (spaces or commas between them); `#` starts a comment line:

    # token                              models (none: every model, and /metrics)
    3f9a1c0e7b2d4a6f8e1c3b5a7d9f0e2c
    b7e4d2f0a8c6e4b2d0f8a6c4e2b0d8f6     shakespeare, language-id

Clients send `authorization: Bearer TOKEN` metadata (HTTP's header, for the metrics endpoint).
A presented token is hashed and compared with every known token's hash in constant time
(`hmac.compare_digest`, no early exit), so timing tells nothing about how much of it matched.
Tokens never appear in a log or an error message. The file is re-read on SIGHUP; a file that no
longer parses is logged and the tokens already loaded stay in force.
"""

import contextvars
import dataclasses
import hashlib
import hmac
import re
from pathlib import Path

from zoo.errors import ZooError

MIN_TOKEN_LENGTH = 16  # shorter ones are guessable; `openssl rand -hex 16` gives 32 characters
TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what fits an HTTP header as is
BEARER = re.compile(r"bearer\s+(\S+)\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Grant:
    """What one token allows: `models` None means every model (and the metrics)."""

    models: frozenset | None = None

    def may_use(self, model):
        return self.models is None or model in self.models

    @property
    def unrestricted(self):
        return self.models is None


EVERYTHING = Grant()  # the grant of every caller when the server has no tokens
_current = contextvars.ContextVar("zoo_grant", default=EVERYTHING)


def current_grant():
    """The grant of the RPC being handled (set by server.gate for its task)."""
    return _current.get()


def set_grant(grant):
    _current.set(grant)


def _digest(token):
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(path):
    """[(sha256 of the token, Grant)] of a token file; a ZooError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"--auth-tokens {path}: cannot read it ({e})") from None
    entries, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        token, models = fields[0], fields[1:]
        where = f"--auth-tokens {path}, line {number}"
        if not TOKEN.fullmatch(token) or len(token) < MIN_TOKEN_LENGTH:
            raise ZooError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                           "without spaces (e.g. `openssl rand -hex 16`)")
        digest = _digest(token)
        if digest in seen:
            raise ZooError(f"{where}: the same token is listed twice")
        seen.add(digest)
        entries.append((digest, Grant(frozenset(models) if models else None)))
    if not entries:
        raise ZooError(f"--auth-tokens {path}: holds no token (every request would be refused)")
    return entries


class Tokens:
    """The tokens of a token file, re-read by `reload()`."""

    def __init__(self, path):
        self.path = Path(path)
        self.entries = parse_tokens(self.path)

    def reload(self):
        """Re-reads the file; returns the number of tokens. A ZooError leaves the old tokens in force."""
        self.entries = parse_tokens(self.path)
        return len(self.entries)

    def grant_of(self, presented):
        """The Grant of token `presented`, or None when it is unknown. Every entry is compared."""
        digest = _digest(presented)
        found = None
        for known, grant in self.entries:
            if hmac.compare_digest(digest, known) and found is None:
                found = grant
        return found

    def grant_of_header(self, value):
        """The Grant of an `authorization` value ("Bearer TOKEN"), or None when missing or unknown."""
        match = BEARER.fullmatch(value or "")
        return self.grant_of(match.group(1)) if match else None
