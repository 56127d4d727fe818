"""The platforms an environment is resolved and built for (``target_platform``)."""

from __future__ import annotations

import re
from typing import Any

from provider.specs.errors import SpecError

DEFAULT_PLATFORM = "x86_64-manylinux_2_28"
PLATFORM_FORM = (
    "'x86_64' or 'aarch64' (manylinux_2_28), or a uv platform such as 'aarch64-manylinux_2_28', "
    "'x86_64-manylinux_2_17', 'x86_64-unknown-linux-gnu' or 'aarch64-unknown-linux-musl'"
)
ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_PLATFORM = re.compile(
    r"(?P<arch>x86_64|aarch64)-(?:manylinux_2_(?:1[7-9]|[23][0-9]|40)|manylinux2014"
    r"|unknown-linux-gnu|unknown-linux-musl)"
)


def target_platform(value: Any, field: str = "target_platform") -> str:
    """A platform uv resolves and installs for: ``aarch64`` means ``aarch64-manylinux_2_28``."""
    if isinstance(value, str) and value in ARCHES:
        return f"{ARCHES[value]}-manylinux_2_28"
    if not isinstance(value, str) or not _PLATFORM.fullmatch(value):
        raise SpecError(field, value, PLATFORM_FORM)
    return value
