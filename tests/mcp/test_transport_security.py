"""The DNS-rebinding allowlist of /mcp follows Django's ALLOWED_HOSTS."""

from __future__ import annotations

from ordinaut_site.mcp_server import transport_security


def test_each_allowed_host_is_allowed_with_any_port_and_as_an_origin() -> None:
    settings = transport_security(["localhost", "127.0.0.1", "[::1]", "Ordinaut.Example.com"])

    assert settings.enable_dns_rebinding_protection
    for host in ("localhost", "localhost:*", "[::1]:*", "ordinaut.example.com", "ordinaut.example.com:*"):
        assert host in settings.allowed_hosts
    for origin in ("http://localhost:*", "https://ordinaut.example.com", "https://ordinaut.example.com:*"):
        assert origin in settings.allowed_origins
    assert not any("evil" in host for host in settings.allowed_hosts)


def test_a_star_turns_the_check_off_as_it_does_for_django() -> None:
    assert not transport_security(["example.com", "*"]).enable_dns_rebinding_protection


def test_a_subdomain_wildcard_allows_the_domain_itself() -> None:
    settings = transport_security([".example.com"])

    assert settings.allowed_hosts == ["example.com", "example.com:*"]
