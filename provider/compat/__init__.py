"""Every use of another project's internals, one module per project, each checked once.

``airflow_sdk`` (Airflow's task SDK), ``kubernetes`` (the cncf-kubernetes provider),
``amazon`` (the amazon provider) and ``botocore`` (botocore and urllib3 under the S3 store).
A module checks, when it is imported, that the installed release is one flowtask was tested
with and that the internals it uses are there; if not, it raises ``IncompatibleRelease``
naming the project, the release found and the releases that work — rather than letting a
renamed method turn into a silent misbehaviour. ``pyproject.toml`` bounds the same releases,
and ``./dev test --newest`` runs the compat and translation tests against the newest releases
those bounds allow.

Nothing here imports another part of flowtask: any layer may use these modules.
"""

from __future__ import annotations

from collections.abc import Iterable


class IncompatibleRelease(ImportError):
    """An installed release of another project lacks what flowtask uses of its internals."""


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def require(
    project: str,
    found: str,
    at_least: str,
    below: str,
    *,
    missing: Iterable[str] = (),
) -> None:
    """Refuse a release of ``project`` outside ``[at_least, below)``, or one whose internals
    that flowtask uses (``missing``: the names not found) are gone."""
    gone = list(missing)
    version = _release(found)
    if _release(at_least) <= version < _release(below) and not gone:
        return
    why = f" (it has no {', '.join(gone)})" if gone else ""
    raise IncompatibleRelease(
        f"flowtask works with {project} >={at_least},<{below}, which it was tested with; "
        f"{found} is installed{why}. Install a release in that range "
        f"(pip install '{project}>={at_least},<{below}') or a flowtask release made for {found}"
    )


def absent(owner: object, names: Iterable[str]) -> list[str]:
    """Which of ``names`` ``owner`` (a class or module) does not have, as ``Owner.name``."""
    label = getattr(owner, "__name__", repr(owner))
    return [f"{label}.{name}" for name in names if not hasattr(owner, name)]
