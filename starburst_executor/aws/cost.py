"""What workers cost: an hourly rate per worker, an estimate before launch, actuals after.

Fargate: per vCPU-hour and GB-hour of the session's region from the Pricing API (the
us-east-1 figures below when it cannot be read, and for Spot, whose prices the API does
not list). EC2: the on-demand price from the Pricing API (a static table when it cannot
be read), Spot from the recent spot-price history; a worker's share is its vCPUs over
the instance's. Actual cost sums each ECS task's billed time at the rate: Fargate bills
from the start of the image pull, with a one-minute minimum.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .clients import AwsClients

log = logging.getLogger("starburst_executor")

# us-east-1, Linux/x86 (USD). ARM Fargate is 20% cheaper.
FARGATE = {"vcpu_hour": 0.04048, "gb_hour": 0.004445}
FARGATE_SPOT = {"vcpu_hour": 0.01212184, "gb_hour": 0.00133125}
STATIC_EC2_HOURLY = {
    "c7i.large": 0.08925,
    "c7i.xlarge": 0.1785,
    "c7i.2xlarge": 0.357,
    "c7g.xlarge": 0.145,
    "c7g.2xlarge": 0.29,
    "c8a.xlarge": 0.19264,
    "m7i.xlarge": 0.2016,
    "m7g.xlarge": 0.1632,
    "r7i.xlarge": 0.2646,
}
_SIZE_VCPUS = {"medium": 1, "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32}


@dataclass(frozen=True)
class Rate:
    """The hourly price of one worker, and where the figure came from."""

    per_worker_hour: float
    source: str

    def estimate(self, workers: int, hours: float = 1.0) -> float:
        return round(self.per_worker_hour * workers * hours, 4)


FARGATE_MINIMUM_SECONDS = 60.0


def _fargate_region_prices(clients: AwsClients, arm: bool) -> dict[str, float] | None:
    """``{"vcpu_hour", "gb_hour"}`` of the clients' region from the Pricing API, or None.

    ECS's usage types are ``<REGION>-Fargate-vCPU-Hours:perCPU`` and
    ``<REGION>-Fargate-GB-Hours`` (``-ARM-`` after ``Fargate`` for Graviton).
    """
    kind = "Fargate-ARM-" if arm else "Fargate-"
    wanted = {"vcpu_hour": kind + "vCPU-Hours:perCPU", "gb_hour": kind + "GB-Hours"}
    try:
        source = clients if clients.endpoint_url else AwsClients("us-east-1")
        pages = (
            source("pricing", attempts=2)
            .get_paginator("get_products")
            .paginate(
                ServiceCode="AmazonECS",
                Filters=[{"Type": "TERM_MATCH", "Field": "regionCode", "Value": clients.region}],
            )
        )
        found: dict[str, float] = {}
        for page in pages:
            for item in page.get("PriceList", []):
                product = json.loads(item)
                usage = str(product.get("product", {}).get("attributes", {}).get("usagetype"))
                name = next((k for k, v in wanted.items() if usage.endswith("-" + v)), None)
                if name is None:
                    continue
                term = next(iter(product["terms"]["OnDemand"].values()))
                dimension = next(iter(term["priceDimensions"].values()))
                found[name] = float(dimension["pricePerUnit"]["USD"])
            if len(found) == len(wanted):
                return found
    except Exception as err:
        log.info("Fargate prices of %s from the static table (%s)", clients.region, err)
    return None


def fargate_rate(
    cpu: float,
    memory_mb: int,
    *,
    spot: bool,
    arm: bool = False,
    clients: AwsClients | None = None,
) -> Rate:
    """The hourly price of one Fargate worker; in ``clients``' region when given."""
    if clients is not None and not spot:
        regional = _fargate_region_prices(clients, arm)
        if regional is not None:
            per_hour = cpu * regional["vcpu_hour"] + memory_mb / 1024 * regional["gb_hour"]
            return Rate(round(per_hour, 6), f"pricing-api ({clients.region})")
    prices = FARGATE_SPOT if spot else FARGATE
    per_hour = cpu * prices["vcpu_hour"] + memory_mb / 1024 * prices["gb_hour"]
    if arm and not spot:
        per_hour *= 0.8
    where = "" if clients is None or clients.region == "us-east-1" else " (us-east-1 prices)"
    return Rate(round(per_hour, 6), ("fargate-spot-static" if spot else "fargate-static") + where)


