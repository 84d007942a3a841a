"""What a worker on ECS learns about its own task from the task metadata endpoint.

ECS gives every container ``ECS_CONTAINER_METADATA_URI_V4``, a link-local endpoint
that answers without credentials; ``<uri>/task`` names the task's ARN. A worker that
knows it registers under the id the launcher recorded for that task, so the
session's own registry keeps each ECS worker's start and stop times (for the cost
after ECS has forgotten a stopped task, about an hour later).
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.request

log = logging.getLogger("starburst_executor.worker")


def own_task_arn(metadata_uri: str | None, attempts: int = 3) -> str | None:
    """The ARN of the ECS task this process runs in, or None off ECS or on failure."""
    if not metadata_uri:
        return None
    error: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(f"{metadata_uri.rstrip('/')}/task", timeout=2) as r:
                arn = json.loads(r.read()).get("TaskARN")
            return str(arn) if arn else None
        except (OSError, ValueError, AttributeError, http.client.HTTPException) as err:
            error = err
    log.info("task metadata unreadable (%s); registering under a fresh id", error)
    return None
