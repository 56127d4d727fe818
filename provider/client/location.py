"""Which artifact store the client opens: the one given, else the one the provider uses.

The provider reads ``[flow_task] artifact_store`` through Airflow's config (the environment
variable ``AIRFLOW__FLOW_TASK__ARTIFACT_STORE`` first, then ``airflow.cfg``) and falls back to
``$AIRFLOW_HOME/flow_artifacts``. The client follows the same order without importing Airflow:
it reads ``airflow.cfg`` with ``configparser``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

STORE_ENV = "AIRFLOW__FLOW_TASK__ARTIFACT_STORE"
SECTION, KEY = "flow_task", "artifact_store"


def airflow_home(env: Mapping[str, str]) -> Path:
    """``$AIRFLOW_HOME``, else ``~/airflow`` (Airflow's own default)."""
    return Path(os.path.expanduser(env.get("AIRFLOW_HOME") or "~/airflow")).resolve()


def _airflow_cfg(env: Mapping[str, str]) -> Path:
    return Path(os.path.expanduser(env.get("AIRFLOW_CONFIG") or airflow_home(env) / "airflow.cfg"))


def configured_store(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The provider's store and where that came from: ``(uri, source)``."""
    env = os.environ if env is None else env
    value = (env.get(STORE_ENV) or "").strip()
    if value:
        return value, f"${STORE_ENV}"
    cfg = _airflow_cfg(env)
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(cfg, encoding="utf-8")
        value = parser.get(SECTION, KEY, fallback="").strip()
    except configparser.Error:  # Airflow itself would refuse this file: say where it is
        raise ValueError(f"{cfg} cannot be read as an Airflow config file") from None
    if value:  # Airflow expands variables and ~ in config values
        return os.path.expanduser(os.path.expandvars(value)), f"[{SECTION}] {KEY} in {cfg}"
    home = airflow_home(env)
    return (home / "flow_artifacts").as_uri(), "the default, $AIRFLOW_HOME/flow_artifacts"


def given_store(uri: str) -> str:
    """A store named by a person: a relative path is taken from the working directory."""
    if not urlparse(uri).scheme and not Path(uri).is_absolute():
        return Path(uri).expanduser().resolve().as_uri()
    return uri
