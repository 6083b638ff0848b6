"""TCP ports a command will listen on (DDP's rank 0, the HTTP service), checked before any
work starts."""

import socket

from recbole_hybrid.errors import UserError


def check_port(port, host=None, flag="--port", lowest=1):
    """UserError unless `port` is a port number from `lowest` to 65535 (0: the system picks a
    free one, where the caller allows it) and, with `host`, one that nothing listens on at
    `host` here (a port in TIME_WAIT is free)."""
    if isinstance(port, bool) or not str(port).isdigit() or not lowest <= int(port) <= 65535:
        raise UserError(f"{flag}={port} must be a port number from {lowest} to 65535")
    if host is None or int(port) == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host if host != "localhost" else "127.0.0.1", int(port)))
        except OSError as error:
            reason = error.strerror or str(error)
            raise UserError(f"{flag}={port} on {host} is not free ({reason}); pick another with "
                            f"{flag}, or stop what uses it") from None
