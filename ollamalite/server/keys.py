"""Typed keys for what the app holds."""

from aiohttp import web

from ollamalite.pull.puller import Puller
from ollamalite.registry.library import Library
from ollamalite.runtime.scheduler import Scheduler
from ollamalite.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SCHEDULER = web.AppKey("scheduler", Scheduler)
LIBRARY = web.AppKey("library", Library)
PULLER = web.AppKey("puller", Puller)
