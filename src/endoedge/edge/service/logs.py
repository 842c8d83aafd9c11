"""Structured log lines of the daemon and its workers (one logger, ``endoedge.daemon``)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("endoedge.daemon")
_LOG_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def log_event(level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with structured fields (printed as ``key=value`` by the CLI's formatters)."""
    log.log(level, event, extra={f"{k}_" if k in _LOG_RESERVED else k: v for k, v in fields.items()})
