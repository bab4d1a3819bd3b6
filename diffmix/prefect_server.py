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
    """Use the configured Prefect API, or run one local server for this process and its workers.

    Flow runs on that server send no heartbeats: they are for a server that outlives the run,
    to mark it crashed, and the flow engine waits up to a second for its heartbeat thread at
    the end of every flow run (the thread sleeps in 1 s steps: 0-1 s, 0.57 s of a 50-row build).
    On a configured server they are sent unless `DIFFMIX_FLOW_HEARTBEATS=0` (the benchmarks set
    it: the wait is noise of up to a second in every timed run). The local server runs at a
    lower CPU priority once it answers (`lower_priority`; `DIFFMIX_SERVER_NICE=0` keeps it).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    share_api_tls_context()
    reuse_serialized_settings()
    if api_configured():
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}) if os.environ.get("DIFFMIX_FLOW_HEARTBEATS") == "0" else contextlib.nullcontext():
            yield PREFECT_API_URL.value()
        return
    server = _local_server()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by Dask worker processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            process = getattr(server, "server_process", None)  # Prefect's Popen; a Prefect without it keeps its priority
            if process is not None and os.environ.get("DIFFMIX_SERVER_NICE") != "0":
                _first_request()
                lower_priority(process.pid)
            yield server.api_url
    finally:
        _flush_run_logs()  # send buffered run logs while the server is still up
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def api_configured() -> bool:
    """Whether a Prefect API is configured (else `prefect_api` starts a temporary server)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def share_api_tls_context() -> None:
    """Have this process's Prefect API clients share one verified TLS context per CA file.

    Prefect 3.8 builds `ssl.create_default_context(cafile=certifi.where())` for every API
    client it opens, parsing the whole CA bundle (about 40 ms here), and a task run opens two
    or three: most of a task's start on a Dask worker (BENCHMARKS.md, eleventh round). httpx
    supports one SSLContext shared by many clients (Prefect's open pull request #19106 lets
    callers pass one). Only Prefect's client module sees the cached function, and only the
    verified context for a CA file is shared; the insecure one, which Prefect alters after
    creating it, and every other call still get a fresh context. (httpcore sets the same ALPN
    list on it for each TLS connection: one HTTP/2 setting per process.) Idempotent.
    """
    import ssl
    import types

    import prefect.client.orchestration as orchestration

    if getattr(orchestration, "ssl", None) is not ssl:  # done already, or a Prefect that no longer calls ssl there
        return
    create = ssl.create_default_context

    @functools.lru_cache(maxsize=8)
    def verified(cafile: str, version: tuple[int, int]) -> ssl.SSLContext:
        return create(cafile=cafile)

    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> ssl.SSLContext:
        if purpose is ssl.Purpose.SERVER_AUTH and cafile is not None and capath is None and cadata is None:
            stat = os.stat(cafile)  # a CA file replaced on disk gets a new context
            return verified(os.fspath(cafile), (stat.st_mtime_ns, stat.st_size))
        return create(purpose, cafile=cafile, capath=capath, cadata=cadata)

    view = types.ModuleType("ssl")
    view.__dict__.update(vars(ssl))
    view.create_default_context = create_default_context  # type: ignore[attr-defined]
    orchestration.ssl = view  # type: ignore[attr-defined]


