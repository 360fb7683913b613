"""Real MCP servers named as the seed's pipelines name them (tests/pipelines/seed.py), built with the
mcp SDK's MCPServer and served over streamable HTTP on loopback (a uvicorn thread each, in this
process): google-calendar-mcp, weather-mcp, llm, telegram-mcp, imap-mcp and gmail-mcp.

They answer deterministically from their input. telegram-mcp and gmail-mcp also record what they
were asked to send (`SeedServers.telegram_messages`, `SeedServers.sent_drafts`): the servers run
in the test process, so a test reads exactly what a worker's steps sent.

`register_seed_servers(servers)` puts them in the catalog under those names, as operators do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel

from pipelines.models import ToolServer
from tests.support.mcp_servers import START_TIMEOUT_S, HttpServer, free_port
from tests.support.tool_servers import register_http

# The server names the seed's `uses` name, and the tools each offers.
SEED_SERVERS: dict[str, list[str]] = {
    "google-calendar-mcp": ["list_events"],
    "weather-mcp": ["forecast"],
    "llm": ["generate_followups", "plan"],
    "telegram-mcp": ["send_message"],
    "imap-mcp": ["find_outbound_without_reply"],
    "gmail-mcp": ["send_followups"],
}

THREADS = [
    {"id": "t1", "to": "ana@example.com", "subject": "Contract draft"},
    {"id": "t2", "to": "ion@example.com", "subject": "Invoice 2024-17"},
]
FIRST_MESSAGE_ID = 501


class Events(BaseModel):
    events: list[dict[str, Any]]


class Forecast(BaseModel):
    city: str
    summary: str
    high_c: float


class Plan(BaseModel):
    text: str


class Followups(BaseModel):
    count: int
    messages: list[dict[str, Any]]


class Sent(BaseModel):
    message_id: int
    text: str


class Threads(BaseModel):
    threads: list[dict[str, Any]]


class SentFollowups(BaseModel):
    sent: int
    threads: list[str]


def briefing_text(instruction: str, calendar: dict[str, Any], weather: dict[str, Any]) -> str:
    """What llm.plan writes (tests compute the expected text with it)."""
    titles = ", ".join(event["title"] for event in calendar.get("events", []))
    return (
        f"{instruction}: {len(calendar.get('events', []))} events ({titles}); "
        f"{weather.get('city')} {weather.get('summary')}, high {weather.get('high_c')} C."
    )


def followup_text(thread: dict[str, Any], tone: str) -> str:
    return f"[{tone}] Following up on {thread['subject']!r} - any news?"


@dataclass
class SeedServers:
    """The six running servers by name, and what telegram-mcp and gmail-mcp were asked to send."""

    http: dict[str, HttpServer] = field(default_factory=dict)
    telegram_messages: list[dict[str, Any]] = field(default_factory=list)
    sent_drafts: list[list[dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return self.http[name].url

    def reset(self) -> None:
        with self.lock:
            self.telegram_messages.clear()
            self.sent_drafts.clear()

    def stop(self) -> None:
        for running in self.http.values():
            running.stop()


def build_servers(record: SeedServers) -> dict[str, MCPServer]:
    calendar: MCPServer = MCPServer("google-calendar-mcp", version="1.0.0", log_level="WARNING")
    weather: MCPServer = MCPServer("weather-mcp", version="1.0.0", log_level="WARNING")
    llm: MCPServer = MCPServer("llm", version="1.0.0", log_level="WARNING")
    telegram: MCPServer = MCPServer("telegram-mcp", version="1.0.0", log_level="WARNING")
    imap: MCPServer = MCPServer("imap-mcp", version="1.0.0", log_level="WARNING")
    gmail: MCPServer = MCPServer("gmail-mcp", version="1.0.0", log_level="WARNING")

    @calendar.tool()
    async def list_events(start: str, end: str) -> Events:
        """Events between two times."""
        return Events(
            events=[
                {"title": "Standup", "start": start},
                {"title": "Design review", "end": end},
            ]
        )

    @weather.tool()
    async def forecast(city: str) -> Forecast:
        """Today's forecast for a city."""
        return Forecast(city=city, summary="sunny", high_c=21.5)

    @llm.tool()
    async def plan(instruction: str, calendar: dict[str, Any], weather: dict[str, Any]) -> Plan:
        """A briefing written from the calendar and the weather."""
        return Plan(text=briefing_text(instruction, calendar, weather))

    @llm.tool()
    async def generate_followups(emails: list[dict[str, Any]], tone: str) -> Followups:
        """Drafts a follow-up per thread."""
        messages = [{"thread": e["id"], "to": e["to"], "text": followup_text(e, tone)} for e in emails]
        return Followups(count=len(messages), messages=messages)

    @telegram.tool()
    async def send_message(chat_id: int, text: str) -> Sent:
        """Sends a Telegram message (recorded, not sent)."""
        with record.lock:
            record.telegram_messages.append({"chat_id": chat_id, "text": text})
            message_id = FIRST_MESSAGE_ID + len(record.telegram_messages) - 1
        return Sent(message_id=message_id, text=text)

    @imap.tool()
    async def find_outbound_without_reply(lookback_days: int, min_age_hours: int) -> Threads:
        """Sent mails that got no reply."""
        return Threads(
            threads=[{**thread, "lookback_days": lookback_days, "min_age_hours": min_age_hours} for thread in THREADS]
        )

    @gmail.tool()
    async def send_followups(drafts: list[dict[str, Any]]) -> SentFollowups:
        """Sends the drafts (recorded, not sent)."""
        with record.lock:
            record.sent_drafts.append(list(drafts))
        return SentFollowups(sent=len(drafts), threads=[draft["thread"] for draft in drafts])

    return {
        "google-calendar-mcp": calendar,
        "weather-mcp": weather,
        "llm": llm,
        "telegram-mcp": telegram,
        "imap-mcp": imap,
        "gmail-mcp": gmail,
    }


def _serve(name: str, mcp: MCPServer) -> HttpServer:
    app = mcp.streamable_http_app(
        stateless_http=True,
        transport_security=TransportSecuritySettings(
            allowed_hosts=["127.0.0.1:*", "localhost:*"], allowed_origins=["http://127.0.0.1:*"]
        ),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"seed-mcp-{name}-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the seed's MCP server {name} on port {port} did not start")
        time.sleep(0.02)
    return HttpServer(port=port, server=server, thread=thread)


@contextmanager
def seed_servers() -> Iterator[SeedServers]:
    """The six servers running on loopback; stopped on exit."""
    record = SeedServers()
    try:
        for name, mcp in build_servers(record).items():
            record.http[name] = _serve(name, mcp)
        yield record
    finally:
        record.stop()


def register_seed_servers(servers: SeedServers) -> list[ToolServer]:
    """The six servers in the catalog under the seed's names, their tools discovered (tools/list)."""
    return [register_http(servers.url(name), name=name) for name in SEED_SERVERS]
