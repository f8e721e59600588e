"""sd_notify(3) in a few lines: tell systemd we are ready, alive, or stopping.

The protocol is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that variable
(not started by systemd with ``Type=notify``) every call is a no-op, so the daemon runs the
same in a terminal, a container or a test.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=polling 3 devices"``) as one message.

    Returns False when there is no service manager to tell, or it could not be reached; never
    raises: a missing watchdog ping is systemd's business, not a reason to stop collecting data.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.debug("sd_notify failed", extra={"socket": address, "error": repr(exc)})
        return False
    return True


def watchdog_interval_s() -> float | None:
    """The watchdog period systemd expects (``WatchdogSec=``), or None when it is off.

    As in sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` gives the period, and ``$WATCHDOG_PID``,
    when set, must be our own pid (the variables are inherited by children otherwise).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None
