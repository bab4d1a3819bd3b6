"""The Prefect API plumbing: API clients share one verified TLS context per CA file."""

from __future__ import annotations

import ssl

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

from diffmix.prefect_server import share_api_tls_context

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
