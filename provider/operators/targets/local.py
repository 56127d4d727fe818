"""``compute="local"``: the runtime as a subprocess of the worker, in the worker's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from provider.operators.targets.base import ComputeTarget, Outcome, TaskRun
from provider.store import Reference


class LocalTarget(ComputeTarget):
    name = "local"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._code_path: str | None = None

    def prepare(self, run: TaskRun) -> dict[str, Reference]:
        from provider.operators.targets.code import local_code_package

        # The DAG folder's modules import from the code package, as in a pod or a job.
        ref, path = local_code_package(run)
        self._code_path = str(path)
        return {"code_package": ref}

    def run(self, run: TaskRun, context: Any) -> Outcome:
        from provider import config
        from provider.compute import run_local, runtime_command
        from provider.compute.local import runtime_environment
        from provider.runtime.lifetime import PARENT_PID_ENV

        _warn_unmet_requirements(run)
        secrets = run.spec.environment.secrets
        if secrets:
            run.log.info(
                "secrets %s: local compute reads secret values from the local environment",
                list(secrets),
            )
        env = runtime_environment(
            os.environ,
            {
                **config.runtime_aws_env(),
                **run.spec.environment.env_dict,
                "PYTHONUNBUFFERED": "1",
                PARENT_PID_ENV: str(os.getpid()),
            },
        )
        argv = runtime_command(
            run.store.root_uri,
            run.payload.to_json(),
            run.manifest_key,
            python=sys.executable,
            code_path=self._code_path,
        )
        code = run_local(
            argv,
            env=env,
            log_line=lambda line: run.log.info("%s", line),
            log_error=lambda line: run.log.warning("%s", line),
            on_start=self._started,
        )
        return Outcome(manifest_key=run.manifest_key, exit_code=code)

    def _started(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def kill(self) -> None:
        from provider.compute.local import terminate_group

        if self._process is not None:
            terminate_group(self._process, grace_seconds=3.0)


def _warn_unmet_requirements(run: TaskRun) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for line in run.spec.environment.pip:
        requirement = Requirement(line)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            run.log.warning(
                "local compute runs in the worker's environment: %r is not satisfied "
                "(installed: %s)",
                line,
                installed or "none",
            )
