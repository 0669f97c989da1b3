"""ASGI entry point (``uvicorn shop_django.asgi:application``); the middleware runs async here."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_django.settings")

application = get_asgi_application()
