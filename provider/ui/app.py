"""The Flow tabs' FastAPI app, mounted by the API server under ``/flowtask``.

Every route checks Airflow's own authorization for the DAG in its path, through the API
server's security dependencies (``requires_access_dag``): read for the views, pictures and
downloads, edit (``PUT`` on the DAG's runs) for tags. A user without access gets 403 before
anything is read from the store. Pages are rendered here (Jinja2, autoescaped) from the
manifests and the JSON / PNG views the runtime stored; nothing is unpickled.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from provider.store import Reference, StoreError
from provider.ui import data
from provider.ui.cache import cached

TEMPLATES = Path(__file__).parent / "templates"
PREFIX = "/flowtask"

_read_run = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
_read_task = [Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))]
_read_xcom = [Depends(requires_access_dag("GET", DagAccessEntity.XCOM))]
_edit_run = [Depends(requires_access_dag("PUT", DagAccessEntity.RUN))]


def _store() -> Any:
    from provider.config import open_artifact_store

    return open_artifact_store()


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,  # an optional field not recorded shows empty
    )
    env.filters["mib"] = _mib
    env.filters["size"] = _size
    env.filters["markdown"] = _markdown
    return env


_ENV: Any = None


def _render(name: str, **values: Any) -> HTMLResponse:
    global _ENV
    if _ENV is None:
        _ENV = _env()
    html = _ENV.get_template(name).render(prefix=PREFIX, **values)
    return HTMLResponse(html, headers=_HEADERS)


# The pages are shown in Airflow's own iframe (same origin); no other site may frame them.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _mib(value: Any) -> str:
    import jinja2

    if value is None or isinstance(value, jinja2.Undefined):
        return "-"
    mib = float(value)
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def _size(value: Any) -> str:
    size = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _markdown(text: str) -> Any:
    """CommonMark to HTML with raw HTML escaped (a card's Markdown cannot inject markup)."""
    import markupsafe
    from markdown_it import MarkdownIt

    return markupsafe.Markup(MarkdownIt("commonmark", {"html": False}).enable("table").render(text))


def _map_index(raw: str | None) -> int:
    """The UI's ``{MAP_INDEX}``: a number for a mapped task instance, left as the placeholder
    (or empty, or -1) for an unmapped one."""
    try:
        return int(raw) if raw not in (None, "") else -1
    except ValueError:
        return -1


def _not_found(error: Exception) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(error))


def create_app() -> FastAPI:
    app = FastAPI(title="flowtask", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/dags/{dag_id}/runs/{run_id}/tasks/{task_id}", dependencies=_read_task)
    def task_tab(
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: str | None = None,
        items_from: Annotated[int, Query(ge=0)] = 0,
    ) -> HTMLResponse:
        store = _store()
        index = _map_index(map_index)
        try:
            view = data.task_view(store, dag_id, run_id, task_id, index, items_from)
        except data.NotStored as error:
            return _render("missing.html", what=f"task {task_id}", reason=str(error))
        from provider.translate.links import console_links

        for attempt in view["tries"]:
            found = console_links(attempt["where"] or {})
            attempt["links"] = [{"name": name, "url": url} for name, url in found.items()]
        return _render("task.html", view=view)

    @app.get(
        "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/images/{sha256}",
        dependencies=_read_task,
    )
    def picture(
        dag_id: str, run_id: str, task_id: str, try_number: int, sha256: str, map_index: int = -1
    ) -> Response:
        store = cached(_store())  # a picture is content-addressed: kept once read
        try:
            ref = data.image_ref(store, dag_id, run_id, task_id, map_index, try_number, sha256)
            body = bytes(store.get_bytes(ref))
        except (data.NotStored, StoreError) as error:
            raise _not_found(error) from None
        headers = {**_HEADERS, "Cache-Control": "private, max-age=86400, immutable"}
        return Response(body, media_type=f"image/{ref['encoding']}", headers=headers)

    @app.get(
        "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/tries/{try_number}/result",
        dependencies=_read_xcom,
    )
    def download(
        dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> StreamingResponse:
        store = _store()
        try:
            ref = data.result_ref(store, dag_id, run_id, task_id, map_index, try_number)
            key = store._key_of(Reference.from_json(ref))
        except (data.NotStored, StoreError) as error:
            raise _not_found(error) from None
        suffix = f"-{map_index}" if map_index >= 0 else ""
        name = f"{task_id}{suffix}-try{try_number}.{ref['encoding']}"
        headers = {
            **_HEADERS,
            "Content-Length": str(ref["size"]),
            "Content-Disposition": f'attachment; filename="{_safe(name)}"',
            "X-Flowtask-SHA256": ref["sha256"],
        }
        return StreamingResponse(
            _stream(store, key), media_type="application/octet-stream", headers=headers
        )

    @app.get("/dags/{dag_id}/runs/{run_id}", dependencies=_read_run)
    def run_tab(request: Request, dag_id: str, run_id: str, user: GetUserDep) -> HTMLResponse:
        try:
            view = data.run_view(_store(), dag_id, run_id)
        except data.NotStored as error:
            return _render("missing.html", what=f"run {run_id}", reason=str(error))
        return _render("run.html", view=view, can_edit=_can_edit(dag_id, user))

    @app.post("/dags/{dag_id}/runs/{run_id}/tags", dependencies=_edit_run)
    def edit_tags(
        dag_id: str,
        run_id: str,
        user: GetUserDep,
        add: Annotated[list[str], Body()] = [],  # noqa: B006 - FastAPI copies defaults
        remove: Annotated[list[str], Body()] = [],  # noqa: B006
    ) -> dict[str, Any]:
        """Add and remove tags as ``flowtask tag`` does (a JSON body: a form cannot post it
        from another site)."""
        from provider.store.index import record_tags

        store = _store()
        try:
            run = data.find_run(store, dag_id, run_id)
            original = sorted(set(remove) & set(run.system_tags))
            if original:
                raise ValueError(
                    f"tags {original} are the run's original tags (from its trigger) and stay"
                )
            record_tags(store, dag_id, run_id, add=add, remove=remove, by=user.get_name())
            run = data.find_run(store, dag_id, run_id)
        except data.NotStored as error:
            raise _not_found(error) from None
        except ValueError as error:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
        return {"tags": list(run.tags), "user_tags": list(run.user_tags)}

    @app.get("/dags/{dag_id}", dependencies=_read_run)
    def dag_tab(
        dag_id: str,
        namespace: str | None = None,
        tag: Annotated[list[str] | None, Query()] = None,
    ) -> HTMLResponse:
        view = data.dag_view(_store(), dag_id, namespace or None, tag or [])
        return _render("dag.html", view=view)

    return app


def _can_edit(dag_id: str, user: Any) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.models.dag import DagModel

    return bool(
        get_auth_manager().is_authorized_dag(
            method="PUT",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)),
            user=user,
        )
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)[:200]


def _stream(store: Any, key: str) -> Iterator[bytes]:
    """The blob's bytes in pieces, read by a thread: memory stays at a few pieces."""
    pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)

    def read() -> None:
        try:
            store.backend.read_chunks(key, lambda chunk: pieces.put(bytes(chunk)))
            pieces.put(None)
        except BaseException as error:
            pieces.put(error)

    threading.Thread(target=read, name="flowtask-download", daemon=True).start()
    while True:
        piece = pieces.get()
        if piece is None:
            return
        if isinstance(piece, BaseException):
            raise piece
        yield piece
