"""The Prefect API plumbing: the command's own server, API clients sharing one verified TLS context per CA file,
and task runs that serialise and hydrate the settings once, not once per task."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import SettingsContext, serialize_context
from prefect.settings import (
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_API_URL,
    PREFECT_TASKS_DEFAULT_RETRIES,
    get_current_settings,
    temporary_settings,
)

from diffmix import prefect_server
from diffmix.prefect_server import prefect_api, reuse_serialized_settings, reuse_task_settings, share_api_tls_context

URL = "http://127.0.0.1:9/api"  # never contacted: building a client opens no connection


def tls_context(client: SyncPrefectClient) -> ssl.SSLContext:
    return client._client._transport._pool._ssl_context  # type: ignore[attr-defined]


def test_api_clients_share_one_verified_context() -> None:
    share_api_tls_context()
    share_api_tls_context()  # idempotent
    first, second = SyncPrefectClient(URL), SyncPrefectClient(URL)
    assert tls_context(first) is tls_context(second)
    assert tls_context(first).verify_mode == ssl.CERT_REQUIRED and tls_context(first).check_hostname
    assert ssl.create_default_context() is not ssl.create_default_context()  # the ssl module itself is untouched


def test_the_insecure_context_is_never_shared() -> None:
    """Prefect switches verification off on the context it has just created: each client gets its own."""
    share_api_tls_context()
    with temporary_settings(updates={PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        first, second = SyncPrefectClient(URL), SyncPrefectClient(URL)
    assert tls_context(first) is not tls_context(second)
    assert tls_context(first).verify_mode == ssl.CERT_NONE
    assert tls_context(SyncPrefectClient(URL)).verify_mode == ssl.CERT_REQUIRED


def test_a_prefect_without_the_ssl_call_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.client.orchestration as orchestration

    monkeypatch.delattr(orchestration, "ssl")
    share_api_tls_context()
    assert not hasattr(orchestration, "ssl")


class _StandInServer:
    """What `prefect_api` uses of Prefect's temporary server, without starting one."""

    api_url = URL

    def start(self, timeout: int) -> None:
        self.timeout = timeout

    def stop(self) -> None:
        self.stopped = True


def test_flow_runs_on_the_commands_own_server_send_no_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _StandInServer()
    monkeypatch.setattr(prefect_server, "_local_server", lambda: server)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    default = get_current_settings().flows.heartbeat_frequency
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with prefect_api() as url:
            assert url == URL and get_current_settings().flows.heartbeat_frequency is None
        assert server.stopped and get_current_settings().flows.heartbeat_frequency == default
    assert default is not None
    with temporary_settings(updates={PREFECT_API_URL: URL}):  # a configured server: its heartbeats stay
        with prefect_api() as url:
            assert url == URL and get_current_settings().flows.heartbeat_frequency == default
        monkeypatch.setenv("DIFFMIX_FLOW_HEARTBEATS", "0")  # unless told not to (the benchmarks)
        with prefect_api() as url:
            assert url == URL and get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency == default


def test_the_commands_server_runs_in_its_own_group() -> None:
    """A Ctrl-C in the terminal reaches diffmix, not the server."""
    probe = "import os; print(os.getpgid(0) == os.getpid())"
    child = subprocess.run([sys.executable, "-c", probe], preexec_fn=prefect_server._detached(None), capture_output=True, text=True, check=True)
    assert child.stdout.split() == ["True"]


def test_the_commands_own_server_is_lowered_once_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _StandInServer()
    server.server_process = types.SimpleNamespace(pid=4321)  # type: ignore[attr-defined]
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(prefect_server, "_local_server", lambda: server)
    monkeypatch.setattr(prefect_server, "_first_request", lambda: calls.append(("first request", PREFECT_API_URL.value())))
    monkeypatch.setattr(prefect_server, "lower_priority", lambda pid: calls.append(("lowered", pid)))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with prefect_api():
            assert calls == [("first request", URL), ("lowered", 4321)]
        calls.clear()
        monkeypatch.setenv("DIFFMIX_SERVER_NICE", "0")
        with prefect_api():
            assert calls == []


_THREADED_SERVER = """
import sys, threading
def new_thread():
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    print("up", flush=True)
new_thread()
for line in sys.stdin:
    new_thread()
"""


