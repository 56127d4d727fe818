"""Kubernetes' name rules, as its API server checks them (k8s.io/apimachinery validation)."""

from __future__ import annotations

import re

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NAME_PART = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")


def is_dns_label(value: object) -> bool:
    """A namespace: lowercase alphanumerics and '-', at most 63 characters."""
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL.fullmatch(value))


def is_dns_subdomain(value: object) -> bool:
    """A Secret or service account name: DNS labels joined by '.', at most 253 characters."""
    return isinstance(value, str) and len(value) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(value))


def is_qualified_name(value: object) -> bool:
    """A label, annotation or taint key: ``[dns-subdomain/]name``, the name at most 63."""
    if not isinstance(value, str):
        return False
    prefix, slash, name = value.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_NAME_PART.fullmatch(name))


def is_label_value(value: object) -> bool:
    """Empty, or at most 63 of letters, digits, '-', '_', '.', alphanumeric at both ends."""
    return isinstance(value, str) and (
        value == "" or (len(value) <= 63 and bool(_NAME_PART.fullmatch(value)))
    )
