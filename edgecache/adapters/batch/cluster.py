"""Joining a Ray cluster, or starting a local one bound to 127.0.0.1."""

from __future__ import annotations

import os
from typing import Any

from .config import BatchJobConfig


def _keep_ray_on_loopback() -> None:
    """On Linux Ray maps a 127.0.0.1 node address to the machine's routable one unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (../shared/ENVIRONMENT.md, Ray 2.60): a local node then
    registers on the external interface, and a driver joining a cluster at 127.0.0.1 dials the
    external address where nothing listens. Ray reads the variable into a constant when first
    imported, so it is set here (unless the caller set it) for the processes Ray starts, and the
    already imported constant is brought in line."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].strip().lower() in ("0", "false"):
        ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(num_cpus: int | None = None) -> Any:
    """A new single-node cluster in this process, bound to 127.0.0.1, no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _keep_ray_on_loopback()
    import ray

    return ray.init(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def connect_ray(config: BatchJobConfig) -> bool:
    """Connect as configured; True when this call started Ray (and the job should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if config.address is None:
        start_local_ray(config.num_cpus)
        return True
    host = config.address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        _keep_ray_on_loopback()
        ray.init(
            address=config.address, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False
        )
    else:
        ray.init(address=config.address, log_to_driver=False, configure_logging=False)
    return True
