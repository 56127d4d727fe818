"""Kubernetes label values and keys made from free-form names (DAG ids, run ids, tags)."""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_VALID = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
_INVALID_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(text: str) -> str:
    """``text`` when Kubernetes accepts it as a label value, else a readable, unique stand-in.

    A changed value keeps as much of the original as fits and ends with 8 hex digits of its
    SHA-256, so two different names never share a label (``user:alice`` -> ``user-alice-…``).
    """
    if _VALID.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    readable = _INVALID_RUN.sub("-", text).strip("-_.")[: MAX_LABEL - len(digest) - 1]
    readable = readable.rstrip("-_.")
    return f"{readable}-{digest}" if readable else digest


def label_key_name(text: str) -> str:
    """The name part of a label key (``tag.flowtask.io/<name>``); never empty."""
    return label_value(text) or hashlib.sha256(b"").hexdigest()[:8]
