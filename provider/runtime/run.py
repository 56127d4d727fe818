"""Run a payload: fetch it, resolve its argument references, call it, store the result.

Nothing here imports Airflow: this is what runs in a pod, a Batch container or a local
subprocess, with only Python, cloudpickle and (for S3) boto3 in the image.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from provider.runtime import cards
from provider.runtime.context import explain_airflow_access, flow_context_of
from provider.runtime.failure import Failure
from provider.runtime.payload import Payload
from provider.runtime.preview import preview
from provider.runtime.usage import GpuSampler, cpu_seconds, usage
from provider.runtime.views import try_views
from provider.store import ArtifactStore, Reference, is_reference


class PythonVersionMismatch(RuntimeError):
    """The worker pickled the payload with a different Python than the one running it."""


def check_python(expected: str) -> None:
    """Fail before unpickling anything when major.minor differ from the worker's."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if expected and expected != running:
        raise PythonVersionMismatch(
            f"the task was packaged with Python {expected} on the Airflow worker, but this "
            f"container runs Python {running}; use an image with Python {expected}"
        )


def resolve_references(value: Any, store: ArtifactStore) -> Any:
    """Replace artifact references by their values, also inside lists, tuples and dicts.

    A container is rebuilt as exactly its own type (a NamedTuple stays one) and only when a
    reference was found in it; anything else, and every container without references, is
    handed over as it is. The references load ``reads_in_flight`` at a time (a join over a
    mapped task's 1,000 results: 1,000 reads), each into its own value.
    """
    found: list[Any] = []
    _collect(value, found)
    if not found:
        return value
    loaded = iter(store.get_many(found))
    return _substitute(value, loaded)


def _collect(value: Any, found: list[Any]) -> None:
    if is_reference(value):
        found.append(value)
        return
    kind = type(value)
    if kind is dict:
        for item in value.values():
            _collect(item, found)
    elif kind is list or kind is tuple or _is_namedtuple(value):
        for item in value:
            _collect(item, found)


