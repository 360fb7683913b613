"""The address policy of Ordinaut's outbound connections (pipelines/netpolicy.py): a tool server
(HTTP) or an orchestrator.http target whose host is, or resolves to, a loopback, private,
link-local, unspecified, multicast or reserved address (however it is spelled) is refused unless
ORDINAUT_ALLOWED_PRIVATE_NETWORKS holds it: at registration (400 naming url), at refresh (502
tool_server_unreachable, nothing contacted), and at each step call (host_not_allowed, permanent).
The suite allows 127.0.0.0/8 (tests/conftest.py); these tests empty the setting."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ordinaut_site.errors import HostNotAllowed
from pipelines import netpolicy
from pipelines.models import Tool, ToolServer
from pipelines.services import tool_server_clean
from runs.models import StepRun
from tests.support.api_matrix import assert_error
from tests.support.mcp_servers import TOOL_NAMES, shared_http_server
from tests.support.pipelines import run_in_process
from tests.support.servers import loopback_server
from tests.support.tool_servers import register_http, unique_name

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_private(settings: Any) -> Any:
    """The default: no private network allowed."""
    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = []
    return settings


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port on loopback that records whether anything connected (a stand-in for Redis)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> None:
    """Make getaddrinfo answer these names with these addresses (other names as before)."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return real(names[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


# --- Unit: address classes and spellings --------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address refused, not a bind
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "not a globally routable"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 carrying 127.0.0.1
    ],
)
def test_every_non_public_address_class_is_refused(no_private: Any, host: str, kind: str) -> None:
    with pytest.raises(HostNotAllowed) as caught:
        netpolicy.checked_addresses(host, 80)
    assert kind in caught.value.message
    assert "ORDINAUT_ALLOWED_PRIVATE_NETWORKS" in caught.value.message
    assert caught.value.code == "host_not_allowed"
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "127.1", "0x7f.1", "0177.0.0.1", "127.0.0.1.", "[::ffff:127.0.0.1]"]
)
def test_numeric_spellings_of_loopback_are_read_as_loopback(no_private: Any, host: str) -> None:
    assert netpolicy.literal_address(host) in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::ffff:7f00:1"))
    with pytest.raises(HostNotAllowed, match="loopback"):
        netpolicy.checked_addresses(host, 80)


def test_a_name_is_judged_by_every_address_it_resolves_to(no_private: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HostNotAllowed, match=r"localhost resolves to 127\.0\.0\.1, which is a loopback address"):
        netpolicy.checked_addresses("localhost", 80)
    real = socket.getaddrinfo

    def two(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "mixed.example.com":
            return real("8.8.8.8", port, *args, **kwargs) + real("10.0.0.7", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two)
    with pytest.raises(HostNotAllowed, match=r"10\.0\.0\.7, which is a private address"):
        netpolicy.checked_addresses("mixed.example.com", 443)


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(no_private: Any, host: str) -> None:
    assert netpolicy.checked_addresses(host, 443) == [netpolicy.literal_address(host)]


def test_allowlisted_networks_pass_and_only_they(settings: Any) -> None:
    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]
    for host in ("10.9.8.7", "127.0.0.1", "2130706433", "::ffff:127.0.0.1", "fd00::5", "localhost"):
        assert netpolicy.checked_addresses(host, 80)
    for host in ("127.0.0.2", "192.168.0.1", "169.254.169.254", "::1"):
        with pytest.raises(HostNotAllowed):
            netpolicy.checked_addresses(host, 80)


