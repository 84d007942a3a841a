"""One factory for control-plane clients, and the one place their errors are translated.

``STARBURST_AWS_ENDPOINT`` sends every control-plane call to one endpoint (the tests
point it at moto's server on 127.0.0.1); S3 data never goes there.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..config import aws_endpoint
from ..errors import AccessDenied, ConfigError, StarburstError


class AwsClients:
    """Cached boto3 clients for one region (and an optional endpoint override)."""

    def __init__(self, region: str, environ: Mapping[str, str] | None = None) -> None:
        self.region = region
        self.endpoint_url = aws_endpoint(environ)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.calls: list[str] = []  # "service:Operation", for the IAM action list and tests

    def __call__(self, service: str, *, attempts: int = 8) -> Any:
        """A client; ``attempts`` bounds retries (small for optional lookups)."""
        with self._lock:
            client = self._clients.get(f"{service}/{attempts}")
            if client is None:
                import boto3
                from botocore.config import Config

                kwargs: dict[str, Any] = {
                    "region_name": self.region,
                    "config": Config(retries={"mode": "standard", "max_attempts": attempts}),
                }
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                client = boto3.client(service, **kwargs)
                client.meta.events.register("before-call", self._record)
                self._clients[f"{service}/{attempts}"] = client
            return client

    def _record(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls.append(f"{model.service_model.service_name}:{model.name}")


def translate(err: Exception, action: str, what: str) -> StarburstError:
    """An AWS error as the library's own, naming the action and what to do."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return ConfigError(
            f"no AWS credentials for {action}; run `aws configure` or set AWS_PROFILE "
            "(`starburst doctor` checks)"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}:
            return AccessDenied(
                f"{action} on {what} was refused ({code}); grant it to your credentials "
                "(the README lists every action the library needs)"
            )
        return StarburstError(f"{action} on {what} failed: {code}: {err}")
    return StarburstError(f"{action} on {what} failed: {err}")


def sdk_region() -> str | None:
    """The region the AWS SDK's own configuration names (``aws configure``'s config
    file or profile), for the CLI when nothing of ours does."""
    import boto3

    region = boto3.session.Session().region_name
    return str(region) if region else None
