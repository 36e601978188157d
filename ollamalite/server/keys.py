"""Typed keys for what the app holds."""

from aiohttp import web

from ollamalite.pull import Puller
from ollamalite.scheduler import Scheduler
from ollamalite.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SCHEDULER = web.AppKey("scheduler", Scheduler)
PULLER = web.AppKey("puller", Puller)
