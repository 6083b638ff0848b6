"""Ray for the commands that run on it (`tune --tool=ray`, `compare --engine ray`): a local Ray
of the command's own, or a running cluster at `--ray_address`, checked before anything starts.

`connected(address)` connects unless this process is connected already (a tuned Ray grid's
searches run inside the grid's connection) and disconnects what it connected; a local Ray
ends with it, a cluster's tasks of this driver are stopped by Ray as it disconnects.
"""

import contextlib
import os
import socket

from recbole_hybrid.errors import UserError
from recbole_hybrid.utils.processes import handle_sigterm_as_sigint

PROBE_SECONDS = 5.0


@contextlib.contextmanager
def connected(address=None):
    """Within the block, this process is a Ray driver: of the cluster at `address`, else of a
    local Ray over this machine's cores (address "local": its own, even where a cluster runs
    on this machine). UserError for an address where no Ray head answers."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        check_address(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as error:
            raise UserError(_connection_message(address, error)) from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)
    handle_sigterm_as_sigint()  # ray.init installed its own SIGTERM handler, which aborts
    try:
        yield
    finally:
        ray.shutdown()


def check_address(address):
    """UserError unless `address` is HOST:PORT (or ray://HOST:PORT, or auto) where something
    accepts connections: Ray itself retries a dead address for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--ray_address={address}: give the Ray head's HOST:PORT, e.g. "
                        "10.0.0.1:6379 (`ray start --head --port=6379` prints it), or leave "
                        "it out for a local Ray")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise UserError(f"--ray_address={address}: nothing answers there ({reason}); check that "
                        "the Ray head runs at that address (`ray start --head --port=...` "
                        "prints it) and that this machine can reach it, or leave "
                        "--ray_address out for a local Ray") from None


def _connection_message(address, error):
    import ray

    message = (f"cannot connect to the Ray cluster at {address} ({error}): check that its head "
               f"runs there (`ray start --head --port=...`) with this machine's Ray {ray.__version__} "
               "and Python version")
    if hasattr(ray.exceptions, "AuthenticationError") and os.environ.get("RAY_AUTH_MODE") != "token":
        message += (". A head started where ~/.ray/auth_token exists requires token "
                    "authentication: run with RAY_AUTH_MODE=token and the cluster's token in "
                    "~/.ray/auth_token (or RAY_AUTH_TOKEN)")
    return message


def node_resources():
    """[(CPUs, GPUs)] of every live node of the connected cluster."""
    import ray

    return [(node["Resources"].get("CPU", 0), node["Resources"].get("GPU", 0))
            for node in ray.nodes() if node.get("Alive")]


def check_fits(cpus, gpus, flag):
    """UserError unless some node of the connected cluster has `cpus` CPUs and `gpus` GPUs (a
    task no node can take would wait for ever)."""
    nodes = node_resources()
    if not any(c >= cpus and g >= gpus for c, g in nodes):
        raise UserError(
            f"{flag}: a task needs {cpus:g} CPUs and {gpus:g} GPUs on one node, and no node of "
            "the Ray cluster has them (its nodes: "
            + ", ".join(f"{c:g} CPUs / {g:g} GPUs" for c, g in nodes)
            + "); ask for less, or add a node that has them")


def assigned_devices():
    """The device settings of a task or trial: the GPUs Ray gave it (RecBole would point
    CUDA_VISIBLE_DEVICES at its own `gpu_id`, "0"), else the CPU."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {"use_gpu": True, "gpu_id": gpus} if gpus else {"use_gpu": False}
