"""Loom topics and tool names as NATS subjects, and back (``docs/federation.md``).

A Loom topic is dot-separated tokens, and so is a NATS subject, so the mapping is token by
token under a root (``<prefix>.ev``). A token NATS would read otherwise (``*``, ``>``,
whitespace, anything outside a plain alphabet) is written ``~`` + its UTF-8 in unpadded
base64url; a token that starts with ``~`` is always written so, which makes the mapping
reversible. Patterns: Loom's ``*`` is NATS's ``*``; ``**`` at the end is ``>``; a ``**``
inside a pattern has no NATS form, so the subject stops there with ``>`` and the receiver
filters by the pattern itself.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = [
    "decode_token",
    "encode_token",
    "pattern_subjects",
    "prefix_subjects",
    "subject_topic",
    "tool_subject",
    "topic_subject",
]

_PLAIN = re.compile(r"[A-Za-z0-9_:@+=,-]+")
"""Tokens written as they are (no ``~`` among them: it marks an encoded one)."""


def encode_token(token: str) -> str:
    """One topic token as a NATS subject token."""
    if _PLAIN.fullmatch(token):
        return token
    return "~" + base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode()


def decode_token(token: str) -> str:
    """A subject token back to the topic token.

    Raises:
        ValueError: ``~`` followed by something that is not the encoding of a token
            (base64url of UTF-8, as :func:`encode_token` writes it).
    """
    if not token.startswith("~"):
        return token
    body = token[1:] + "=" * (-len(token[1:]) % 4)
    try:
        text = base64.b64decode(body, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    if not text or encode_token(text) != token:  # one spelling per token, or none
        raise ValueError(f"subject token {token[:40]!r} is not an encoded topic token")
    return text


def topic_subject(root: str, topic: str) -> str:
    """The subject a (valid) topic is published on under ``root`` (``loom.ev``)."""
    return ".".join([root, *map(encode_token, topic.split("."))])


def subject_topic(root: str, subject: str) -> str:
    """The topic a subject under ``root`` stands for.

    Raises:
        ValueError: the subject is not under ``root``, or a token does not decode.
    """
    head = root + "."
    if not subject.startswith(head) or len(subject) == len(head):
        raise ValueError(f"subject {subject[:80]!r} is not under {root!r}")
    return ".".join(decode_token(t) for t in subject[len(head) :].split("."))


def prefix_subjects(root: str, prefix: bytes) -> list[str]:
    """The subjects that carry every topic a subscription prefix can match.

    A Loom peer subscribes to a pattern's literal prefix: whole tokens, ending with a
    dot when a ``*`` follows (``market.`` for ``market.*``). ``market.price`` is taken
    as the whole token ``price`` (``market.price`` and below; not ``market.prices``).
    A prefix that is not whole tokens is widened to the root: the receiver filters.
    """
    try:
        text = prefix.decode()
    except UnicodeDecodeError:
        return [f"{root}.>"]
    if not text:
        return [f"{root}.>"]
    tokens = text.split(".")
    last = tokens.pop()
    if any(not t or "*" in t for t in tokens) or "*" in last:
        return [f"{root}.>"]
    base = topic_subject(root, ".".join(tokens)) if tokens else root
    if not last:  # "market." : every topic below
        return [f"{base}.>"]
    exact = f"{base}.{encode_token(last)}"
    return [exact, f"{exact}.>"]


def tool_subject(root: str, tool: str) -> str:
    """The subject calls to ``tool`` are requested on under ``root`` (``loom.tool``)."""
    tokens = tool.split(".")
    if any(not t for t in tokens):
        return f"{root}.{encode_token(tool)}"
    return topic_subject(root, tool)


def pattern_subjects(root: str, pattern: str) -> list[str]:
    """Subjects covering every topic a (valid) Loom pattern matches: ``*`` stays ``*``,
    a ``**`` ends the subject with ``>`` (and, as ``**`` may match no token, the subject
    before it is added); what follows a ``**`` is left to the receiver to filter."""
    subjects: list[str] = []
    tokens: list[str] = [root]
    for token in pattern.split("."):
        if token == "**":
            if len(tokens) > 1:
                subjects.append(".".join(tokens))
            subjects.append(".".join([*tokens, ">"]))
            return subjects
        tokens.append("*" if token == "*" else encode_token(token))
    return [".".join(tokens)]
