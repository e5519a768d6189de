"""Starting a local Ray cluster bound to 127.0.0.1, or joining one: the one place that knows how.

Used by the batch image job (`edgecache.adapters.batch`), `edgecache llm serve` and the
integration tests. Ray is imported inside the functions, so importing this module is cheap and
works without Ray installed.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["RAY_ENVIRONMENT", "connect_ray", "is_loopback_host", "keep_ray_on_loopback", "start_local_ray"]

# The environment variables these functions may set (only where the caller has not), so that a
# caller that must leave the process as it found it (a test) knows what to restore.
RAY_ENVIRONMENT = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback_host(host: str) -> bool:
    return host.strip("[]") in LOOPBACK_HOSTS


def keep_ray_on_loopback() -> None:
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
    keep_ray_on_loopback()
    import ray

    return ray.init(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def connect_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a local one (of `num_cpus` CPUs) when it is None.

    True when this call connected (the caller should `ray.shutdown()` when done); False when
    this process was already connected, to whichever cluster."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        start_local_ray(num_cpus)
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0]
    if is_loopback_host(host):
        keep_ray_on_loopback()
        ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True
