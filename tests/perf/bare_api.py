"""The B4 baseline: a trivial DRF create endpoint, as a Django project of its own in one module.

bench_api.py serves it with deploy/Procfile's web command line, only the ASGI app swapped for
`tests.perf.bare_api:application`, so both run the same uvicorn, flags and process count.

POST /items {"title": "..."} validates one field with a serializer, INSERTs one row into
`bench_bare_item` on the same PostgreSQL database (created at start-up) and answers 201 with the
row. No authentication, throttling, audit or other middleware: the fastest create Django and DRF
manage on this server. It shares Ordinaut's database settings (DATABASE_URL, DB_CONN_MAX_AGE, health
checks), DEBUG off, JSON only.

BARE_API_REQUEST_THREADS=N (N > 0) runs each request's synchronous code on one of N long-lived
threads, as Ordinaut's web does (ordinaut_site/middleware.py, REQUEST_THREADS; that module needs
Ordinaut's apps, so the same few lines are here): bench_api.py measures the app with and without
them and takes the faster as the baseline.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dj_database_url
import django
from asgiref.sync import ThreadSensitiveContext, markcoroutinefunction, sync_to_async
from django.conf import settings

REQUEST_THREADS = int(os.environ.get("BARE_API_REQUEST_THREADS", "0"))
_db = dj_database_url.parse(
    os.environ.get("DATABASE_URL", "postgres://ordinaut_bench@127.0.0.1:5432/ordinaut_bench_api"),
    conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
)
_db["CONN_HEALTH_CHECKS"] = True

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bare-api-benchmark-baseline",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[f"{__name__}.RequestThreadsMiddleware"] if REQUEST_THREADS > 0 else [],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework", "tests.perf"],
        DATABASES={"default": _db},
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "DEFAULT_THROTTLE_CLASSES": [],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
            "UNAUTHENTICATED_USER": None,
        },
    )
    django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.db import connection, connections, models  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework import generics, serializers  # noqa: E402

TABLE = "bench_bare_item"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id bigserial PRIMARY KEY, title varchar(200) NOT NULL, created_at timestamptz NOT NULL)"
)


class Item(models.Model):
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "perf"
        db_table = TABLE
        managed = False

    def __str__(self) -> str:
        return self.title


class ItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = Item
        fields = ["id", "title", "created_at"]


class ItemCreate(generics.CreateAPIView):
    serializer_class = ItemSerializer
    queryset = Item.objects.all()


urlpatterns = [path("items", ItemCreate.as_view())]


def _upkeep() -> None:
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


class RequestThreadsMiddleware:
    """Each request's synchronous code on the least busy of REQUEST_THREADS long-lived threads."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self.get_response = get_response
        self.executors = [ThreadPoolExecutor(max_workers=1) for _ in range(REQUEST_THREADS)]
        self.busy = [0] * REQUEST_THREADS
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        index = min(range(REQUEST_THREADS), key=self.busy.__getitem__)
        self.busy[index] += 1
        try:
            async with ThreadSensitiveContext(executor=self.executors[index]):
                await sync_to_async(_upkeep)()
                response = await self.get_response(request)
                await sync_to_async(_upkeep)()
                return response
        finally:
            self.busy[index] -= 1


def _create_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(CREATE_TABLE)
    connection.close()


django_app = get_asgi_application()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Django, plus the lifespan protocol the Procfile's `--lifespan on` asks for (the table at start-up)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await sync_to_async(_create_table, thread_sensitive=False)()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await django_app(scope, receive, send)