def test_a_bad_network_in_the_setting_is_a_configuration_error(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = ["10.0.0.0/33"]
    with pytest.raises(ImproperlyConfigured, match="ORDINAUT_ALLOWED_PRIVATE_NETWORKS"):
        netpolicy.checked_addresses("8.8.8.8", 80)


def test_the_guarded_backend_checks_at_connect_and_connects_to_nothing_refused(
    no_private: Any, listener: socket.socket
) -> None:
    """Whatever was checked before, the connect itself resolves and checks again (DNS rebinding)."""
    port = listener.getsockname()[1]
    with pytest.raises(HostNotAllowed):
        netpolicy.GuardedBackend().connect_tcp("localhost", port)
    assert not connected(listener)


# --- Registration ----------------------------------------------------------------------------------


@pytest.fixture
def admin(make_agent: Any) -> Any:
    return make_agent(admin=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://2130706433:6379/",
        "http://0x7f.1:5432/",
        "http://[::ffff:127.0.0.1]:6379/",
        "http://localhost:8000/mcp",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_registering_a_server_at_a_private_address_is_a_400_naming_url(no_private: Any, admin: Any, url: str) -> None:
    response = admin.client.post("/tool-servers", {"name": unique_name(), "url": url}, format="json")

    assert_error(response, 400, "validation_error")
    error = response.json()["error"]
    assert list(error["fields"]) == ["url"]
    assert "ORDINAUT_ALLOWED_PRIVATE_NETWORKS" in error["fields"]["url"][0]
    assert not ToolServer.objects.exists()


def test_a_name_that_does_not_resolve_yet_may_be_registered(no_private: Any) -> None:
    fields = tool_server_clean(name="later", url="https://mcp.example.invalid/mcp")
    assert fields.url == "https://mcp.example.invalid/mcp"


def test_the_admin_form_shows_the_refusal(no_private: Any) -> None:
    user = User.objects.create_superuser("operator", "op@example.com", "pw-not-used")
    operator = Client()
    operator.force_login(user)
    data = {
        "name": unique_name(),
        "transport": "streamable_http",
        "url": "http://127.0.0.1:6379/",
        "command": "",
        "args": "[]",
        "headers_from_env": "{}",
        "env_from_env": "{}",
        "timeout_seconds": "10",
        "enabled": "on",
    }
    response = operator.post("/admin/pipelines/toolserver/add/", data)
    assert response.status_code == 200
    assert "127.0.0.1 is a loopback address" in response.content.decode()
    assert not ToolServer.objects.exists()


# --- Refresh and steps: resolved again at each connection -----------------------------------------


def test_a_refresh_of_a_server_now_at_a_private_address_is_refused_and_contacts_nothing(
    settings: Any, make_agent: Any, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    server = register_http(f"http://127.0.0.1:{port}/", refresh=False)  # allowed when registered
    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = []
    writer = make_agent(scopes=["tools:read", "tools:write"])

    response = writer.client.post(f"/tool-servers/{server.name}/refresh")

    assert_error(response, 502, "tool_server_unreachable")
    message = response.json()["error"]["message"]
    assert "127.0.0.1 is a loopback address" in message
    assert "ORDINAUT_ALLOWED_PRIVATE_NETWORKS" in message
    assert "loopback" in ToolServer.objects.get(pk=server.pk).last_error
    assert not connected(listener)


def test_a_name_rebound_to_a_private_address_after_registration_is_refused_at_refresh(
    no_private: Any, make_agent: Any, monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    resolving(monkeypatch, {"tools.example.com": "8.8.8.8"})
    server = register_http(f"http://tools.example.com:{port}/mcp", refresh=False)
    resolving(monkeypatch, {"tools.example.com": "127.0.0.1"})  # the record changes afterwards
    writer = make_agent(scopes=["tools:read", "tools:write"])

    response = writer.client.post(f"/tool-servers/{server.name}/refresh")

    assert_error(response, 502, "tool_server_unreachable")
    assert "tools.example.com resolves to 127.0.0.1" in response.json()["error"]["message"]
    assert not connected(listener)


def test_a_step_calling_a_server_now_at_a_private_address_fails_host_not_allowed(settings: Any, agent: Any) -> None:
    server = register_http(shared_http_server().url)  # allowed and refreshed
    assert Tool.objects.filter(server=server).count() == len(TOOL_NAMES)
    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = []
    payload = {"pipeline": [{"id": "w", "uses": f"{server.name}.forecast", "with": {"city": "Chisinau"}}]}

    run = run_in_process(agent.agent, payload)

    assert run.status == "failed"
    step = StepRun.objects.get(run=run)
    assert (step.error or {})["code"] == "host_not_allowed"
    assert step.attempts == 1  # permanent
    assert server.name in (step.error or {})["message"]


# --- orchestrator.http --------------------------------------------------------------------------------


def test_http_to_an_allowed_name_resolving_to_loopback_is_refused(settings: Any, agent: Any) -> None:
    with loopback_server() as target:
        target.script("/x")
        settings.ORDINAUT_HTTP_ALLOWED_HOSTS = ["localhost"]
        settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = []
        url = f"http://localhost:{target.port}/x"
        payload = {"pipeline": [{"id": "h", "uses": "orchestrator.http", "with": {"url": url}}]}

        run = run_in_process(agent.agent, payload)

        assert run.status == "failed"
        step = StepRun.objects.get(run=run)
        assert (step.error or {})["code"] == "host_not_allowed"
        assert step.attempts == 1
        assert "localhost resolves to 127.0.0.1, which is a loopback address" in (step.error or {})["message"]
        assert target.count("/x") == 0

        settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8"]  # the operator allows it
        run = run_in_process(agent.agent, payload)
        assert run.status == "succeeded", run.error
        assert target.count("/x") == 1


def test_http_to_an_allowed_name_resolving_to_the_metadata_address_is_refused(
    settings: Any, agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolving(monkeypatch, {"api.example.com": "169.254.169.254"})
    settings.ORDINAUT_HTTP_ALLOWED_HOSTS = ["api.example.com"]
    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.0/8"]
    payload = {"pipeline": [{"id": "h", "uses": "orchestrator.http", "with": {"url": "http://api.example.com/"}}]}

    run = run_in_process(agent.agent, payload)

    step = StepRun.objects.get(run=run)
    assert (run.status, (step.error or {})["code"]) == ("failed", "host_not_allowed")
    assert "cloud metadata" in (step.error or {})["message"]


def test_http_to_an_allowed_numeric_spelling_of_loopback_is_refused(settings: Any, agent: Any) -> None:
    settings.ORDINAUT_HTTP_ALLOWED_HOSTS = ["*"]
    settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS = []
    for url in ("http://2130706433:6379/", "http://0x7f.1:6379/", "http://[::ffff:127.0.0.1]:6379/"):
        payload = {"pipeline": [{"id": "h", "uses": "orchestrator.http", "with": {"url": url}}]}
        run = run_in_process(agent.agent, payload)
        step = StepRun.objects.get(run=run)
        assert (step.error or {})["code"] == "host_not_allowed", (url, step.error)