def _instance_vcpus(clients: AwsClients, instance_type: str) -> int:
    try:
        info = clients("ec2", attempts=2).describe_instance_types(InstanceTypes=[instance_type])
        return int(info["InstanceTypes"][0]["VCpuInfo"]["DefaultVCpus"])
    except Exception:
        return _SIZE_VCPUS.get(instance_type.split(".", 1)[-1], 4)


def _on_demand(clients: AwsClients, instance_type: str, region: str) -> tuple[float, str] | None:
    try:
        # The Pricing API lives in us-east-1; a price is optional, so fail fast.
        source = clients if clients.endpoint_url else AwsClients("us-east-1")
        pricing = source("pricing", attempts=2)
        resp = pricing.get_products(
            ServiceCode="AmazonEC2",
            Filters=[
                {"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type},
                {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
                {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
                {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
                {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
            ],
            MaxResults=1,
        )
        product = json.loads(resp["PriceList"][0])
        term = next(iter(product["terms"]["OnDemand"].values()))
        dimension = next(iter(term["priceDimensions"].values()))
        return float(dimension["pricePerUnit"]["USD"]), "pricing-api"
    except Exception as err:
        log.info("EC2 price for %s from the static table (%s)", instance_type, err)
        if instance_type in STATIC_EC2_HOURLY:
            return STATIC_EC2_HOURLY[instance_type], "static-table"
        return None


def _spot(clients: AwsClients, instance_type: str) -> float | None:
    try:
        history = clients("ec2", attempts=2).describe_spot_price_history(
            InstanceTypes=[instance_type],
            ProductDescriptions=["Linux/UNIX"],
            StartTime=datetime.now(timezone.utc) - timedelta(hours=6),
            MaxResults=50,
        )["SpotPriceHistory"]
    except Exception as err:
        log.info("no spot price history for %s (%s)", instance_type, err)
        return None
    prices = [float(h["SpotPrice"]) for h in history]
    return statistics.median(prices) if prices else None


def ec2_rate(clients: AwsClients, instance_type: str, cpu: float, *, spot: bool) -> Rate:
    share = cpu / max(1, _instance_vcpus(clients, instance_type))
    if spot:
        price = _spot(clients, instance_type)
        if price is not None:
            return Rate(round(price * share, 6), "spot-price-history")
    found = _on_demand(clients, instance_type, clients.region)
    if found is None:
        return Rate(0.0, f"unknown price for {instance_type}")
    return Rate(round(found[0] * share, 6), found[1])


def actual_cost(
    tasks: Iterable[Mapping[str, Any]],
    rate: Rate,
    now: datetime | None = None,
    *,
    fargate: bool = False,
) -> float:
    """Sum of each ECS task's billed time at ``rate``: startedAt to stoppedAt (or now);
    on Fargate from pullStartedAt, with a one-minute minimum."""
    current = now or datetime.now(timezone.utc)
    hours = 0.0
    for task in tasks:
        started = task.get("pullStartedAt") if fargate else None
        if not isinstance(started, datetime):
            started = task.get("startedAt")
        if not isinstance(started, datetime):
            continue
        stopped = task.get("stoppedAt")
        end = stopped if isinstance(stopped, datetime) else current
        seconds = max(0.0, (end - started).total_seconds())
        if fargate:
            seconds = max(seconds, FARGATE_MINIMUM_SECONDS)
        hours += seconds / 3600
    return round(hours * rate.per_worker_hour, 6)


def recorded_tasks(
    registry: Iterable[Mapping[str, Any]], listed: Collection[str]
) -> list[dict[str, datetime]]:
    """The session's own record of ECS workers that ECS no longer lists (it forgets a
    stopped task after about an hour), as ``actual_cost`` reads tasks: each worker's
    start, and its last registry write (its exit, or its start when it was killed)."""
    tasks = []
    for entry in registry:
        arn, started, updated = entry.get("task_arn"), entry.get("started"), entry.get("updated")
        if not arn or arn in listed or not isinstance(started, (int, float)):
            continue
        end = updated if isinstance(updated, (int, float)) else started
        tasks.append(
            {
                "startedAt": datetime.fromtimestamp(started, timezone.utc),
                "stoppedAt": datetime.fromtimestamp(max(end, started), timezone.utc),
            }
        )
    return tasks
