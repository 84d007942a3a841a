"""Worker logs in CloudWatch, under the stream names ECS really creates.

The awslogs driver writes each task's output to ``<stream-prefix>/<container>/<task-id>``
in the task definition's log group; locations here are ``"<group>:<stream>"``.
"""

from __future__ import annotations

from typing import Any

from .clients import AwsClients, translate


def read_events(
    clients: AwsClients, location: str, token: str | None = None
) -> tuple[list[str], str | None]:
    """New lines of a stream since ``token``; returns them and the next token."""
    group, _, stream = location.partition(":")
    logs = clients("logs")
    lines: list[str] = []
    while True:
        kwargs: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if token:
            kwargs["nextToken"] = token
        try:
            resp = logs.get_log_events(**kwargs)
        except logs.exceptions.ResourceNotFoundException:
            return lines, token  # the stream appears once the container writes
        except Exception as err:
            raise translate(err, "logs:GetLogEvents", location) from err
        lines += [e["message"] for e in resp.get("events", [])]
        nxt = resp.get("nextForwardToken")
        if not nxt or nxt == token:
            return lines, token
        token = nxt
