"""The one canonical byte encoding of JSON data, and unpadded base64url.

Everything computemesh signs is first encoded by ``canonical_json``: keys sorted, no
insignificant whitespace, UTF-8 without ``\\u`` escapes for non-ASCII text, no NaN or
infinities, and only string keys. Two parties holding equal data therefore sign and check
the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

_B64URL_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def canonical_json(obj: object) -> bytes:
    """Encode ``obj`` canonically as UTF-8 JSON bytes.

    Raises ``ValueError`` when ``obj`` holds a NaN or infinite float, a mapping key that is
    not a ``str``, a circular reference, or a value JSON cannot represent.
    """
    _require_str_keys(obj)
    try:
        text = json.dumps(
            obj,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except TypeError as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("too deeply nested to encode") from exc
    return text.encode("utf-8")


def _require_str_keys(obj: object) -> None:
    """Raise ``ValueError`` if any mapping inside ``obj`` has a key that is not a ``str``.

    Walks iteratively and visits each container once, so shared and circular structures
    terminate here; ``json.dumps`` then reports a circular one.
    """
    pending: list[object] = [obj]
    visited: set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, dict | list | tuple) or id(item) in visited:
            continue
        visited.add(id(item))
        if isinstance(item, dict):
            for key, value in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"JSON object keys must be strings, not {key!r}")
                pending.append(value)
        else:
            pending.extend(item)


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5) text of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url text.

    Strict: raises ``ValueError`` for padding, any character outside ``A-Z a-z 0-9 - _``,
    an impossible length, or unused trailing bits that are not zero, so each byte string
    has exactly one accepted text form.
    """
    if not isinstance(text, str) or _B64URL_ALPHABET.fullmatch(text) is None:
        raise ValueError("not unpadded base64url text")
    if len(text) % 4 == 1:
        raise ValueError("impossible base64url length")
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.urlsafe_b64decode(padded)
    except binascii.Error as exc:
        raise ValueError(f"bad base64url: {exc}") from exc
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url (unused bits set)")
    return data
