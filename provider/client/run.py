"""One run of a DAG: its namespace, tags and state from the run index; its tasks from the store."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from datetime import datetime, timezone

from provider.client.errors import UnknownTask
from provider.client.task import Task, TaskLayout, scan_run, task_id_of
from provider.store import ArtifactStore
from provider.store.index import RunRecord, check_tags, record_tags
from provider.store.keys import key_part, run_prefix


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


class Run:
    """A run: ``run["task_id"]`` is a ``Task``; iterating yields its tasks.

    ``tags`` are the run's original tags (``system_tags``, from the trigger's ``flow_tags``)
    followed by those added since (``user_tags``).
    """

    def __init__(self, store: ArtifactStore, dag_id: str, record: RunRecord) -> None:
        self._store = store
        self._record = record
        self.dag_id = dag_id
        self.run_id = record.run_id
        self._prefix = run_prefix(dag_id, record.run_id)
        self._tasks: dict[str, tuple[str, TaskLayout]] | None = None

    @property
    def namespace(self) -> str:
        return self._record.namespace

    @property
    def tags(self) -> tuple[str, ...]:
        return self._record.tags

    @property
    def system_tags(self) -> tuple[str, ...]:
        return self._record.system_tags

    @property
    def user_tags(self) -> tuple[str, ...]:
        return self._record.user_tags

    @property
    def created_at(self) -> datetime:
        """When the run's first flow task started (UTC)."""
        created = _utc(self._record.created_at)
        assert created is not None
        return created

    @property
    def finished_at(self) -> datetime | None:
        """When the run's end was recorded, or when its status became known (see ``status``)."""
        if self._record.state is not None:
            return _utc(self._record.finished_at)
        return _utc(self._record.derived_at)

    @property
    def finished(self) -> bool:
        """Whether the run's end is known (``status`` is ``success`` or ``failed``)."""
        return self.status in ("success", "failed")

    @property
    def successful(self) -> bool:
        return self.status == "success"

    @property
    def status(self) -> str:
        """``success`` or ``failed``: the end the ``record_run_state`` DAG callback recorded,
        else what the flow tasks' ends say (``failed`` once one failed with no retry left,
        ``success`` once every flow task of the DAG succeeded). ``running`` until then.
        ``unknown`` for a run recorded before flowtask recorded its tasks' ends."""
        record = self._record
        if record.state is not None:
            return record.state
        if record.derived is not None:
            return record.derived
        known = record.flow_tasks is not None or record.reports_end
        return "running" if known else "unknown"

    def add_tags(self, *tags: str) -> None:
        """Add tags after the fact; concurrent taggers never lose each other's tags."""
        record_tags(self._store, self.dag_id, self.run_id, add=tags, by=_user())
        known = set(self._record.tags)
        self._update(self._record.user_tags + tuple(t for t in check_tags(tags) if t not in known))

    def remove_tags(self, *tags: str) -> None:
        """Remove tags added after the fact; the run's original tags stay."""
        original = [t for t in check_tags(tags) if t in self._record.system_tags]
        if original:
            raise ValueError(
                f"tags {original} are original tags of run {self.run_id!r} (from its trigger) "
                "and stay recorded; only tags added later can be removed"
            )
        record_tags(self._store, self.dag_id, self.run_id, remove=tags, by=_user())
        gone = set(check_tags(tags))
        self._update(tuple(t for t in self._record.user_tags if t not in gone))

    def _update(self, user_tags: tuple[str, ...]) -> None:
        from dataclasses import replace

        self._record = replace(self._record, user_tags=user_tags)

    # -- tasks -------------------------------------------------------------------------------

    def _scan(self) -> dict[str, tuple[str, TaskLayout]]:
        if self._tasks is None:
            layouts = scan_run(self._store, self._prefix)
            self._tasks = {}
            for layout in layouts.values():
                task_id = task_id_of(self._store, self._prefix, layout)
                self._tasks[task_id] = (task_id, layout)
        return self._tasks

    @property
    def task_ids(self) -> list[str]:
        return sorted(self._scan())

    def __getitem__(self, task_id: str) -> Task:
        tasks = self._scan()
        if task_id not in tasks:
            part = key_part(task_id)
            match = [t for t, (_, layout) in tasks.items() if layout.part == part]
            if not match:
                known = ", ".join(sorted(tasks)) or "none"
                raise UnknownTask(
                    f"run {self.run_id!r} of DAG {self.dag_id!r} stored nothing for task "
                    f"{task_id!r}; its tasks: {known}"
                )
            task_id = match[0]
        real_id, layout = tasks[task_id]
        return Task(self._store, self._prefix, real_id, layout)

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and task_id in self._scan()

    def __iter__(self) -> Iterator[Task]:
        for task_id in self.task_ids:
            yield self[task_id]

    def __repr__(self) -> str:
        return f"Run({self.dag_id!r}, {self.run_id!r})"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"
