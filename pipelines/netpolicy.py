"""Which network addresses Ordinaut's own outbound connections may reach (tool servers over HTTP,
orchestrator.http): the host is resolved (every address getaddrinfo gives) and refused when any of
them is loopback, private, link-local (169.254.169.254, cloud metadata, among them), unspecified,
multicast, reserved or otherwise not globally routable, IPv4-mapped, 6to4 and Teredo forms included,
unless it falls in ORDINAUT_ALLOWED_PRIVATE_NETWORKS. Numeric spellings of an IPv4 address
(2130706433, 0x7f000001, 127.1, 0177.0.0.1) are read as inet_aton reads them, so they are caught too.

The guarded network backends (guarded_transport, guarded_async_transport) check again inside each
TCP connect and connect to the very address they checked, so a name that re-resolves elsewhere
after the check (DNS rebinding) is caught as well and no time-of-check/time-of-use window remains.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ordinaut_site.errors import HostNotAllowed

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SETTING = "ORDINAUT_ALLOWED_PRIVATE_NETWORKS"
METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")
# What inet_aton reads as an IPv4 address: one to four parts, each decimal, octal (0...) or hex (0x...).
_NUMERIC_V4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)


def allowed_networks() -> list[Network]:
    """ORDINAUT_ALLOWED_PRIVATE_NETWORKS, read at each check (so a change in tests is seen at once)."""
    networks: list[Network] = []
    for item in settings.ORDINAUT_ALLOWED_PRIVATE_NETWORKS:
        try:
            networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{SETTING}: {item!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None
    return networks


def literal_address(host: str) -> Address | None:
    """The address a host written as a number stands for (any spelling), else None (a name)."""
    text = host.strip().strip("[]").split("%", 1)[0]  # brackets of an IPv6 literal, an IPv6 zone
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
        except OSError:
            return None
    return None


def _embedded(address: Address) -> list[Address]:
    """The forms an address is judged by: an IPv4-mapped address its IPv4 address; another address
    itself and the IPv4 addresses it carries (6to4, Teredo)."""
    found: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d, whatever ::ffff:0:0/96 is
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found += list(address.teredo)
    return found


def _class_of(address: Address) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address == METADATA_ADDRESS:
        return "the cloud metadata address (link-local)"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def address_refusal(address: Address, networks: Iterable[Network] | None = None) -> str | None:
    """Why Ordinaut may not connect to this address ("is a loopback address"), or None when it may:
    a non-public address (or one carrying a non-public IPv4 address) outside the allowed networks."""
    networks = allowed_networks() if networks is None else list(networks)
    forms = _embedded(address)
    if any(form.version == net.version and form in net for form in forms for net in networks):
        return None
    for form in forms:
        reason = _class_of(form)
        if reason:
            return f"is {reason}" if form == address else f"is {reason} ({form})"
    return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address the host stands for: a literal (any spelling) itself, a name what getaddrinfo
    gives. socket.gaierror when a name does not resolve."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    found: list[Address] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def checked_addresses(host: str, port: int) -> list[Address]:
    """The host's addresses, all of them allowed; HostNotAllowed (permanent, host_not_allowed) naming
    the first that is not. socket.gaierror when a name does not resolve."""
    networks = allowed_networks()
    addresses = resolve(host, port)
    for address in addresses:
        reason = address_refusal(address, networks)
        if reason:
            shown = host if str(address) == host else f"{host} resolves to {address}, which"
            raise HostNotAllowed(
                f"{shown} {reason}: Ordinaut does not connect to loopback, private, link-local or other "
                f"non-public addresses outside {SETTING}"
            )
    return addresses


# --- Connecting to the checked address -----------------------------------------------------------


def _connect_error(host: str, exc: OSError) -> httpcore2.ConnectError:
    return httpcore2.ConnectError(f"cannot resolve {host}: {exc}")


def _connectable(host: str, port: int) -> list[Address]:
    """The addresses a connect may try, checked now (at connect time, so DNS rebinding after the
    registration check is caught); a name that does not resolve is httpcore's ConnectError."""
    try:
        return checked_addresses(host, port)
    except socket.gaierror as exc:
        raise _connect_error(host, exc) from None


class GuardedBackend(httpcore2.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses the policy allows, by address."""

    def __init__(self) -> None:
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        error: Exception | None = None
        for address in _connectable(host, port):
            try:
                return self._backend.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore2.ConnectError as exc:
                error = exc
        raise error or httpcore2.ConnectError(f"{host} has no address")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class AsyncGuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's asynchronous backend, connecting only to addresses the policy allows, by address."""

    def __init__(self) -> None:
        self._backend = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        error: Exception | None = None
        for address in _connectable(host, port):
            try:
                return await self._backend.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore2.ConnectError as exc:
                error = exc
        raise error or httpcore2.ConnectError(f"{host} has no address")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def guarded_transport() -> httpx2.HTTPTransport:
    """An httpx transport whose every connection goes through GuardedBackend. TLS still checks the
    certificate against (and sends SNI for) the URL's host name. Environment proxies are not used."""
    transport = httpx2.HTTPTransport()
    transport._pool = httpcore2.ConnectionPool(
        ssl_context=httpx2.create_ssl_context(), network_backend=GuardedBackend()
    )
    return transport


def guarded_async_transport() -> httpx2.AsyncHTTPTransport:
    """guarded_transport for httpx's AsyncClient (the MCP client)."""
    transport = httpx2.AsyncHTTPTransport()
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(), network_backend=AsyncGuardedBackend()
    )
    return transport
