"""The code package containers fetch: the runtime, cloudpickle and the DAG folder's modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provider.store import ArtifactStore, Reference, bytes_reference

CODE_PACKAGE_TYPE = "flowtask.code_package"
CODE_PACKAGE_ENCODING = "zip"


def code_package(function: Callable[..., Any]) -> bytes:
    """The runtime, cloudpickle and the modules of ``function``'s DAG folder, as one zip."""
    from provider.compute import build_code_package
    from provider.operators.by_value import dag_folder_modules

    return build_code_package(dag_folder_modules(function))


def store_code_package(store: ArtifactStore, package: bytes) -> Reference:
    """Store the code package (once per content); its reference is ``code_reference``'s."""
    return store.put_bytes(package, type_name=CODE_PACKAGE_TYPE, encoding=CODE_PACKAGE_ENCODING)


def code_reference(store_uri: str, package: bytes) -> Reference:
    """The reference the code package has in the store at ``store_uri``, without storing it."""
    return bytes_reference(
        store_uri, package, type_name=CODE_PACKAGE_TYPE, encoding=CODE_PACKAGE_ENCODING
    )
