"""The Prefect API a command talks to: the configured one (`PREFECT_API_URL`), or a temporary
local server run for the command and its Dask workers, and stopped with it."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

from diffmix.settings import apply_defaults

apply_defaults()  # before Prefect is imported (it is imported where used)


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Use the configured Prefect API, or run one local server for this process and its workers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    server = _local_server()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _flush_run_logs()  # send buffered run logs while the server is still up
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def _local_server() -> Any:
    """Prefect's temporary server (`SubprocessASGIServer`), started in its own process group and,
    on Linux, ended with its parent.

    In the terminal's group, a Ctrl-C reached the server too: it died before the flow
    could record its end, and the engine's retries printed a wall of connection errors.
    Now only diffmix gets it, and stops the server on the way out. The parent-death
    signal covers a SIGKILLed diffmix, which cannot stop its server itself.
    """
    import subprocess
    import types

    import prefect.server.api.server as server_module

    prctl = _parent_death_signal()

    def detach() -> None:  # runs in the child between fork and exec: two system calls, nothing else
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM: sent when the thread that started it (the main one) ends

    class LocalServer(server_module.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            popen = functools.partial(subprocess.Popen, preexec_fn=detach)
            server_module.subprocess = types.SimpleNamespace(Popen=popen)  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                server_module.subprocess = subprocess

    return LocalServer()


def _parent_death_signal() -> Callable[[int, int], int] | None:
    """libc's prctl, looked up before any fork (None off Linux)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _flush_run_logs() -> None:
    import logging

    from prefect.logging.handlers import APILogHandler

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, APILogHandler):
                handler.flush()
