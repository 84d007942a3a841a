"""Watching an EC2 Spot instance's interruption notice from inside its container.

EC2 announces a Spot reclaim two minutes ahead in the instance metadata
(``/latest/meta-data/spot/instance-action``: 404 until then, then JSON with the action
and its time). ECS drains the instance on that notice only when the agent has
``ECS_ENABLE_SPOT_INSTANCE_DRAINING`` (``starburst setup`` sets it); a worker that
watches the notice itself hands its task back in time either way. The watch uses
IMDSv2 (a session token, as instances launched by setup require) over the standard
library only, polls every 5 seconds as AWS advises, and calls ``on_notice`` once.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger("starburst_executor.worker")

IMDS = "http://169.254.169.254"
POLL_SECONDS = 5.0
TOKEN_TTL = 21600
# A container on Fargate, or an instance without metadata access, never answers: after
# this many failed token requests in a row the watch ends quietly.
MAX_FAILURES = 6


class SpotWatch:
    """A daemon thread that calls ``on_notice(action)`` when the instance's Spot
    interruption notice appears."""

    def __init__(
        self,
        on_notice: Callable[[dict[str, str]], None],
        *,
        endpoint: str = IMDS,
        interval: float = POLL_SECONDS,
    ) -> None:
        self._on_notice = on_notice
        self._endpoint = endpoint.rstrip("/")
        self._interval = interval
        self._stop = threading.Event()
        self._token = ""
        self._thread = threading.Thread(target=self._run, name="starburst-spot", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _request(self, request: urllib.request.Request) -> bytes:
        with urllib.request.urlopen(request, timeout=2) as response:
            body: bytes = response.read()
            return body

    def _refresh_token(self) -> None:
        request = urllib.request.Request(
            f"{self._endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
        )
        self._token = self._request(request).decode()

    def check(self) -> dict[str, str] | None:
        """The notice, when there is one (raises ``OSError`` or ``HTTPException`` when
        IMDS cannot be reached or answers garbage)."""
        if not self._token:
            self._refresh_token()
        request = urllib.request.Request(
            f"{self._endpoint}/latest/meta-data/spot/instance-action",
            headers={"X-aws-ec2-metadata-token": self._token},
        )
        try:
            body = self._request(request)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None  # no interruption scheduled
            if err.code == 401:
                self._token = ""  # expired: the next check asks for a new one
                return None
            raise
        try:
            notice = json.loads(body)
        except ValueError:
            notice = {}
        return {str(k): str(v) for k, v in notice.items()} if isinstance(notice, dict) else {}

    def _run(self) -> None:
        failures, delay = 0, 0.0
        while not self._stop.wait(delay):
            delay = self._interval
            try:
                notice = self.check()
            except (OSError, http.client.HTTPException) as err:
                failures += 1
                if failures >= MAX_FAILURES:
                    log.info("instance metadata unreachable (%s); not watching for Spot", err)
                    return
                continue
            failures = 0
            if notice is not None:
                log.warning("Spot interruption notice: %s", notice)
                self._on_notice(notice)
                return
