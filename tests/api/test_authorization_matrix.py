"""Authorization matrix (R5): every endpoint against every scope, no token, another agent and an admin.

MATRIX is the table: one row per operation of /openapi.json (method, path, scope, the object its
`{id}` names, a valid body, the success status). A route the URLconf serves without a row fails
test_every_api_route_has_a_matrix_row, so a new endpoint cannot ship without its authorization
being tested here.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from ordinaut_site.audit import Actor
from ordinaut_site.models import SCOPE_ADMIN, SCOPE_AGENTS_ADMIN, SCOPE_RUNS_WRITE, SCOPE_TASKS_READ, AuditLog
from ordinaut_site.services import agent_deactivate, token_issue, token_revoke
from runs.models import Run
from tasks.models import Task
from tests.support.api_matrix import (
    GETS,
    MANAGE_AGENT,
    MATRIX,
    NON_ADMIN_SCOPES,
    OWNED,
    OWNER_SCOPES,
    Endpoint,
    World,
    assert_error,
    build_world,
    call,
    client_with,
    db_fingerprint,
)
from tests.support.pipelines import echo_pipeline, manual_task_body

pytestmark = pytest.mark.django_db

# Routes outside the agents' API: public by docs/api.md, or the Django admin (operators, session auth).
PUBLIC_DRF_ROUTES = {("GET", "/openapi.json"), ("GET", "/docs")}
NON_API_ROUTE_PREFIXES = ("admin/", "^health", "^metrics")


@pytest.fixture
def owner(make_agent: Any) -> Any:
    """Agent A: owns the world's objects."""
    return make_agent(name="agent-a", scopes=OWNER_SCOPES)


@pytest.fixture
def other(make_agent: Any) -> Any:
    """Agent B: every scope but admin (a different, larger set than A's), and none of A's objects."""
    return make_agent(name="agent-b", scopes=NON_ADMIN_SCOPES)


@pytest.fixture
def admin(make_agent: Any) -> Any:
    return make_agent(name="agent-admin", admin=True)


@pytest.fixture
def world(owner: Any) -> World:
    return build_world(owner.agent)


# --- The table covers every route -------------------------------------------------------------


def _matrix_keys() -> set[tuple[str, str]]:
    keys = [(endpoint.method, endpoint.path) for endpoint in MATRIX]
    assert len(keys) == len(set(keys)), "a duplicate row in MATRIX"
    return set(keys)


def test_every_openapi_operation_has_a_matrix_row() -> None:
    schema = APIClient().get("/openapi.json").json()
    operations = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert operations == _matrix_keys()


def test_every_api_route_has_a_matrix_row() -> None:
    """From the URLconf, not the schema: a view hidden from /openapi.json is still caught."""
    routed = {(method, path.replace("{pk}", "{id}")) for path, _, method, _ in EndpointEnumerator().get_api_endpoints()}
    assert routed - PUBLIC_DRF_ROUTES == _matrix_keys()