def test_the_running_server_is_lowered_thread_by_thread() -> None:
    """Linux's niceness is per thread: each thread already running is lowered, and the threads it makes later follow."""
    linux = sys.platform.startswith("linux")
    server = subprocess.Popen([sys.executable, "-c", _THREADED_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def threads() -> set[int]:
        return {int(t) for t in os.listdir(f"/proc/{server.pid}/task")} if linux else {server.pid}

    try:
        assert server.stdin is not None and server.stdout is not None and server.stdout.readline() == "up\n"
        running = threads()
        assert len(running) >= 2 or not linux
        lowered = min(19, os.getpriority(os.PRIO_PROCESS, server.pid) + prefect_server.SERVER_NICENESS)
        prefect_server.lower_priority(server.pid)
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in running} == {lowered}
        server.stdin.write("one more thread\n")
        server.stdin.flush()
        assert server.stdout.readline() == "up\n"
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in threads() - running} == ({lowered} if linux else set())
    finally:
        server.kill()
        server.wait()


_ORPHANED_SERVER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the stand-in server, orphaned, becomes this process's child
diffmix = (
    "import subprocess, sys; from diffmix import prefect_server as p; "
    "server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=p._detached(p._parent_death_signal())); "
    "print(server.pid)"
)
pid = int(subprocess.run([sys.executable, "-c", diffmix], capture_output=True, text=True, check=True).stdout)
_, status = os.waitpid(pid, 0)
print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_commands_server_ends_with_its_parent() -> None:
    """A SIGKILLed diffmix cannot stop its server: the kernel sends the server SIGTERM when diffmix ends."""
    reaper = subprocess.run([sys.executable, "-c", _ORPHANED_SERVER], capture_output=True, text=True, check=True, timeout=30)
    assert reaper.stdout.strip() == "15"


