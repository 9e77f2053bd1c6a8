"""Access-log hygiene: no credential ever reaches a log line. A key sent in the query string (which the
service refuses: keys go in X-API-Key or Authorization) is redacted from uvicorn's access log."""
from __future__ import annotations

import logging
import re

SECRET_PARAMS = re.compile(r"(?i)([?&](?:api[_-]?key|x-api-key|key|token|access_token|auth)=)[^&\s]*")


def redact(path: str) -> str:
    return SECRET_PARAMS.sub(r"\1<redacted>", path)


class RedactSecrets(logging.Filter):
    """uvicorn.access records carry (client, method, path with query, http version, status) as args."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            args = list(record.args)
            args[2] = redact(args[2])
            record.args = tuple(args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
