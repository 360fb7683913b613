"""The two example tasks of the original Ordinaut README, verbatim (docs/pipelines.md shows them)."""

from __future__ import annotations

from typing import Any

MORNING_BRIEFING: dict[str, Any] = {
    "title": "Weekday Morning Briefing",
    "description": "Daily agenda, weather, and priority summary",
    "schedule_kind": "rrule",
    "schedule_expr": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
    "timezone": "Europe/Chisinau",
    "payload": {
        "pipeline": [
            {
                "id": "calendar",
                "uses": "google-calendar-mcp.list_events",
                "with": {"start": "${now}", "end": "${now+24h}"},
                "save_as": "events",
            },
            {"id": "weather", "uses": "weather-mcp.forecast", "with": {"city": "Chisinau"}, "save_as": "weather"},
            {
                "id": "summarize",
                "uses": "llm.plan",
                "with": {
                    "instruction": "Create morning briefing",
                    "calendar": "${steps.events}",
                    "weather": "${steps.weather}",
                },
                "save_as": "summary",
            },
            {
                "id": "notify",
                "uses": "telegram-mcp.send_message",
                "with": {"chat_id": 12345, "text": "${steps.summary.text}"},
            },
        ]
    },
}

EMAIL_FOLLOWUP: dict[str, Any] = {
    "title": "Email Follow-up Manager",
    "description": "Check for emails without replies and send polite follow-ups",
    "schedule_kind": "cron",
    "schedule_expr": "0 10 * * *",
    "payload": {
        "pipeline": [
            {
                "id": "scan_outbox",
                "uses": "imap-mcp.find_outbound_without_reply",
                "with": {"lookback_days": 7, "min_age_hours": 72},
                "save_as": "pending_emails",
            },
            {
                "id": "generate_followups",
                "uses": "llm.generate_followups",
                "with": {"emails": "${steps.pending_emails.threads}", "tone": "professional_friendly"},
                "save_as": "drafts",
            },
            {
                "id": "request_approval",
                "uses": "orchestrator.request_approval",
                "with": {
                    "message": "Review ${steps.drafts.count} follow-up emails",
                    "data": "${steps.drafts.messages}",
                },
                "save_as": "approval",
            },
            {
                "id": "send_approved",
                "uses": "gmail-mcp.send_followups",
                "with": {"drafts": "${steps.approval.approved_items}"},
                "if": "${steps.approval.status == 'approved'}",
            },
        ]
    },
}
