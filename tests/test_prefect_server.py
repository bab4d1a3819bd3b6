"""The Prefect API plumbing: the command's own server, and API clients sharing one verified TLS context per CA file."""

from __future__ import annotations

import ssl

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_API_URL, get_current_settings, temporary_settings

from diffmix import prefect_server
from diffmix.prefect_server import prefect_api, share_api_tls_context

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
