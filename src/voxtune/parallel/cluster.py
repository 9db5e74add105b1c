"""Joining or starting the Ray cluster a search runs on, and what the driver does with signals.

Local: always a fresh instance (never a cluster found on this machine), dashboard off, Ray's token
authentication on, as Ray 2.60 does by default (its note on how to turn that off is not printed).
--address: a head that does not answer fails in seconds with one line (Ray alone retries for minutes).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from voxtune.errors import VoxtuneError


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """One line within seconds when nothing listens at a HOST:PORT --address ("auto" and ray:// are Ray's)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise VoxtuneError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); start one "
                           "with `ray start --head --port PORT` on that node, or fix the address") from None


class _NoOptOutAdvice(logging.Filter):
    """Drops Ray's "Token authentication is enabled ... Set RAY_AUTH_MODE=disabled to opt out" warning:
    on every run, a newcomer reads it as advice to turn security off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "to opt out" not in record.getMessage()


def init_ray(address: str | None, cpus_needed: float, gpus_needed: float) -> tuple[float, dict[str, float]]:
    """Start or join Ray; returns (seconds spent, the cluster's resources)."""
    import ray

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NoOptOutAdvice())
    if address:
        check_reachable(address)
        kwargs["address"] = address
    else:
        # A saturated laptop CPU can starve the raylet's heartbeats; give it a minute, not 15 s.
        kwargs.update(address="local", include_dashboard=False,
                      _system_config={"health_check_failure_threshold": 20, "health_check_timeout_ms": 10000})
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise VoxtuneError(f"--address {address}: cannot join the Ray cluster ({exc}); is `ray start --head` "
                           "running there, and is RAY_AUTH_TOKEN_PATH set to its token?") from None
    except Exception as exc:
        if address:
            raise
        # Ray gives its own raylet a fixed 30 s to register; an overloaded machine can miss that.
        # Nothing of the search exists yet (RUN is made after Ray is up), so a plain retry loses nothing.
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        raise VoxtuneError(f"could not start a local Ray instance ({str(exc).splitlines()[0][:200]}); the "
                           f"1-minute load average is {load:.1f} on {os.cpu_count()} CPUs: run the command again "
                           "when the machine is quieter, or start Ray yourself (`ray start --head`) and pass "
                           "--address HOST:PORT") from None
    have = ray.cluster_resources()
    if have.get("CPU", 0) < cpus_needed or have.get("GPU", 0) < gpus_needed:
        ray.shutdown()
        raise VoxtuneError(f"the search needs {cpus_needed:g} CPUs and {gpus_needed:g} GPUs, but the Ray cluster "
                           f"has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; lower --workers or "
                           "--cpus-per-worker, or add nodes")
    return time.perf_counter() - t0, dict(have)


@contextmanager
def interrupt_on_stop(save: Callable[[], str], grace_s: float = 10.0) -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM (Ctrl-C, scancel, a time limit, `kill`) calls `save()`
    at once, then interrupts the block with KeyboardInterrupt; later ones are ignored. `save()` writes the
    search's state without Ray, which may be stopping under the same signal, and returns what to tell the
    user; if the clean-up that follows hangs, the process ends with 130 after `grace_s`. (ray.init
    installs a SIGTERM handler that aborts instead; this one replaces it until the block ends.)"""
    # A signal this process was started ignoring (a shell's background job and SIGINT) stays ignored.
    stops = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) != signal.SIG_IGN]
    previous = {sig: signal.getsignal(sig) for sig in stops}
    timer: list[threading.Timer] = []

    def handler(signum, frame):
        for sig in stops:  # one save: the supervisor forwards what it gets, so a Ctrl-C can come twice
            signal.signal(sig, signal.SIG_IGN)
        message = save()

        def give_up() -> None:
            print(message, file=sys.stderr, flush=True)
            os._exit(130)

        deadline = threading.Timer(grace_s, give_up)
        deadline.daemon = True
        deadline.start()
        timer.append(deadline)
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in stops:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for t in timer:
            t.cancel()