def _substitute(value: Any, loaded: Iterator[Any]) -> Any:
    """``value`` with each reference replaced by the next loaded value, in ``_collect``'s order."""
    if is_reference(value):
        return next(loaded)
    kind = type(value)
    if kind is dict:
        resolved = {key: _substitute(item, loaded) for key, item in value.items()}
        return value if all(resolved[k] is v for k, v in value.items()) else resolved
    if kind is list or kind is tuple or _is_namedtuple(value):
        items = [_substitute(item, loaded) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if kind is list:
            return items
        return kind._make(items) if kind is not tuple else tuple(items)
    return value


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_make")


def store_result(result: Any, layout: str, store: ArtifactStore) -> Any:
    """Store the result as the payload's layout asks; return the reference JSON to report."""
    if layout == "items":  # Airflow maps downstream tasks over a list's items or a dict's pairs
        if isinstance(result, Mapping) and all(isinstance(k, str) for k in result):
            return {key: store.put(item).to_json() for key, item in result.items()}
        if not isinstance(result, (list, tuple)):
            raise TypeError(
                "a task whose downstream tasks are mapped over its result must return a list, "
                f"a tuple or a dict with string keys, got {type(result).__name__}"
            )
        return [store.put(item).to_json() for item in result]
    if layout == "keys":
        if not isinstance(result, Mapping) or not all(isinstance(k, str) for k in result):
            raise TypeError(
                "multiple_outputs=True needs a dict with string keys as the return value, "
                f"got {type(result).__name__}"
            )
        return {key: _with_preview(store, item) for key, item in result.items()}
    return _with_preview(store, result)


def _with_preview(store: ArtifactStore | Any, value: Any) -> dict[str, Any]:
    """The value's reference, with a short preview for the task log and the XCom view."""
    ref = {**store.put(value).to_json(), "preview": preview(value)}
    if isinstance(value, (list, tuple, dict)):
        ref["length"] = len(value)  # what .foreach over it needs, without loading it
    return ref


def run_payload(
    store: ArtifactStore,
    payload_ref: Reference | None,
    manifest_key: str,
    start: str = "cold",
    preloaded: Sequence[str] = (),
    channel: Any = None,
) -> int:
    """Run one payload end to end; always write the result manifest. Returns the exit code.

    ``start`` says how the runtime started: "cold" (a new interpreter), "warm" (a fork);
    ``preloaded``, which modules a warm one's server had imported for it. With ``channel`` (a
    socket to the worker, ``provider.runtime.channel``), the payload comes from it and the
    manifest goes back over it (the worker stores it), small results inline."""
    from provider.runtime import channel as channels

    started = time.time()
    inline_max = 0
    sent: bytes | None = None  # the payload, as the store would hold it
    if channel is not None:
        message = channels.receive(channel)
        inline_max, sent = int(message.get("inline_max") or 0), message["payload"]
    deferred = channels.DeferredBlobs(store) if channel is not None else None
    inline = False  # the result travels inline over the channel
    cpu_at_start = cpu_seconds()
    gpu = GpuSampler()
    manifest: dict[str, Any] = {
        "host": os.uname().nodename,
        "pid": os.getpid(),
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "started_at": started,
        "runtime_start": start,
        "preloaded": list(preloaded),
    }
    if "FLOWTASK_BOOTSTRAP_SECONDS" in os.environ:  # set by a container's bootstrap
        manifest["bootstrap_seconds"] = float(os.environ["FLOWTASK_BOOTSTRAP_SECONDS"])
    if os.environ.get("FLOWTASK_ENVIRONMENTS"):  # which archives, from the store or a cache
        manifest["environments"] = json.loads(os.environ["FLOWTASK_ENVIRONMENTS"])
    shown: Any = None  # what the UI previews: the result, or the Failure
    added: list[dict[str, Any]] = []  # the cards the function added
    try:
        if sent is not None:
            from provider.store import codec

            payload: Payload = codec.decode(bytearray(sent))
        else:
            assert payload_ref is not None, "a payload comes by reference or over the channel"
            payload = store.get(payload_ref)
        manifest.update(payload.identity)
        manifest["requested"] = dict(payload.requested)
        args = resolve_references(payload.args, store)
        kwargs = resolve_references(dict(payload.kwargs), store)
        call_started = manifest["function_started_at"] = time.time()
        with flow_context_of(payload.context), gpu, cards.collect() as added:
            result = shown = payload.function(*args, **kwargs)
        manifest["function_seconds"] = round(time.time() - call_started, 6)
        if deferred is not None and payload.layout == "value":
            inline = channels.inline_value(result, inline_max)
        if inline and deferred is not None:  # the worker stores it, the task returns it
            manifest["result"], manifest["result_inline"] = _with_preview(deferred, result), True
        else:
            manifest["result"] = store_result(result, payload.layout, store)
        manifest["status"] = "succeeded"
        code = 0
    except Exception as exc:  # the runtime's whole job is to report any failure
        import traceback

        explain_airflow_access(exc)
        traceback.print_exc()
        failure = shown = Failure.from_exception(exc)
        manifest["status"] = "failed"
        manifest["error"] = {
            "type": failure.type,
            "message": failure.message,
            # Retry(on=...) matches these, so a subclass of a listed type is retried too.
            "types": [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__],
        }
        manifest["failure"] = {**store.put(failure).to_json(), "preview": preview(failure)}
        code = 1
    manifest["finished_at"] = time.time()
    manifest["seconds"] = round(manifest["finished_at"] - started, 6)
    manifest["usage"] = usage(started, cpu_at_start, gpu)
    manifest["peak_rss_mib"] = manifest["usage"]["peak_rss_mib"]
    manifest.update(try_views(deferred or store, shown, added))  # previews and cards for the UI
    if channel is not None and deferred is not None:
        channels.send(channel, channels.outcome_message(manifest, deferred.blobs, shown))
    else:
        store.write_manifest(manifest_key, manifest)
    return code