def reuse_task_settings() -> None:
    """Have this process's task runs build Prefect's settings once per distinct settings sent.

    Every task run submitted through a task runner carries the flow's settings, serialised,
    and the task engine validates them into a new `Settings` on arrival (`hydrated_context`):
    pydantic-settings reads the environment, dotenv and TOML sources again, about 20 ms per
    task here, more than the rest of a task's start together. Prefect never changes a settings
    object in place (it makes new ones), so the context built for the same serialised settings
    is reused (its `profile` and `settings`, passed as instances, are not validated again).
    Settings that differ in any value get their own. Prefect's own draft of this
    (PrefectHQ/prefect#20853, for its process pool) keyed the cache the same way. Fields the
    flow left unset are read from the worker's own sources once, when its first task run builds
    them: `dask_runner`'s workers live for one flow run; a long-lived cluster that preloads
    `diffmix.flows` keeps them until its workers restart. Thread-safe (a worker may run tasks on
    several threads). Idempotent; a Prefect whose task engine no longer calls `hydrated_context`
    is left alone.
    """
    import hashlib
    import pickle

    import prefect.context as context
    import prefect.task_engine as task_engine

    original = getattr(task_engine, "hydrated_context", None)
    if original is not context.hydrated_context:  # done already, or a Prefect that changed
        return
    built: dict[bytes, Any] = {}

    def hydrated_context(serialized_context: dict[str, Any] | None = None, client: Any = None) -> Any:
        settings = (serialized_context or {}).get("settings_context")
        if settings:
            key = hashlib.sha256(pickle.dumps(settings)).digest()
            hydrated = built.get(key)
            if hydrated is None:
                hydrated = context.SettingsContext(**settings)
                if len(built) >= 16:  # a long-lived worker serving many differently-configured flows
                    built.clear()
                built[key] = hydrated
            serialized_context = {**serialized_context, "settings_context": {"profile": hydrated.profile, "settings": hydrated.settings}}  # type: ignore[dict-item]
        return original(serialized_context, client)

    task_engine.hydrated_context = hydrated_context  # type: ignore[assignment]


def reuse_serialized_settings() -> None:
    """Serialise the current Prefect settings once, not once per task submitted.

    A task runner sends the flow's settings with every task (`serialize_context`): a pydantic
    dump of the whole settings model, about 15 ms of the flow process's CPU per task, taken
    from the cores its workers run on. The last context's dump is kept and handed out again
    (a copy) while the same context holds the same settings object; Prefect replaces settings
    (`temporary_settings` makes new ones), it does not change them in place. Thread-safe (the
    cached entry is read once per call). Idempotent.
    """
    import copy

    from prefect.context import SettingsContext

    original = SettingsContext.serialize
    if hasattr(original, "__wrapped__"):
        return
    last: list[tuple[Any, Any, bool, dict[str, Any]] | None] = [None]  # (the context, its settings, include_secrets, the dump)

    @functools.wraps(original)
    def serialize(self: Any, include_secrets: bool = True) -> dict[str, Any]:
        entry = last[0]
        if entry is None or entry[0] is not self or entry[1] is not self.settings or entry[2] != include_secrets:
            entry = (self, self.settings, include_secrets, original(self, include_secrets=include_secrets))
            last[0] = entry
        return copy.deepcopy(entry[3])

    SettingsContext.serialize = serialize  # type: ignore[method-assign]


SERVER_NICENESS = 10
"""How much lower the temporary server runs, once started, than the command (Unix niceness)."""


def lower_priority(pid: int) -> None:
    """Lower the running server's CPU priority by `SERVER_NICENESS`, so its bookkeeping waits for a free core.

    While a build's workers keep every core busy, the server records the task runs' events
    (0.25 CPU-s during the dev data's partitions on 2 workers) and took that time from them.
    Nothing the workers or the flow wait for is in it (task-run states reach the server as
    events; the flow gets its results from Dask): 2 workers 0.3-0.4 s faster on the dev data,
    1 worker unchanged. The price is paid where other programs keep the cores busy: the
    command's own requests wait longer (a 50-row build beside two CPU-bound programs: 26 s
    against 22 s). `prefect_api` lowers it only after the server has started and answered its
    first request: a server started at nice 10 there took 61 s to answer instead of 13 s, and
    its first request 6 s. `DIFFMIX_SERVER_NICE=0` leaves it alone (BENCHMARKS.md, twenty-fifth
    round). Linux's niceness belongs to each thread, and a new thread takes its creator's:
    every thread there now is lowered, the main one first. A thread that ends meanwhile, or a
    lowering the OS refuses, is left alone.
    """
    try:
        threads = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        threads = []  # no /proc: the priority is the whole process's
    for tid in [pid, *(t for t in threads if t != pid)]:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + SERVER_NICENESS))
        except OSError:
            pass


