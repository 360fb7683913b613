"""The admin as operators use it, in a real headless chromium at 1,280 px: pages named by titles,
JSON collapsed and pretty-printed, the step timeline and lists within the window, records without
Save buttons, approvals decided from the list. Screenshots in var/screenshots/."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from runs.models import Approval, Run, StepItem, StepRun
from runs.services import approval_decide, run_create
from tasks.models import Task
from tests.admin.conftest import WINDOW, AdminPage
from tests.support.pipelines import DRAFTS, approval_payload, drive, run_in_process

pytestmark = pytest.mark.django_db(transaction=True)

# A value with no place to break, and a wide nested one: what made the run page 2,000 px wide.
UNBROKEN = "x" * 3000
WIDE = {f"key_{n}": {"nested": list(range(40)), "text": "lorem ipsum " * 30} for n in range(5)}
BEAT_MODELS = ["Periodic tasks", "Crontabs", "Intervals", "Clocked", "Solar events"]


def _fits(page: AdminPage) -> None:
    """No sideways scrolling in a 1,280 px window (its vertical scroll bar, if any, takes a little)."""
    assert page.window_width() == WINDOW[0]
    assert page.scroll_width() <= page.viewport_width() <= WINDOW[0], (
        f"{page.driver.current_url} is {page.scroll_width()} px wide"
    )


def _wide_run(owner: Any, user: Any) -> Run:
    """A run whose steps carry long and wide JSON, with an approval decided by the operator."""
    payload = approval_payload()
    payload["params"] = {**payload["params"], "unbroken": UNBROKEN, "wide": WIDE}
    payload["pipeline"].insert(
        0,
        {
            "id": "big",
            "uses": "orchestrator.echo",
            "with": {"unbroken": "${params.unbroken}", "wide": "${params.wide}"},
        },
    )
    run = run_in_process(owner, payload, title="Weekly follow-ups")
    approval_decide(run=run, approve=True, actor=Actor.of_user(user), comment="fine")
    drive(run.pk, start=3)
    run.refresh_from_db()
    assert run.status == "succeeded"
    return run


def _foreach_run(owner: Any) -> Run:
    """20 items, two of which the tool's input schema refuses: 18 succeeded, 2 failed."""
    chats: list[Any] = list(range(1, 21))
    chats[4], chats[11] = "five", "twelve"
    payload = {
        "pipeline": [
            {
                "id": "notify",
                "uses": "telegram-mcp.send_message",
                "foreach": chats,
                "with": {"chat_id": "${item}", "text": "Reminder ${item_index}"},
                "max_parallel": 4,
                "on_error": "continue",
            },
            {"id": "summary", "uses": "orchestrator.echo", "with": {"sent": "${length(steps.notify)}"}},
        ]
    }
    run = run_in_process(owner, payload, title="Chat reminders")
    assert run.status == "succeeded", run.error
    return run


def test_the_index_lists_what_operators_use_and_not_beats_internals(admin_page: AdminPage) -> None:
    admin_page.visit("/admin/")

    text = admin_page.text("#content-main")
    for shown in ("Tasks", "Runs", "Approvals", "Step items", "Events", "Agents", "Audit log"):
        assert shown.lower() in text.lower(), shown
    for hidden in BEAT_MODELS:
        assert hidden not in text, f"{hidden} should not be on the index"
    assert "Periodic Tasks" not in admin_page.text("#content-main")
    _fits(admin_page)
    admin_page.screenshot("admin-index")

    admin_page.visit("/admin/django_celery_beat/periodictask/")
    assert "Select periodic task" in admin_page.text("#content"), "still reachable by its address"


