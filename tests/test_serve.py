"""The HTTP service as a client sees it: a real server process on a free port, a real client."""

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from conftest import N_USERS, free_port, write_tiny_dataset
from recbole.data import data_preparation
from recbole.utils import get_model, init_seed

from recbole_hybrid import cli
from recbole_hybrid.data.atomic_files import create_dataset
from recbole_hybrid.serving.recommender import Recommender
from recbole_hybrid.config.builder import build_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of an (untrained) MaTrRec on the tiny dataset, and its Recommender."""
    folder = tmp_path_factory.mktemp("serve")
    write_tiny_dataset(str(folder))
    config = build_config("MaTrRec", "tiny", overrides=dict(
        MAX_ITEM_LIST_LENGTH=10, hidden_size=16, d_state=8, inner_size=32,
        data_path=str(folder), train_neg_sample_args=None))
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(0, True)
    model = get_model("MaTrRec")(config, train._dataset)
    torch.save({"config": config, "state_dict": model.state_dict()}, folder / "model.pth")
    recommender = Recommender.load(str(folder / "model.pth"), device="cpu")
    recommender.save(str(folder / "model.bundle"))
    return str(folder / "model.bundle"), recommender


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """`recbole-hybrid serve` in a subprocess; its URL. Stopped (and checked gone) at the end."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "recbole_hybrid", "serve", f"--model_file={bundle[0]}",
         f"--port={port}", "--threads=1", "--max_batch=32", "--max_wait_ms=20"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, f"the server exited:\n{log.seek(0) or log.read()}"
            assert time.time() < deadline, "the server did not answer /health within 120 s"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("the server did not stop on SIGTERM within 30 s")
        log.close()
    assert process.poll() is not None


def test_answers_equal_the_library(server, bundle):
    _, recommender = bundle
    cases = [
        ({"user": "7"}, recommender.recommend(users=["7"])[0]),
        ({"user": 7, "k": 3, "exclude_seen": False},
         recommender.recommend(users=["7"], k=3, exclude_seen=False)[0]),
        ({"items": ["3", 4, "nope"], "k": 5},
         recommender.recommend(sequences=[["3", "4", "nope"]], k=5)[0]),
    ]
    for body, expected in cases:
        response = httpx.post(f"{server}/recommend", json=body)
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["items"] == expected["items"] and got["user"] == expected["user"]
        assert got["scores"] == pytest.approx(expected["scores"], abs=1e-5)
        assert got["ignored"] == expected["ignored"]
    assert response.json()["ignored"] == ["nope"]


def test_bad_input_is_a_4xx_and_the_server_keeps_serving(server):
    cases = [
        ({"user": "nobody"}, 400, "unknown user 'nobody'"),
        ({"items": ["x", "y"]}, 400, "none of the items 'x', 'y' is known"),
        ({"items": []}, 400, "the item sequence is empty"),
        ({"user": "1", "k": 0}, 400, "k must be an integer from 1 to 30"),
        ({"user": "1", "k": 31}, 400, "got 31"),
        ({"user": "1", "k": "ten"}, 422, "invalid request (k: "),
        ({"user": "1", "exclude_seen": "maybe"}, 422, "exclude_seen"),
        ({"user": "1", "items": ["2"]}, 400, 'give either "user"'),
        ({}, 400, 'give either "user"'),
        ([1, 2], 422, "invalid request"),
        ('{"user": "1", ', 400, "not valid JSON"),
    ]
    for body, status, detail in cases:
        if isinstance(body, str):
            response = httpx.post(f"{server}/recommend", content=body,
                                  headers={"content-type": "application/json"})
        else:
            response = httpx.post(f"{server}/recommend", json=body)
        assert response.status_code == status, (body, response.text)
        assert isinstance(response.json()["detail"], str) and detail in response.json()["detail"]
    health = httpx.get(f"{server}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.post(f"{server}/recommend", json={"user": "1"}).status_code == 200


def test_concurrent_requests_are_batched_and_all_answered(server, bundle):
    _, recommender = bundle
    bodies = [{"user": str(i % N_USERS + 1), "k": i % 7 + 1, "exclude_seen": i % 3 > 0}
              for i in range(96)]
    before = httpx.get(f"{server}/health").json()

    async def send_all():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*(client.post("/recommend", json=b) for b in bodies))

    responses = asyncio.run(send_all())
    after = httpx.get(f"{server}/health").json()
    for body, response in zip(bodies, responses):
        assert response.status_code == 200
        expected = recommender.recommend(users=[body["user"]], k=body["k"],
                                         exclude_seen=body["exclude_seen"])[0]
        assert response.json()["items"] == expected["items"]
        assert response.json()["scores"] == pytest.approx(expected["scores"], abs=1e-5)
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == len(bodies)
    assert batches <= len(bodies) // 4, f"{requests} requests in {batches} batches"


def test_openapi_docs(server):
    assert httpx.get(f"{server}/docs").status_code == 200
    schema = httpx.get(f"{server}/openapi.json").json()
    assert "/recommend" in schema["paths"] and "/health" in schema["paths"]


def test_a_busy_port_is_a_clear_error(bundle, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = cli.main(["serve", f"--model_file={bundle[0]}", f"--port={busy.getsockname()[1]}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --port=") and "on 127.0.0.1 is not free" in err


@pytest.mark.parametrize("host, message", [
    ("", "--host is empty: give an address of this machine"),
    ("nosuch.invalid", "--host=nosuch.invalid is not an address this machine knows"),
    ("999.1.1.1", "--host=999.1.1.1 is not an address this machine knows"),
    ("192.0.2.1", "--host=192.0.2.1: cannot listen there (Cannot assign requested address)"),
])
@pytest.mark.parametrize("port", [0, 8123])
def test_a_host_that_is_not_here_is_a_clear_error_before_the_model_loads(
        host, message, port, capsys, monkeypatch):
    from recbole_hybrid.cli import recommend

    monkeypatch.setattr(recommend, "_load", lambda args: pytest.fail("the model was loaded"))
    code = cli.main(["serve", "--model_file=x.bundle", f"--host={host}", f"--port={port}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_port_0_serves_on_a_free_port_and_says_which(bundle, capsys, monkeypatch):
    import uvicorn

    from recbole_hybrid.serving import http as serve_module

    ports = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets: ports.append(sockets[0].getsockname()[1]))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    serve_module.serve(bundle[1], port=0)
    assert ports[0] > 0 and f"at http://127.0.0.1:{ports[0]} (POST" in capsys.readouterr().out


class _CountingRecommender:
    """Stands in for a Recommender in MicroBatcher: remembers each batch's size."""

    def __init__(self):
        self.sizes = []

    def top_k(self, queries, ks, exclude_seen):
        self.sizes.append(len(queries))
        return [{"query": q} for q in queries]


def test_a_lone_request_does_not_wait_but_concurrent_ones_do():
    """max_wait (here 0.5 s) applies only after a batch of several requests."""
    from recbole_hybrid.serving.http import MicroBatcher

    async def scenario():
        recommender = _CountingRecommender()
        batcher = MicroBatcher(recommender, max_batch=64, max_wait=0.5)
        worker = asyncio.create_task(batcher.run())
        try:
            started = time.perf_counter()
            assert await batcher.submit("alone", 1, True) == {"query": "alone"}
            lone = time.perf_counter() - started
            # three queued together: one batch, without a wait
            await asyncio.gather(*(batcher.submit(q, 1, True) for q in "abc"))
            started = time.perf_counter()
            late = asyncio.create_task(batcher.submit("d", 1, True))
            await asyncio.sleep(0.1)  # within the wait that follows a batch of three
            await asyncio.gather(late, batcher.submit("e", 1, True))
            waited = time.perf_counter() - started
        finally:
            worker.cancel()
            batcher.worker.shutdown()
        return recommender.sizes, lone, waited

    sizes, lone, waited = asyncio.run(scenario())
    assert lone < 0.25, f"a lone request waited {lone:.3f} s"
    assert sizes == [1, 3, 2], sizes
    assert waited >= 0.45, f"the wait after a batch of three lasted {waited:.3f} s"


def test_serve_keeps_what_it_loaded_out_of_the_garbage_collector(bundle, monkeypatch):
    """Full collections over the loaded model and vocabularies stalled requests for ~0.2 s."""
    import uvicorn

    from recbole_hybrid.serving import http as serve_module

    frozen = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets: frozen.append(gc.get_freeze_count()))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    serve_module.serve(bundle[1], port=free_port())
    assert frozen and frozen[0] > 10000, frozen
    assert gc.get_freeze_count() == 0  # unfrozen once it stops, for the interpreter's last pass


# The model takes 5 s per batch and marks when it starts one: a request is surely in flight.
SLOW_SERVE = """
import sys, time
from recbole_hybrid import cli
from recbole_hybrid.serving.recommender import Recommender

top_k = Recommender.top_k
def slow_top_k(self, *args):
    open(sys.argv[1], "w").close()
    time.sleep(5)
    return top_k(self, *args)
Recommender.top_k = slow_top_k
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [1, 2])
def test_ctrl_c_answers_the_request_in_flight_and_a_second_one_stops_at_once(
        bundle, tmp_path, ctrl_c):
    """Once: the request in flight is answered, then 130. Twice: it gets a 503 JSON at once,
    and the process exits 130 with one line, no traceback of a cancelled task."""
    port, marker = free_port(), tmp_path / "scoring"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SERVE, str(marker), "serve", f"--model_file={bundle[0]}",
         f"--port={port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    url, answers = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None and time.time() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = threading.Thread(target=lambda: answers.append(
            (httpx.post(f"{url}/recommend", json={"user": "1"}, timeout=60), time.time())))
        client.start()
        while not marker.exists():
            assert time.time() < deadline, "the request never reached the model"
            time.sleep(0.05)
        signalled = time.time()
        for _ in range(ctrl_c):
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
        client.join(timeout=60)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    (response, answered), = answers
    if ctrl_c == 1:
        assert response.status_code == 200 and len(response.json()["items"]) == 10
        assert answered - signalled > 4  # it waited for the model
    else:
        assert response.status_code == 503, response.text
        assert "stopped before this request was answered" in response.json()["detail"]
        assert answered - signalled < 3
    assert process.returncode == 130
    assert err.strip() == f"interrupted: the service at {url} stopped", err
