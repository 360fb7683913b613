"""The Procfile's web process and X-Forwarded-For: a client cannot pick its own address.

uvicorn believes proxy headers from 127.0.0.1 unless told otherwise, so without this each
bad-token request with a new X-Forwarded-For got a fresh per-IP budget (ORDINAUT_ANON_RATE_LIMIT).
The Procfile turns proxy headers off unless ORDINAUT_TRUSTED_PROXIES names the proxies.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.processes import Web

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

BUDGET = 3


@pytest.fixture
def web(tmp_path: Path) -> Iterator[object]:
    started: list[Web] = []

    def start(**env: str) -> str:
        server = Web(tmp_path, env={"ORDINAUT_ANON_RATE_LIMIT": f"{BUDGET}/min", **env}).start()
        started.append(server)
        return server.base

    yield start
    for server in started:
        server.stop(signal.SIGINT)


def _bad_token_statuses(base: str, count: int) -> list[int]:
    """`count` requests with a bad token, each claiming another X-Forwarded-For, from a loopback
    address of this test's own (so no earlier request from 127.0.0.1 has used its budget)."""
    source = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    forwarded = f"198.51.{random.randint(1, 254)}"
    statuses = []
    with httpx2.Client(transport=httpx2.HTTPTransport(local_address=source), timeout=10) as client:
        for n in range(count):
            headers = {"Authorization": "Bearer ord_not-a-token", "X-Forwarded-For": f"{forwarded}.{n + 1}"}
            statuses.append(client.get(f"{base}/tasks", headers=headers).status_code)
    return statuses


def test_a_made_up_forwarded_for_does_not_buy_a_fresh_budget(web: object) -> None:
    base = web()  # type: ignore[operator]

    statuses = _bad_token_statuses(base, BUDGET + 3)

    assert statuses[:BUDGET] == [401] * BUDGET
    assert set(statuses[BUDGET:]) == {429}, statuses


def test_behind_a_named_proxy_each_client_address_has_its_own_budget(web: object) -> None:
    base = web(ORDINAUT_TRUSTED_PROXIES="127.0.0.0/8")  # type: ignore[operator]

    statuses = _bad_token_statuses(base, BUDGET + 3)

    assert statuses == [401] * (BUDGET + 3), "each forwarded address is a different client"