def test_the_task_list_fits_with_its_last_column(admin_page: AdminPage, make_task: Any) -> None:
    make_task(
        "rrule", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30", "Europe/Chisinau", title="Weekday digest"
    )
    make_task("cron", "*/15 * * * *", title="Inbox sweep every quarter of an hour, with a longish title to wrap")
    make_task("manual", "", title="On demand")
    Task.objects.update(last_run_at=timezone.now())

    admin_page.visit("/admin/tasks/task/")

    _fits(admin_page)
    for column in ("title", "status_text", "schedule_text", "next_run", "last_run"):
        header = admin_page.one(f"#result_list th.column-{column}")
        assert admin_page.fully_inside_the_window(header), column
    admin_page.screenshot("task-list")


def test_the_task_page_shows_next_occurrences_last_runs_and_links_its_runs(
    admin_page: AdminPage, make_task: Any
) -> None:
    task = make_task("cron", "0 9 * * *", "Europe/Paris", title="Morning briefing")
    runs = [run_create(task=task, trigger="manual") for _ in range(3)]
    for run in runs:
        drive(run.pk)
    other = run_in_process(task.owner, approval_payload(), title="Somebody else's")

    admin_page.visit(f"/admin/tasks/task/{task.pk}/change/")

    assert admin_page.text("h1") == "Change task"
    occurrences = admin_page.css(".field-upcoming ul.upcoming li")
    assert len(occurrences) == 5
    assert all("09:00:00+0" in item.text for item in occurrences)
    last = admin_page.css(".field-last_runs table.last-runs tbody tr")
    assert len(last) == 3
    assert all("succeeded" in row.text for row in last)
    _fits(admin_page)
    admin_page.screenshot("task-page")

    admin_page.click_and_wait(admin_page.one(".field-runs a"))

    rows = admin_page.css("#result_list tbody tr")
    assert len(rows) == 3
    assert all("Morning briefing" in row.text for row in rows)
    assert "Somebody else's" not in admin_page.text("#result_list")
    assert str(other.pk) not in admin_page.driver.page_source
    admin_page.screenshot("task-runs")


def test_the_run_page_is_titled_by_its_task_fits_and_folds_its_json(
    admin_page: AdminPage, agent: Any, operator_user: Any
) -> None:
    run = _wide_run(agent.agent, operator_user)

    admin_page.visit(f"/admin/runs/run/{run.pk}/change/")

    assert admin_page.text("h1") == "Weekly follow-ups"
    heading = admin_page.text("#content h2")
    assert heading.startswith("manual run, succeeded"), heading
    assert str(run.pk) not in admin_page.text("h1") + heading + admin_page.text(".breadcrumbs")
    assert str(run.task_id) not in admin_page.text(".breadcrumbs")
    assert "Weekly follow-ups" in admin_page.driver.title
    assert not admin_page.css("input[name=_save]")
    assert not admin_page.css("input[name=_continue]")
    assert not admin_page.css(".submit-row input[type=submit]")

    steps = admin_page.css("table.timeline > tbody > tr.step")
    assert [row.find_element("css selector", "td:nth-child(2)").text for row in steps] == [
        "big",
        "draft",
        "ask",
        "send",
    ]
    folded = admin_page.css("details.json")
    assert len(folded) >= 8, "context, result, pipeline and each step's input and output"
    assert not [details for details in folded if details.get_attribute("open")], "closed at first"
    assert "decided_by" not in admin_page.text("table.timeline"), "the JSON is folded away"
    _fits(admin_page)
    admin_page.screenshot("run-page")

    for details in folded:  # open them all: still within the window, JSON indented
        admin_page.driver.execute_script("arguments[0].open = true", details)
    _fits(admin_page)
    ask_output = admin_page.one("#step-2 details.json:nth-of-type(2) pre").text
    assert '\n  "decided_by": {\n    "id":' in ask_output, ask_output[:300]
    assert '"name": "operator"' in ask_output
    admin_page.screenshot("run-page-json-open")

    decisions = admin_page.css("#approvals tbody tr")
    assert decisions
    assert "by operator (user)" in decisions[0].text


