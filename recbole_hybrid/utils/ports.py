"""TCP ports a command will listen on (DDP's rank 0, the HTTP service), checked before any
work starts."""

import errno
import socket

from recbole_hybrid.errors import UserError


def check_port(port, host=None, flag="--port", lowest=1, host_flag="--host"):
    """UserError unless `port` is a port number from `lowest` to 65535 (0: the system picks a
    free one, where the caller allows it) and, with `host`, one that nothing listens on at
    `host` here (a port in TIME_WAIT is free)."""
    if isinstance(port, bool) or not str(port).isdigit() or not lowest <= int(port) <= 65535:
        raise UserError(f"{flag}={port} must be a port number from {lowest} to 65535")
    if host is not None:
        bound(host, int(port), flag, host_flag).close()


def bound(host, port, flag="--port", host_flag="--host"):
    """A TCP socket bound to `port` at `host` (port 0: a free one the system picks), not yet
    listening; UserError for a host that is not an address of this machine, or a busy port."""
    advice = "give an address of this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 " \
             "(every interface)"
    if not host.strip():
        raise UserError(f"{host_flag} is empty: {advice}")
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            "127.0.0.1" if host == "localhost" else host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise UserError(f"{host_flag}={host} is not an address this machine knows "
                        f"({getattr(error, 'strerror', None) or error}): {advice}") from None
    probe = socket.socket(family, kind, protocol)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(address)
    except OSError as error:
        probe.close()
        reason = error.strerror or str(error)
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"{flag}={port} on {host} is not free ({reason}); pick another with "
                            f"{flag}, or stop what uses it") from None
        raise UserError(f"{host_flag}={host}: cannot listen there ({reason}); {advice}") from None
    return probe
