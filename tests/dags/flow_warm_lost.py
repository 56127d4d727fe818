"""A flow task whose warm runtime dies under it: the try's error names the warm runtime."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from airflow.sdk import dag

from provider import flow_task


@dag(schedule=None, catchup=False)
def flow_warm_lost():
    @flow_task
    def first() -> None:
        """Ends once this worker's warm runtime answers: the next flow task is a fork of it."""
        from provider.runtime.warm import socket_address

        folder = Path(os.environ["AIRFLOW_HOME"], "flowtask", "runtimes")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for path in folder.glob("*.sock"):
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        if probe.connect_ex(socket_address(fd, path.name)) == 0:
                            return
            finally:
                os.close(fd)
            time.sleep(0.05)
        raise TimeoutError("no warm runtime answered")

    @flow_task
    def orphaned() -> None:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as cmdline:
            if b"provider.runtime serve" not in cmdline.read().replace(b"\0", b" "):
                raise RuntimeError("the runtime did not start warm")
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(600)

    first() >> orphaned()


flow_warm_lost()