def test_the_json_shown_is_escaped(admin_page: AdminPage, agent: Any) -> None:
    script = "<script>window.injected = 1</script><img src=x onerror='window.injected = 2'>"
    payload = {
        "params": {"note": script},
        "pipeline": [{"id": "say", "uses": "orchestrator.echo", "with": {"note": "${params.note}"}}],
    }
    run = run_in_process(agent.agent, payload, title="<b>bold</b> title")

    admin_page.visit(f"/admin/runs/run/{run.pk}/change/")
    for details in admin_page.css("details.json"):
        admin_page.driver.execute_script("arguments[0].open = true", details)

    assert admin_page.driver.execute_script("return window.injected === undefined")
    assert admin_page.text("h1") == "<b>bold</b> title"
    assert script in admin_page.text("#step-0")


def test_a_foreach_steps_items_are_in_the_timeline_and_their_own_list(admin_page: AdminPage, agent: Any) -> None:
    run = _foreach_run(agent.agent)
    step = StepRun.objects.get(run=run, step_id="notify")

    admin_page.visit(f"/admin/runs/run/{run.pk}/change/")

    items = admin_page.one("#items-0")
    assert items.find_element("css selector", "summary").text == "20 items: 18 succeeded, 2 failed"
    assert not items.get_attribute("open")
    admin_page.one("#items-0 > summary").click()
    rows = admin_page.css("#items-0 table.items tbody tr.item")
    assert len(rows) == 20
    failed = [row for row in rows if "failed" in row.text]
    assert len(failed) == 2
    assert all("input_invalid" in row.text for row in failed)
    assert "1" in rows[0].find_element("css selector", "td:nth-child(3)").text, "attempts"
    _fits(admin_page)
    admin_page.screenshot("run-foreach-items")

    admin_page.click_and_wait(admin_page.one("#items-0 p.help a[href*=status__exact]"))

    listed = admin_page.css("#result_list tbody tr")
    assert len(listed) == 2
    assert all("Chat reminders · notify" in row.text and "input_invalid" in row.text for row in listed)
    _fits(admin_page)
    admin_page.screenshot("stepitems-failed")

    admin_page.click_and_wait(admin_page.one("#result_list tbody tr th a"))

    assert admin_page.text("h1") == "Chat reminders"
    assert admin_page.text("#content h2").startswith("item notify [")
    assert not admin_page.css("input[name=_save]")
    admin_page.click_and_wait(admin_page.one(".field-run a"))
    assert admin_page.driver.current_url.endswith(f"/admin/runs/run/{run.pk}/change/")
    assert StepItem.objects.filter(step=step, status="failed").count() == 2


def _approvals(owner: Any) -> tuple[Approval, Approval, Approval]:
    """Two pending approvals and a rejected one, the rejected one asked last (the newest)."""
    first = run_in_process(owner, approval_payload(), title="Weekly follow-ups")
    second = run_in_process(owner, approval_payload(), title="Invoice reminders to customers overdue by 30 days")
    decided = run_in_process(owner, approval_payload(guarded=False), title="Old newsletter")
    approval_decide(run=decided, approve=False, actor=Actor.system("tests"), comment="not now")
    return (
        Approval.objects.get(run=first),
        Approval.objects.get(run=second),
        Approval.objects.get(run=decided),
    )


def test_the_approvals_list_puts_pending_first_and_its_columns_fit(admin_page: AdminPage, agent: Any) -> None:
    first, _second, _decided = _approvals(agent.agent)
    Approval.objects.filter(pk=first.pk).update(message="Send 3 follow-ups? " + "Please read them carefully. " * 8)

    admin_page.visit("/admin/runs/approval/")

    rows = admin_page.css("#result_list tbody tr")
    assert [row.find_element("css selector", "th").text for row in rows] == [
        "Weekly follow-ups",
        "Invoice reminders to customers overdue by 30 days",
        "Old newsletter",
    ]
    assert ["pending" in row.text for row in rows] == [True, True, False]
    assert "3" in rows[0].find_element("css selector", "td.field-items").text
    for column in ("task_title", "message_text", "items", "age", "status_text"):
        header = admin_page.one(f"#result_list th.column-{column}")
        assert admin_page.fully_inside_the_window(header), column
        cell = rows[0].find_element("css selector", f".field-{column}")
        assert admin_page.fully_inside_the_window(cell), column
    _fits(admin_page)
    admin_page.screenshot("approvals-list")


