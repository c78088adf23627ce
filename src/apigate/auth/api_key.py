"""API keys: read the presented key, hash it, find its consumer in constant time.

Keys are stored only as ``sha256:<hex>`` (config and Redis alike), so a leaked config file or
Redis dump does not leak usable keys. ``hash_key("s3cret")`` -> ``"sha256:2bb8...a25b"``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import unquote_plus

from apigate.config.model import ApiKeyAuth

# Compared against when no stored hash matched, so a miss does the same compare_digest work.
_NO_MATCH = "sha256:" + "0" * 64


def hash_key(raw: str) -> str:
    """The stored form of a key: ``hash_key("abc")`` -> ``"sha256:ba7816bf...15ad"``."""
    # surrogatepass: a lone surrogate from a mis-decoded header hashes instead of raising.
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def find_consumer(presented: str, index: Mapping[str, tuple[str, str]]) -> str | None:
    """The consumer owning ``presented`` (a raw key), or None.

    ``index`` maps a stored hash to ``(stored hash, consumer name)``. Why the dict lookup does
    not leak the secret through timing: it is keyed by ``sha256(presented)``, never by a raw
    key, so its timing can at most tell an attacker something about the *hash of their own
    guess* relative to the stored hashes; bits of a SHA-256 output do not help find a
    preimage, so stored keys stay unguessable. The stored hash is then checked against the
    presented one with ``hmac.compare_digest`` (against a dummy on a miss), so a hit and a
    miss do the same comparison work and equality never short-circuits on the first byte.
    """
    digest = hash_key(presented)
    stored, consumer = index.get(digest, (_NO_MATCH, ""))
    if hmac.compare_digest(stored, digest) and consumer:
        return consumer
    return None


def presented_key(cfg: ApiKeyAuth, headers: Mapping[str, str], query: str) -> str | None:
    """The raw key from the configured header, else the configured query parameter.

    ``headers`` has lower-case names. A query parameter given more than once is ambiguous and
    counts as no key. An empty value counts as no key.
    """
    if cfg.header is not None:
        value = headers.get(cfg.header.lower())
        if value is not None:
            return value.strip() or None
    if cfg.query is not None and query:
        values = [v for n, v in _query_pairs(query) if n == cfg.query]
        if len(values) == 1:
            return values[0] or None
    return None


def strip_query_param(query: str, name: str) -> str:
    """Remove every ``name=...`` from a raw query, keeping the other parts byte for byte.

    ``strip_query_param("a=1&api_key=s&b=2", "api_key")`` -> ``"a=1&b=2"``.
    """
    kept = [part for part in query.split("&") if _param_name(part) != name]
    return "&".join(kept)


def _param_name(part: str) -> str:
    return unquote_plus(part.partition("=")[0])


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs
