"""Load on `recbole-hybrid serve`: requests per second and latency, micro-batching on and off.

For each bundle and each mode (batched: --max_batch 64; one by one: --max_batch 1) a server is
started on 127.0.0.1, warmed up, and sent a fixed number of `POST /recommend {"user": u,
"k": 10}` requests (random users) from 1, 8 and 64 concurrent clients, each client one
keep-alive connection. The client is a minimal HTTP/1.1 writer/reader on asyncio streams, so
that on a small machine it takes little of the CPU the server needs. Prints a markdown table.

    python benchmarks/serve_load.py --bundles matrrec.bundle sasrec.bundle --requests 2000
"""

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import zipfile


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", nargs="+", required=True)
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--max_wait_ms", type=float, default=2.0)
    parser.add_argument("--max_batch", type=int, default=64, help="the batched mode's --max_batch")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, server torch threads {args.threads}, batched: --max_batch "
          f"{args.max_batch} --max_wait_ms {args.max_wait_ms}, {args.requests} requests per row, "
          "k=10\n")
    print("| model | mode | clients | requests/s | p50 ms | p99 ms | mean batch | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.bundles:
        with zipfile.ZipFile(path) as archive:
            model = json.loads(archive.read("manifest.json"))["model"]
            users = json.loads(archive.read("vocabulary.json"))["users"][1:]
        for mode, max_batch in (("batched", args.max_batch), ("one by one", 1)):
            with Server(path, max_batch, args.threads, args.max_wait_ms) as server:
                asyncio.run(load(server.port, users, 200, 8))  # warm-up
                for clients in args.concurrency:
                    before = server.health()
                    seconds, latencies = asyncio.run(
                        load(server.port, users, args.requests, clients))
                    after = server.health()
                    batch = ((after["requests"] - before["requests"])
                             / (after["batches"] - before["batches"]))
                    latencies.sort()
                    print(f"| {model} | {mode} | {clients} | {len(latencies) / seconds:.0f} | "
                          f"{1000 * latencies[len(latencies) // 2]:.1f} | "
                          f"{1000 * latencies[int(len(latencies) * 0.99)]:.1f} | {batch:.1f} | "
                          f"{os.getloadavg()[0]:.1f} |", flush=True)


class Server:
    """`recbole-hybrid serve` in a subprocess on a free port, stopped on exit."""

    def __init__(self, bundle, max_batch, threads, max_wait_ms):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.command = [sys.executable, "-m", "recbole_hybrid", "serve", f"--model_file={bundle}",
                        f"--port={self.port}", f"--max_batch={max_batch}", f"--threads={threads}",
                        f"--max_wait_ms={max_wait_ms}", "--device=cpu"]

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.time() + 180
        while time.time() < deadline and self.process.poll() is None:
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("the server did not start: " + " ".join(self.command))

    def __exit__(self, *exc_info):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def health(self):
        return json.loads(asyncio.run(request(self.port, "GET", "/health")))


async def request(port, method, path, body=b""):
    """One request on a new connection; the response body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await exchange(reader, writer, method, path, body)
    finally:
        writer.close()


async def exchange(reader, writer, method, path, body):
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"{method} {path}: {status.decode().strip()}")
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return await reader.readexactly(length)


async def load(port, users, n, clients):
    """`n` recommendations from `clients` concurrent keep-alive connections:
    (wall seconds, each request's latency in seconds)."""
    rng = random.Random(0)
    bodies = [json.dumps({"user": rng.choice(users), "k": 10}).encode() for _ in range(n)]
    latencies = []

    async def client(share):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for body in share:
            started = time.perf_counter()
            await exchange(reader, writer, "POST", "/recommend", body)
            latencies.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(bodies[i::clients]) for i in range(clients)))
    return time.perf_counter() - started, latencies


if __name__ == "__main__":
    main()
