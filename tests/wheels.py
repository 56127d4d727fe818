"""Minimal wheels made on the spot, and a local package index of them (a find-links folder), so
uv resolves and installs with no network."""

from __future__ import annotations

import zipfile
from pathlib import Path


def make_wheel(
    folder: Path,
    name: str,
    version: str = "1.0",
    *,
    tag: str = "py3-none-any",
    source: str | None = None,
    requires: tuple[str, ...] = (),
) -> Path:
    """A wheel of one module ``name`` whose ``VALUE`` is ``name version`` (or ``source``)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    purelib = "true" if tag.endswith("-none-any") else "false"
    files = {
        f"{name}/__init__.py": source if source is not None else f"VALUE = '{name} {version}'\n",
        f"{dist}/METADATA": metadata,
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {purelib}\n"
        f"Tag: {tag}\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def local_index(folder: Path) -> dict[str, str]:
    """uv's settings for resolving from ``folder`` only, with no index and no retries (a uv.toml
    next to the wheels: this uv reads no UV_NO_INDEX variable)."""
    config = folder / "uv.toml"
    config.write_text(f'no-index = true\nfind-links = ["{folder}"]\n')
    return {"UV_CONFIG_FILE": str(config), "UV_HTTP_RETRIES": "0"}


def probe_wheels(folder: Path) -> dict[str, str]:
    """``ftprobe`` 1.0 in a find-links folder; uv's settings to resolve from it alone."""
    make_wheel(folder, "ftprobe", "1.0")
    return local_index(folder)


def no_index(folder: Path) -> dict[str, str]:
    """uv's settings with no index and no wheels at all: any resolution or download fails."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "uv.toml").write_text("no-index = true\n")
    return {"UV_CONFIG_FILE": str(folder / "uv.toml"), "UV_HTTP_RETRIES": "0"}


def unreachable_index(folder: Path) -> dict[str, str]:
    """uv's settings on a worker that reaches no package index: its index is a closed loopback
    port (nothing listens on the discard port), with no find-links and no retries."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "uv.toml").write_text("")
    return {
        "UV_CONFIG_FILE": str(folder / "uv.toml"),
        "UV_INDEX_URL": "http://127.0.0.1:9/simple",
        "UV_HTTP_RETRIES": "0",
    }
