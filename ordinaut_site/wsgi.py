"""WSGI entry point (the shipped server is ASGI; this serves tools that expect WSGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
application = get_wsgi_application()
