"""A DAG's runs in the artifact store, found by namespace and tag through the run index."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from provider.client.errors import UnknownDag, UnknownRun
from provider.client.location import STORE_ENV, configured_store, given_store
from provider.client.namespaces import CURRENT, _Default, resolve
from provider.client.run import Run
from provider.store import ArtifactStore, MissingArtifact, StoreError, open_store
from provider.store.errors import BadManifest
from provider.store.index import RunRecord, has_runs, indexed_dags, read_runs
from provider.store.keys import run_manifest_key

__all__ = ["STORE_ENV", "Flow", "open_client_store"]


def open_client_store(store: str | ArtifactStore | None) -> ArtifactStore:
    """``store`` as a store: a URI (``file:///path``, a path, relative ones from the working
    directory, ``s3://bucket/prefix``), a store, or None for the store the provider uses
    (``$AIRFLOW__FLOW_TASK__ARTIFACT_STORE``, else ``[flow_task] artifact_store`` in
    ``airflow.cfg``, else ``$AIRFLOW_HOME/flow_artifacts``). S3 uses the ordinary AWS credential
    chain and ``AWS_ENDPOINT_URL_S3``; boto3 is imported only then."""
    if isinstance(store, ArtifactStore):
        return store
    if store:
        return open_store(given_store(store), must_exist=True)
    uri, source = configured_store()
    try:
        return open_store(uri, must_exist=True)
    except StoreError as exc:
        raise StoreError(f"{exc} (from {source}; pass --store or store=URI)") from None


class Flow:
    """The runs of one DAG: ``Flow("train_models").latest_successful_run["fit"].data``."""

    def __init__(self, dag_id: str, store: str | ArtifactStore | None = None) -> None:
        self.dag_id = dag_id
        self.store = open_client_store(store)
        if not has_runs(self.store, dag_id):
            known = ", ".join(indexed_dags(self.store)) or "none"
            raise UnknownDag(
                f"no runs of DAG {dag_id!r} in {self.store.root_uri}; DAGs with runs: {known}"
            )

    def _records(self) -> dict[str, RunRecord]:
        return read_runs(self.store, self.dag_id)

    def runs(
        self, tags: Iterable[str] = (), namespace: str | _Default | None = CURRENT
    ) -> Iterator[Run]:
        """Runs newest first, that carry every one of ``tags``, in ``namespace`` (default: the
        current one, ``user:<login>`` unless ``provider.client.namespace()`` set another;
        ``None``: every namespace)."""
        if isinstance(tags, str):
            raise TypeError(f"tags={tags!r}: pass a list of tags, e.g. [{tags!r}]")
        wanted, name = set(tags), resolve(namespace)
        records = sorted(
            self._records().values(), key=lambda r: (r.created_at, r.run_id), reverse=True
        )
        for record in records:
            if (name is None or record.namespace == name) and wanted <= set(record.tags):
                yield Run(self.store, self.dag_id, record)

    def __iter__(self) -> Iterator[Run]:
        return self.runs()

    def __getitem__(self, run_id: str) -> Run:
        """The run with this id, whatever its namespace."""
        record = self._records().get(run_id) or self._unindexed(run_id)
        if record is None:
            latest = [r.run_id for r in self.runs(namespace=None)][:3]
            hint = f"; latest runs: {', '.join(latest)}" if latest else ""
            raise UnknownRun(f"DAG {self.dag_id!r} has no run {run_id!r} in the store{hint}")
        return Run(self.store, self.dag_id, record)

    def _unindexed(self, run_id: str) -> RunRecord | None:
        """A run stored without an index entry (its ``run.json`` only)."""
        key = run_manifest_key(self.dag_id, run_id)
        found = self.store.backend.stat(key)
        if found is None:
            return None
        try:
            manifest = self.store.read_manifest(key)
        except (MissingArtifact, BadManifest):
            return None
        return RunRecord(
            run_id=run_id,
            namespace=str(manifest.get("namespace", "")),
            system_tags=tuple(t for t in manifest.get("tags", []) if isinstance(t, str)),
            user_tags=(),
            created_at=found.modified,
            reports_end=False,
        )

    @property
    def latest_run(self) -> Run | None:
        """The newest run in the current namespace, or None."""
        return next(self.runs(), None)

    @property
    def latest_successful_run(self) -> Run | None:
        """The newest run in the current namespace whose success is recorded, or None."""
        return next((run for run in self.runs() if run.successful), None)

    def __repr__(self) -> str:
        return f"Flow({self.dag_id!r})"