def test_the_commands_server_batches_task_run_events_under_the_users_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api.server import SubprocessASGIServer

    for name in prefect_server.LOCAL_SERVER_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    server = prefect_server._local_server()  # before the stand-in Popen: finding libc's prctl may run ldconfig
    assert type(server) is not SubprocessASGIServer  # ours, even where a test harness made Prefect's own for the same port
    launched: list[dict[str, str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, env, **kwargs: launched.append(env))
    server._run_uvicorn_command()
    assert launched[0]["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "200"
    assert float(launched[0]["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"]) == prefect_server.RECORDER_FLUSH_SECONDS
    for service in ("TRIGGERS", "EVENT_PERSISTER"):
        assert launched[0][f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] == "false"
    assert launched[0]["PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "1")  # the user's own setting wins
    server._run_uvicorn_command()
    assert launched[1]["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "1"
    assert launched[1]["PREFECT__SERVER_EPHEMERAL"] == "1"  # Prefect's own settings for it are still passed


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("environment", "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"),
        ("profile", "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"),
        ("prefect.toml", "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED"),
        ("profile", "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"),
    ],
)
def test_the_commands_server_leaves_alone_what_the_user_set(where: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default would reach the server as an environment variable, which Prefect takes over a
    profile or a `prefect.toml`: it is left out wherever the user set that setting."""
    import prefect.settings

    for default in prefect_server.LOCAL_SERVER_DEFAULTS:
        monkeypatch.delenv(default, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    value = "5.0" if name.endswith("INTERVAL") else "true"
    if where == "environment":
        monkeypatch.setenv(name, value)
    elif where == "profile":
        (tmp_path / "profiles.toml").write_text(f'active = "mine"\n[profiles.mine]\n{name} = "{value}"\n')
    else:
        *table, field = getattr(prefect.settings, name).accessor.split(".")
        (tmp_path / "prefect.toml").write_text(f"[{'.'.join(table)}]\n{field} = {value}\n")
    monkeypatch.setattr(prefect.settings, "get_current_settings", prefect.settings.Settings)  # read afresh, as the server will
    left = prefect_server.local_server_settings()
    assert name not in left
    assert set(left) == set(prefect_server.LOCAL_SERVER_DEFAULTS) - {name}


_FLOW_ON_ITS_OWN_SERVER = """
from prefect import flow, task
from diffmix.prefect_server import prefect_api

@task(task_run_name="step {i}")
def step(i: int) -> int:
    return i

@flow
def steps() -> list[int]:
    return [f.result() for f in [step.submit(i) for i in range(12)]]

with prefect_api() as url:
    assert "127.0.0.1" in url
    assert steps() == list(range(12))
"""


def test_every_task_run_is_recorded_by_the_time_the_commands_server_stops(tmp_path: Path) -> None:
    """Batched task-run events (`LOCAL_SERVER_DEFAULTS`) are all written when the server stops, not lost with it
    (here the periodic writes are a minute apart: only the stop can write them)."""
    import sqlite3

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "60"}
    subprocess.run([sys.executable, "-c", _FLOW_ON_ITS_OWN_SERVER], env=env, check=True, timeout=300)
    with sqlite3.connect(tmp_path / "prefect.db") as db:
        runs = db.execute("SELECT name, state_type FROM task_run").fetchall()
    assert sorted(runs) == sorted((f"step {i}", "COMPLETED") for i in range(12))


def hydrated_settings(serialized: dict[str, object]) -> SettingsContext:
    """The settings context a task run enters for a serialised context, as the task engine hydrates it."""
    import prefect.task_engine as task_engine

    with task_engine.hydrated_context(serialized):
        context = SettingsContext.get()
        assert context is not None
        return context


def test_task_runs_build_the_same_settings_once() -> None:
    reuse_task_settings()
    reuse_task_settings()  # idempotent: one wrapper
    sent = serialize_context()
    first, second = hydrated_settings(sent), hydrated_settings(serialize_context())
    assert first.settings is second.settings  # built once
    assert first.settings == get_current_settings() and first.profile == SettingsContext.get().profile  # type: ignore[union-attr]
    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 7}):
        changed = hydrated_settings(serialize_context())
    assert changed.settings is not first.settings and changed.settings.tasks.default_retries == 7
    assert hydrated_settings(sent).settings.tasks.default_retries == get_current_settings().tasks.default_retries


def test_a_context_without_settings_hydrates_as_before() -> None:
    import prefect.task_engine as task_engine

    reuse_task_settings()
    before = SettingsContext.get()
    with task_engine.hydrated_context({}):
        assert SettingsContext.get() is before


def test_settings_are_serialised_once_per_settings_object() -> None:
    reuse_serialized_settings()
    reuse_serialized_settings()  # idempotent
    context = SettingsContext.get()
    assert context is not None
    first, second = context.serialize(), context.serialize()
    assert first == second and first is not second  # a copy each time: a caller may change its own
    first["settings"].clear()
    assert context.serialize() == second
    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 5}):
        assert SettingsContext.get().serialize()["settings"]["tasks"]["default_retries"] == 5  # type: ignore[union-attr]
    assert context.serialize() == second
    assert context.serialize(include_secrets=False) == type(context).serialize.__wrapped__(context, include_secrets=False)  # type: ignore[attr-defined]


def run_with_a_pause(function: Callable[[], object], code: object, line: str, meanwhile: Callable[[], object]) -> object:
    """`function()` on a thread that stops at the first line of `code` containing `line` until
    `meanwhile()` has run on another: the interleaving a race would need, made certain."""
    source = Path(code.co_filename).read_text().splitlines()  # type: ignore[attr-defined]
    paused, resumed = threading.Event(), threading.Event()

    def tracer(frame: Any, event: str, arg: object) -> Any:
        if frame.f_code is not code:
            return None

        def per_line(frame: Any, event: str, arg: object) -> Any:
            if event == "line" and line in source[frame.f_lineno - 1] and not paused.is_set():
                paused.set()
                resumed.wait(10)
            return per_line

        return per_line

    result: dict[str, object] = {}

    def traced() -> None:
        sys.settrace(tracer)
        try:
            result["value"] = function()
        except Exception as exc:  # reported to the test below
            result["value"] = exc
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=traced)
    thread.start()
    assert paused.wait(10)
    meanwhile()
    resumed.set()
    thread.join(10)
    return result["value"]


def test_a_serialisation_racing_another_context_keeps_its_own_settings() -> None:
    reuse_serialized_settings()
    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 1}):
        mine = SettingsContext.get()
    with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: 2}):
        other = SettingsContext.get()
    assert mine is not None and other is not None
    dump = run_with_a_pause(mine.serialize, type(mine).serialize.__code__, "return copy.deepcopy", other.serialize)
    assert dump["settings"]["tasks"]["default_retries"] == 1  # type: ignore[index]


def test_a_hydration_racing_a_full_cache_keeps_its_own_settings() -> None:
    import prefect.task_engine as task_engine

    reuse_task_settings()

    def sent(retries: int) -> dict[str, object]:
        with temporary_settings(updates={PREFECT_TASKS_DEFAULT_RETRIES: retries}):
            return {"settings_context": serialize_context()["settings_context"]}

    mine = sent(41)

    def many_others() -> None:  # more distinct settings than the cache keeps: it is emptied at least once
        for retries in range(100, 120):
            hydrated_settings(sent(retries))

    hydrated = run_with_a_pause(lambda: hydrated_settings(mine), task_engine.hydrated_context.__code__, "serialized_context = {**serialized_context", many_others)
    assert isinstance(hydrated, SettingsContext) and hydrated.settings.tasks.default_retries == 41
