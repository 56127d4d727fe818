"""How a task option's field declares the ``[flow_task]`` setting it falls back to.

``KubernetesOptions(namespace=None)`` falls back to ``[flow_task] kubernetes_namespace``: the
field says so in its metadata (``setting(...)``), once; ``provider.settings`` reads the
setting and ``provider_info`` describes it from that declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SETTING = "flowtask_setting"
Form = Literal["text", "json", "list", "float", "bool"]


@dataclass(frozen=True)
class SettingDoc:
    """A field's setting: what it means, an example, how its text reads, its key (else the
    options' prefix and the field's name) and its default as the config holds it."""

    description: str
    example: str
    form: Form = "text"
    key: str | None = None
    default: str = ""


def setting(
    description: str,
    example: str,
    *,
    form: Form = "text",
    key: str | None = None,
    default: str = "",
) -> dict[str, Any]:
    """Field metadata: ``field(default=None, metadata=setting("...", "example"))``."""
    return {SETTING: SettingDoc(description, example, form, key, default)}