def _select_action(page: AdminPage, approvals: list[Approval], action: str) -> None:
    from selenium.webdriver.support.ui import Select

    for approval in approvals:
        page.one(f"input.action-select[value='{approval.pk}']").click()
    Select(page.one("select[name=action]")).select_by_value(action)
    page.click_and_wait(page.one("button[name=index]"))


def test_approving_two_of_three_items_from_the_list(admin_page: AdminPage, agent: Any) -> None:
    first, _, _ = _approvals(agent.agent)
    admin_page.visit("/admin/runs/approval/")

    _select_action(admin_page, [first], "approve_chosen_items")

    assert admin_page.text("fieldset.module h2") == "Weekly follow-ups — ask"
    assert str(first.run_id) not in admin_page.text("#content")
    boxes = admin_page.css(f"input[name=items_{first.pk}]")
    assert len(boxes) == 3
    assert all(box.is_selected() for box in boxes)
    boxes[1].click()  # leave out the second draft
    admin_page.one("textarea[name=comment]").send_keys("t2 already answered")
    _fits(admin_page)
    admin_page.screenshot("approve-chosen-items")
    admin_page.click_and_wait(admin_page.one("form input[type=submit]"))

    assert admin_page.messages() == ["Approved 1 approval with 2 items (1 item not chosen)."]
    assert "2 items" in admin_page.messages()[0]
    first.refresh_from_db()
    assert (first.status, first.approved_items, first.comment) == (
        "approved",
        [DRAFTS[0], DRAFTS[2]],
        "t2 already answered",
    )
    row = admin_page.one("#result_list tbody tr:last-child")
    assert "approved" in row.text
    assert "2 of 3" in row.text
    admin_page.screenshot("approve-chosen-items-done")


def test_rejecting_with_a_comment_from_the_list(admin_page: AdminPage, agent: Any) -> None:
    _, second, _ = _approvals(agent.agent)
    admin_page.visit("/admin/runs/approval/")

    _select_action(admin_page, [second], "reject_with_comment")

    assert "Invoice reminders" in admin_page.text("#content")
    admin_page.one("textarea[name=comment]").send_keys("wrong customers")
    admin_page.screenshot("reject-with-comment")
    admin_page.click_and_wait(admin_page.one("form input[type=submit]"))

    assert admin_page.messages() == ["Rejected 1 approval with the comment."]
    second.refresh_from_db()
    assert (second.status, second.comment) == ("rejected", "wrong customers")
    admin_page.visit(f"/admin/runs/approval/{second.pk}/change/")
    assert admin_page.text("h1") == "Invoice reminders to customers overdue by 30 days"
    assert "wrong customers" in admin_page.text(".field-comment")
    assert not admin_page.css("input[name=_save]")
    admin_page.screenshot("approval-rejected")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/admin/runs/run/", "runs-list"),
        ("/admin/tasks/event/", "events-list"),
        ("/admin/ordinaut/auditlog/", "audit-log-list"),
    ],
)
def test_record_lists_fit_and_their_pages_have_no_save_button(
    admin_page: AdminPage, agent: Any, operator_user: Any, path: str, name: str
) -> None:
    _wide_run(agent.agent, operator_user)
    _foreach_run(agent.agent)
    agent.client.post("/events", {"topic": "invoices.overdue", "payload": {"wide": WIDE}}, format="json")

    admin_page.visit(path)

    rows = admin_page.css("#result_list tbody tr")
    assert rows
    _fits(admin_page)
    admin_page.screenshot(name)
    admin_page.click_and_wait(rows[0].find_element("css selector", "th a"))
    assert not admin_page.css("input[name=_save]")
    assert not admin_page.css("input[name=_addanother]")
    _fits(admin_page)
    admin_page.screenshot(f"{name}-first-record")