def _first_request() -> None:
    """The request every command makes first (the API's version), made while the server still runs at full priority."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.api_version()


RECORDER_FLUSH_SECONDS = 1.0
"""How often the temporary server writes the task-run events it has received (`LOCAL_SERVER_DEFAULTS`)."""

RECORDER_WRITTEN_WITHIN_SECONDS = RECORDER_FLUSH_SECONDS + 0.5
"""How long after it reaches the temporary server a task-run event can be read back (a flush and its write)."""

LOCAL_SERVER_DEFAULTS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": str(RECORDER_FLUSH_SECONDS),
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED": "false",
}
"""Settings of the temporary server, where the user's own Prefect settings leave them unset
(`local_server_settings`).

Every event a build sends (three or more per task run) went to four services on that server,
whose CPU is taken from the cores the build's workers run on (BENCHMARKS.md, twenty-sixth and
twenty-seventh rounds):

* Prefect's task-run recorder writes each task-run event in a transaction of its own by
  default: a query, an upsert and a commit, about 10 ms of the server's CPU per event here
  (about 31 ms per task run, 13 ms with batches). It writes them in batches at least every
  `RECORDER_FLUSH_SECONDS` instead, and the rest when the server stops. Task runs reach the
  UI and API up to that much later; nothing in a build waits for them (results come from Dask).
* The event persister (the events feed), the triggers and their actions (automations, which
  also read the database every few seconds), and the event stream to subscribed clients are
  off: a server that stops with its command has no one to show its events to or to act for,
  and they cost about 8 ms of its CPU per task run (0.50-0.61 against 0.73-1.28 CPU-s for a
  build of 50 one-row partitions). Flow runs, task runs, logs and artifacts are written as
  before.

A server the user runs keeps its own settings."""


def local_server_settings() -> dict[str, str]:
    """`LOCAL_SERVER_DEFAULTS` less the settings the user has set, wherever Prefect reads them
    from (environment, `.env`, `prefect.toml`, the active profile): the server would take an
    environment variable over all of those."""
    import prefect.settings

    current = prefect.settings.get_current_settings()

    def set_by_user(name: str) -> bool:
        *parents, field = getattr(prefect.settings, name).accessor.split(".")
        return field in functools.reduce(getattr, parents, current).model_fields_set

    return {name: value for name, value in LOCAL_SERVER_DEFAULTS.items() if not set_by_user(name)}


def _local_server() -> Any:
    """Prefect's temporary server (`SubprocessASGIServer`) with `local_server_settings`, started in
    its own process group and, on Linux, ended with its parent.

    In the terminal's group, a Ctrl-C reached the server too: it died before the flow
    could record its end, and the engine's retries printed a wall of connection errors.
    Now only diffmix gets it, and stops the server on the way out. The parent-death
    signal covers a SIGKILLed diffmix, which cannot stop its server itself.
    """
    import subprocess
    import types

    import prefect.server.api.server as server_module

    detach = _detached(_parent_death_signal())
    defaults = local_server_settings()

    def popen(*args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(*args, env={**defaults, **(os.environ if env is None else env)}, preexec_fn=detach, **kwargs)

    class LocalServer(server_module.SubprocessASGIServer):
        # Prefect hands out one server per port from a registry shared by every subclass: with
        # no port asked for, a server already made in this process (a test harness's) would be
        # handed back instead of this one.
        _instances: dict[int | None, Any] = {}

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            server_module.subprocess = types.SimpleNamespace(Popen=popen)  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                server_module.subprocess = subprocess

    return LocalServer()


def _detached(prctl: Callable[[int, int], int] | None) -> Callable[[], None]:
    """What the server's process runs between fork and exec: system calls only, nothing else."""

    def detach() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM: sent when the thread that started it (the main one) ends

    return detach


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
