"""Subject rules shared by every transport, and the small checks around them."""

from __future__ import annotations

import pytest

from computemesh.models.errors import TransportError
from computemesh.transport import Message, validate_subject
from computemesh.transport.base import (
    check_payload_size,
    reply_subject,
    subject_matches,
    validate_queue,
)


@pytest.mark.parametrize(
    "subject",
    ["a", "mesh.actor.did:key:z6MkExample", "_INBOX.3f2a", "a-b.c_d.ü", "x" * 200],
)
def test_valid_subjects_are_returned_unchanged(subject: str) -> None:
    assert validate_subject(subject) == subject


@pytest.mark.parametrize(
    "subject",
    ["", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\r\nb", "a\x00b", "a.*", "a.>", "a*", "a.b>"],
)
def test_invalid_publish_subjects_raise(subject: str) -> None:
    with pytest.raises(ValueError):
        validate_subject(subject)


@pytest.mark.parametrize("pattern", ["*", ">", "a.*", "a.>", "*.b.>", "a.*.c"])
def test_wildcards_are_allowed_for_subscriptions(pattern: str) -> None:
    assert validate_subject(pattern, wildcards=True) == pattern


@pytest.mark.parametrize("pattern", ["a.>.b", ">.a", "a*", "a.*b", "a.b>", "a..*"])
def test_misplaced_wildcards_raise(pattern: str) -> None:
    with pytest.raises(ValueError):
        validate_subject(pattern, wildcards=True)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("*.b", "a.b", True),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "anything.at.all", True),
        ("a.*.c", "a.x.c", True),
        ("a.*.c", "a.x.d", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


def test_queue_names() -> None:
    assert validate_queue("workers.eu-west") == "workers.eu-west"
    for bad in ("", "two words", "line\nbreak"):
        with pytest.raises(ValueError):
            validate_queue(bad)


def test_reply_subject() -> None:
    assert reply_subject(Message("a", b"", reply="_INBOX.1")) == "_INBOX.1"
    with pytest.raises(TransportError) as missing:
        reply_subject(Message("a", b""))
    with pytest.raises(TransportError) as malformed:
        reply_subject(Message("a", b"", reply="_INBOX.1\r\nPUB evil 1"))
    assert missing.value.code == "no_reply_subject"
    assert malformed.value.code == "bad_reply_subject"


def test_payload_size_limit_is_inclusive() -> None:
    check_payload_size(10, 10)
    with pytest.raises(TransportError) as caught:
        check_payload_size(11, 10)
    assert caught.value.code == "payload_too_large"
    assert caught.value.retryable is False
