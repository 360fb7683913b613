"""POST /schedules/preview: any schedule's next occurrences and description, no task needed."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.dst import KINDS, ZONES, daily, expected_local, window_start

pytestmark = pytest.mark.django_db

# The cases of tests/tasks/test_dst.py: 09:00 on both days, 02:30 on the spring-forward day, the
# ambiguous time and 01:30 on the fall-back day.
DST_CASES = sorted(
    {
        (zone, hh_mm, day)
        for zone, (spring, fall, ambiguous) in ZONES.items()
        for hh_mm, day in (("09:00", spring), ("09:00", fall), ("02:30", spring), (ambiguous, fall), ("01:30", fall))
    }
)


def test_preview_cron_across_spring_forward(agent: Any) -> None:
    body = agent.client.post(
        "/schedules/preview",
        {
            "schedule_kind": "cron",
            "schedule_expr": "30 2 * * *",
            "timezone": "America/New_York",
            "count": 3,
            "after": "2027-03-13T00:00:00-05:00",
        },
        format="json",
    ).json()
    assert [o["at"] for o in body["occurrences"]] == [
        "2027-03-13T02:30:00-05:00",
        "2027-03-14T03:30:00-04:00",
        "2027-03-15T02:30:00-04:00",
    ]
    assert [o["utc"] for o in body["occurrences"]] == [
        "2027-03-13T07:30:00Z",
        "2027-03-14T07:30:00Z",
        "2027-03-15T06:30:00Z",
    ]
    assert body["description"] == "At 02:30 (America/New_York)"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("zone", "hh_mm", "day"), DST_CASES, ids=["-".join(case) for case in DST_CASES])
def test_preview_daily_across_dst(agent: Any, kind: str, zone: str, hh_mm: str, day: str) -> None:
    response = agent.client.post(
        "/schedules/preview",
        {
            "schedule_kind": kind,
            "schedule_expr": daily(kind, hh_mm),
            "timezone": zone,
            "count": 5,
            "after": window_start(zone, day).isoformat(),
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    local = [o["at"] for o in response.json()["occurrences"]]
    assert local == expected_local(zone, hh_mm, day)
    on_the_day = [at[11:16] for at in local if at.startswith(day)]
    spring_gap = hh_mm == "02:30" and day == ZONES[zone][0]
    assert on_the_day == (["03:30"] if spring_gap else [hh_mm]), "once on the day of the change"


def test_preview_rrule_seed_example(agent: Any) -> None:
    body = agent.client.post(
        "/schedules/preview/",
        {
            "schedule_kind": "rrule",
            "schedule_expr": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
            "timezone": "Europe/Chisinau",
            "count": 2,
            "after": "2026-11-27T12:00:00Z",
        },
        format="json",
    ).json()
    assert [o["at"] for o in body["occurrences"]] == ["2026-11-30T08:30:00+02:00", "2026-12-01T08:30:00+02:00"]


def test_preview_event_and_manual_have_no_occurrences(agent: Any) -> None:
    body = agent.client.post(
        "/schedules/preview", {"schedule_kind": "event", "schedule_expr": "email.*"}, format="json"
    ).json()
    assert body["occurrences"] == []
    assert "email.*" in body["description"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"schedule_kind": "cron", "schedule_expr": "61 * * * *"}, "schedule_expr"),
        ({"schedule_kind": "cron", "schedule_expr": "0 9 * * *", "timezone": "Mars/Base"}, "timezone"),
        ({"schedule_kind": "weekly", "schedule_expr": "x"}, "schedule_kind"),
        ({"schedule_kind": "interval", "schedule_expr": "60", "count": 500}, "count"),
        ({"schedule_kind": "rrule", "schedule_expr": "FREQ=DAILY;UNTIL=20200101T000000Z"}, "schedule_expr"),
    ],
)
def test_invalid_schedule_is_400_naming_the_field(agent: Any, body: dict[str, Any], field: str) -> None:
    response = agent.client.post("/schedules/preview", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_needs_token_and_scope(make_agent: Any) -> None:
    body = {"schedule_kind": "interval", "schedule_expr": "60"}
    assert APIClient().post("/schedules/preview", body, format="json").status_code == 401
    assert make_agent(scopes=["runs:read"]).client.post("/schedules/preview", body, format="json").status_code == 403
