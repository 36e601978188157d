"""Typed keys for what the app holds."""

from aiohttp import web

from ollamalite.library import Library
from ollamalite.pull import Puller
from ollamalite.scheduler import Scheduler
from ollamalite.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SCHEDULER = web.AppKey("scheduler", Scheduler)
LIBRARY = web.AppKey("library", Library)
PULLER = web.AppKey("puller", Puller)