def _routes(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            found.append((prefix + str(pattern.pattern), pattern.callback))
    return found


def test_every_route_that_is_not_a_drf_view_is_outside_the_agents_api() -> None:
    """Plain Django views skip DRF's authentication: only the admin, health and metrics may be one."""
    plain = [route for route, callback in _routes(get_resolver().url_patterns) if not hasattr(callback, "cls")]
    assert plain
    assert [route for route in plain if not route.startswith(NON_API_ROUTE_PREFIXES)] == []


# --- No token: 401 everywhere -----------------------------------------------------------------


BAD_CREDENTIALS = {
    "none": {},
    "garbage": {"HTTP_AUTHORIZATION": "Bearer ord_zzzzzzzz_not-a-token"},
    "not_bearer": {"HTTP_AUTHORIZATION": "Token abc"},
    "agent_uuid": {"HTTP_AUTHORIZATION": f"Bearer {uuid.uuid4()}"},
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
def test_no_valid_token_is_401(endpoint: Endpoint, credentials: str) -> None:
    url = endpoint.path.replace("{id}", str(uuid.uuid4())).replace("{prefix}", "abcdefgh").replace("{name}", "nobody")
    before = db_fingerprint()

    response = call(APIClient(), endpoint, url, **BAD_CREDENTIALS[credentials])

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert db_fingerprint() == before


@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
def test_revoked_token_and_deactivated_agent_are_401(endpoint: Endpoint, make_agent: Any, world: World) -> None:
    revoked, deactivated = make_agent(admin=True), make_agent(admin=True)
    system = Actor.system("tests")
    token_revoke(token=revoked.agent.tokens.get(), actor=system)
    agent_deactivate(agent=deactivated.agent, actor=system)
    before = db_fingerprint()

    for handle in (revoked, deactivated):
        assert_error(call(handle.client, endpoint, world.url(endpoint)), 401, "not_authenticated")
    assert db_fingerprint() == before


# --- Every scope against every endpoint -------------------------------------------------------


SCOPE_SETS = [[], *[[scope] for scope in NON_ADMIN_SCOPES], [SCOPE_ADMIN]]  # admin last: it changes things


@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
def test_each_scope_alone_gets_403_unless_it_is_the_one_needed(
    endpoint: Endpoint, make_agent: Any, world: World
) -> None:
    """One agent per scope (and one with none): the endpoint's scope or admin passes, any other is a
    403 that changes nothing. Passing is not seeing: a non-admin still gets 404 for A's objects."""
    for scopes in SCOPE_SETS:
        caller = make_agent(scopes=scopes)
        caller.client.get("/agents/me")  # first use stamps last_used_at; not part of what is compared
        granted = endpoint.scope is None or endpoint.scope in scopes or SCOPE_ADMIN in scopes
        before = db_fingerprint()

        response = call(caller.client, endpoint, world.url(endpoint))

        if not granted:
            assert_error(response, 403, "permission_denied")
            assert repr(endpoint.scope) in response.json()["error"]["message"]
            assert db_fingerprint() == before, f"{endpoint} refused {scopes} but changed the database"
        elif endpoint.owned and SCOPE_ADMIN not in scopes:
            assert_error(response, 404, "not_found")
            assert db_fingerprint() == before
        else:
            assert response.status_code == endpoint.success, (scopes, response.status_code, response.content[:300])


@pytest.mark.parametrize("endpoint", GETS, ids=str)
def test_head_needs_the_same_scope_as_get(endpoint: Endpoint, make_agent: Any, world: World) -> None:
    lacking = make_agent(scopes=[scope for scope in NON_ADMIN_SCOPES if scope != endpoint.scope])
    response = lacking.client.head(world.url(endpoint))
    assert response.status_code == (200 if endpoint.scope is None else 403)
    assert client_with(None).head(world.url(endpoint)).status_code == 401


@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
def test_options_is_not_a_way_around_scopes(endpoint: Endpoint, make_agent: Any, world: World) -> None:
    """DRF answers OPTIONS with metadata after only the permission check; Ordinaut serves no OPTIONS."""
    nobody = make_agent(scopes=[])
    assert_error(nobody.client.options(world.url(endpoint)), 405, "method_not_allowed")
    assert_error(client_with(None).options(world.url(endpoint)), 401, "not_authenticated")


# --- Agent B and agent A's objects ------------------------------------------------------------


@pytest.mark.parametrize("endpoint", OWNED, ids=str)
def test_another_agents_object_is_404_and_untouched(endpoint: Endpoint, other: Any, world: World) -> None:
    other.client.get("/agents/me")
    before = db_fingerprint()

    response = call(other.client, endpoint, world.url(endpoint))
    missing = call(other.client, endpoint, world.url(endpoint, str(uuid.uuid4())))

    assert_error(response, 404, "not_found")
    # Existence is not leaked: A's object answers exactly like an id that does not exist.
    assert response.json()["error"] == missing.json()["error"]
    assert db_fingerprint() == before


@pytest.mark.parametrize("endpoint", OWNED, ids=str)
def test_the_owner_reaches_its_own_objects(endpoint: Endpoint, owner: Any, world: World) -> None:
    response = call(owner.client, endpoint, world.url(endpoint))
    assert response.status_code == endpoint.success, response.content[:300]


@pytest.mark.parametrize("endpoint", OWNED, ids=str)
def test_admin_reaches_other_agents_objects(endpoint: Endpoint, admin: Any, world: World) -> None:
    admin.client.get("/agents/me")
    before = db_fingerprint()

    response = call(admin.client, endpoint, world.url(endpoint), HTTP_X_REQUEST_ID="matrix-admin")

    assert response.status_code == endpoint.success, response.content[:300]
    if endpoint.writes:
        assert db_fingerprint() != before
        row = AuditLog.objects.filter(request_id="matrix-admin").first()
        assert row is not None
        assert (row.actor_kind, row.actor_id) == ("agent", str(admin.agent.pk))
    else:
        assert db_fingerprint() == before


LISTS = [
    ("/tasks", ["task", "paused_task"]),
    ("/runs", ["failed_run", "waiting_run"]),
    ("/approvals", ["approval"]),
    ("/events", ["event"]),
]


@pytest.mark.parametrize(("path", "targets"), LISTS, ids=[path for path, _ in LISTS])
def test_lists_show_another_agents_objects_to_admins_only(
    path: str, targets: list[str], owner: Any, other: Any, admin: Any, world: World
) -> None:
    def listed(client: APIClient, query: str = "") -> set[str]:
        response = client.get(f"{path}?limit=500{query}")
        assert response.status_code == 200
        return {item["id"] for item in response.json()["results"]}

    mine = {world.ids[target] for target in targets}
    assert mine <= listed(owner.client)
    assert listed(other.client) & mine == set()
    assert mine <= listed(admin.client)
    if path == "/runs":
        assert listed(other.client, f"&task={world.ids['task']}") == set()
        run_task = Run.objects.get(pk=world.ids["failed_run"]).task_id
        assert listed(other.client, f"&task={run_task}") == set()


def test_runs_an_admin_starts_stay_the_task_owners(owner: Any, other: Any, admin: Any, world: World) -> None:
    started = admin.client.post(f"/tasks/{world.ids['task']}/run_now", {}, format="json")
    assert started.status_code == 202
    run_id = started.json()["id"]

    assert owner.client.get(f"/runs/{run_id}").status_code == 200
    assert_error(other.client.get(f"/runs/{run_id}"), 404, "not_found")


def test_an_agent_cannot_create_a_task_owned_by_someone_else(owner: Any, other: Any, admin: Any) -> None:
    body = manual_task_body(
        echo_pipeline(1),
        owner=str(owner.agent.pk),
        owner_id=str(owner.agent.pk),
        created_by={"id": str(owner.agent.pk), "name": owner.agent.name},
    )
    for caller in (other, admin):
        response = caller.client.post("/tasks", body, format="json")
        assert response.status_code == 201, response.content[:300]
        assert response.json()["created_by"]["id"] == str(caller.agent.pk)
        assert Task.objects.get(pk=response.json()["id"]).owner_id == caller.agent.pk


def test_an_agent_cannot_hand_its_task_to_someone_else(owner: Any, other: Any, world: World) -> None:
    patch = {"owner": str(other.agent.pk), "owner_id": str(other.agent.pk), "created_by": {"id": str(other.agent.pk)}}
    response = owner.client.patch(f"/tasks/{world.ids['task']}", patch, format="json")
    assert response.status_code in (200, 400)
    assert Task.objects.get(pk=world.ids["task"]).owner_id == owner.agent.pk


def test_idempotency_keys_are_per_agent(owner: Any, other: Any) -> None:
    body = manual_task_body(echo_pipeline(1))
    first = owner.client.post("/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="shared-key")
    second = other.client.post("/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="shared-key")
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["created_by"]["id"] == str(other.agent.pk)


# --- agents:admin without admin ---------------------------------------------------------------


@pytest.fixture
def agent_admin(make_agent: Any) -> Any:
    return make_agent(name="agent-manager", scopes=[SCOPE_AGENTS_ADMIN, SCOPE_TASKS_READ])


@pytest.mark.parametrize("endpoint", MANAGE_AGENT, ids=str)
def test_agents_admin_cannot_manage_a_stronger_agent(endpoint: Endpoint, agent_admin: Any, admin: Any) -> None:
    """Otherwise agents:admin could mint itself a token of an admin agent."""
    strong_token, _ = token_issue(agent=admin.agent, actor=Actor.system("tests"))
    url = endpoint.path.replace("{id}", str(admin.agent.pk)).replace("{prefix}", strong_token.prefix)
    agent_admin.client.get("/agents/me")
    before = db_fingerprint()

    assert_error(call(agent_admin.client, endpoint, url), 403, "permission_denied")
    assert db_fingerprint() == before


@pytest.mark.parametrize("scopes", [[SCOPE_ADMIN], [SCOPE_RUNS_WRITE], [SCOPE_TASKS_READ, SCOPE_ADMIN]])
def test_agents_admin_grants_only_scopes_it_holds(scopes: list[str], agent_admin: Any) -> None:
    agent_admin.client.get("/agents/me")
    before = db_fingerprint()
    response = agent_admin.client.post("/agents", {"name": "too-strong", "scopes": scopes}, format="json")
    assert_error(response, 403, "permission_denied")
    assert db_fingerprint() == before
