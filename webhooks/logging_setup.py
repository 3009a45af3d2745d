"""Logging for every process: readable lines in `dev`, JSON lines otherwise (``WEBHOOKS_LOG_*`` settings).

JSON lines are formatted by python-json-logger: one object per line with ``ts``, ``level``, ``logger``,
``msg``, the ``extra={"fields": {...}}`` of the call flattened in, and ``exc`` for a traceback.

Query strings never reach the log: uvicorn's access log line names the path only, because a GraphQL query
sent with GET carries the query text and variables (customer data) in the URL.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from webhooks.settings import Settings, get_settings


class JsonFormatter(_JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg", "exc_info": "exc"},
            reserved_attrs=[*_RESERVED, "fields"],
            exc_info_as_array=False,
        )
        self.converter = time.gmtime

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message: dict[str, Any]
    ) -> None:
        log_data["ts"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        super().add_fields(log_data, record, message)
        log_data["level"] = str(log_data.get("level", "")).lower()
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):
            log_data.update(fields)


_RESERVED = [
    "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelno", "lineno",
    "module", "msecs", "msg", "pathname", "process", "processName", "relativeCreated", "stack_info", "thread",
    "threadName", "taskName",
]  # fmt: skip


class DropQueryStrings(logging.Filter):
    """uvicorn's access line ``'%s - "%s %s HTTP/%s" %d'`` has the path and query as its third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def configure_logging(json_lines: bool | None = None, settings: Settings | None = None) -> None:
    """Configure the root logger from ``settings`` (default: the environment's); ``json_lines`` overrides."""
    settings = settings or get_settings()
    if json_lines is None:
        json_lines = settings.log_format == "json"
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryStrings) for f in access.filters):
        access.addFilter(DropQueryStrings())
