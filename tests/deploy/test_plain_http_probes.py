"""Behind a TLS proxy (SECURE_SSL), web redirects plain http to https, except /health* and /metrics:
the container's health probes and Prometheus reach those from inside the network, over http."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db

HOST = "localhost"


@override_settings(SECURE_SSL_REDIRECT=True)
@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/health", "/metrics"])
def test_probes_and_scrapes_over_plain_http_are_answered(path: str) -> None:
    response = Client().get(path, HTTP_HOST=HOST)
    assert response.status_code == 200, (path, response.status_code, response.headers.get("Location"))


@override_settings(SECURE_SSL_REDIRECT=True)
@pytest.mark.parametrize("path", ["/admin/", "/tasks", "/openapi.json", "/healthz", "/metrics-other"])
def test_everything_else_is_redirected_to_https(path: str) -> None:
    response = Client().get(path, HTTP_HOST=HOST)
    assert response.status_code == 301, path
    assert response.headers["Location"] == f"https://{HOST}{path}"
