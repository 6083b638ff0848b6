"""An HTTP service for a trained model (FastAPI + uvicorn: `pip install recbole-hybrid[serve]`).

    POST /recommend  {"user": "12"} or {"items": ["3", "7"]}, optional "k" (10) and
                     "exclude_seen" (true) -> {"user", "items", "scores", "ignored"}
    GET  /health     model, dataset, sizes, and how many requests were scored in how many batches
    GET  /docs       the OpenAPI documentation FastAPI generates

Requests that arrive together are scored as one batch (micro-batching): a batch opens with
the first waiting request, waits `max_wait` seconds for others (only when the batch before
held more than one request: a lone client does not wait), and takes up to `max_batch` of them;
one worker thread runs the model, so new requests gather while a batch is scored.
Bad input is a 4xx with a JSON `detail` sentence; the service keeps serving.

Ctrl-C (or SIGTERM) stops taking connections, answers the requests in flight and exits with 130;
a second Ctrl-C answers the requests still waiting with a 503 JSON and exits at once (after the
batch the model is scoring, if any), quietly, with 130.
"""

import asyncio
import contextlib
import gc
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Union

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictBool, StrictInt

from recbole_hybrid.errors import Interrupted, InvalidQueryError, UserError
from recbole_hybrid.utils.ports import bound

Token = Union[StrictInt, str]


class RecommendRequest(BaseModel):
    """A user token (their whole history) or a sequence of item tokens, oldest first."""

    user: Optional[Token] = None
    items: Optional[List[Token]] = None
    k: StrictInt = 10
    exclude_seen: StrictBool = True


class RecommendResponse(BaseModel):
    user: Optional[str]
    items: List[str]
    scores: List[float]
    ignored: List[str]


class ShuttingDown(Exception):
    """The service was stopped at once (a second Ctrl-C) before this request was answered."""


class MicroBatcher:
    """Collects concurrent requests into batches for `recommender.top_k`."""

    def __init__(self, recommender, max_batch, max_wait):
        self.recommender, self.max_batch, self.max_wait = recommender, max_batch, max_wait
        self.queue = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="recommend")
        self.requests = self.batches = 0
        self.waiting = set()  # the futures of requests not answered yet
        self.closed = False

    async def submit(self, query, k, exclude_seen):
        """The result dict of one Query (see `Recommender.top_k`), once its batch is scored."""
        if self.closed:
            raise ShuttingDown()
        future = asyncio.get_running_loop().create_future()
        self.waiting.add(future)
        future.add_done_callback(self.waiting.discard)
        await self.queue.put((query, k, exclude_seen, future))
        return await future

    def close(self):
        """Answer every waiting request with ShuttingDown, and every later one (loop thread)."""
        self.closed = True
        for future in list(self.waiting):
            if not future.done():
                future.set_exception(ShuttingDown())

    async def run(self):
        loop = asyncio.get_running_loop()
        previous = 1  # the size of the batch before
        while True:
            batch = [await self.queue.get()]
            if previous > 1 and self.max_wait > 0:  # previous is 1 when max_batch is 1
                await asyncio.sleep(self.max_wait)
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            queries, ks, exclude, futures = map(list, zip(*batch))
            try:
                results = await loop.run_in_executor(
                    self.worker, self.recommender.top_k, queries, ks, exclude
                )
            except Exception as error:  # reported to every request of the batch as a 500
                results = [error] * len(batch)
            self.requests, self.batches = self.requests + len(batch), self.batches + 1
            previous = len(batch)
            for future, result in zip(futures, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def create_app(recommender, max_batch=64, max_wait=0.002):
    """The FastAPI application serving `recommender` (a `recbole_hybrid.Recommender`)."""
    batcher = MicroBatcher(recommender, max_batch, max_wait)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.worker.shutdown(wait=False, cancel_futures=True)  # nothing waits on it any more

    app = FastAPI(
        title="recbole-hybrid",
        description=f"Top-k recommendations of {recommender.name}.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.exception_handler(UserError)
    async def bad_query(request, error):
        return JSONResponse(status_code=400, content={"detail": str(error)})

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request, error):
        return JSONResponse(status_code=503, headers={"Connection": "close"}, content={
            "detail": "the service was stopped before this request was answered; send it again "
                      "once the service is back (or to another instance)"})

    @app.exception_handler(RequestValidationError)
    async def bad_body(request, error):
        problems = error.errors()
        if any(p["type"] == "json_invalid" for p in problems):
            return JSONResponse(status_code=400, content={
                "detail": "the request body is not valid JSON: send e.g. "
                          '{"user": "12", "k": 10} or {"items": ["3", "7"]}'})
        where = "; ".join(f"{'.'.join(str(part) for part in p['loc'][1:]) or 'body'}: {p['msg']}"
                          for p in problems)
        return JSONResponse(status_code=422, content={"detail": f"invalid request ({where})"})

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: RecommendRequest):
        """Top-k items for a user or for a sequence of items, with their scores."""
        if (request.user is None) == (request.items is None):
            raise InvalidQueryError('give either "user" (a user token) or "items" (a list of '
                                    "item tokens, oldest first), not both or neither")
        recommender.check_k(request.k)
        query = (recommender.user_query(request.user) if request.user is not None
                 else recommender.sequence_query(request.items))
        # a plain JSONResponse: the result needs no second validation against the model
        return JSONResponse(await batcher.submit(query, request.k, request.exclude_seen))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": recommender.config["model"],
                "dataset": recommender.config["dataset"],
                "users": len(recommender.users) - 1, "items": len(recommender.items) - 1,
                "max_batch": max_batch, "requests": batcher.requests, "batches": batcher.batches}

    return app


class _Server(uvicorn.Server):
    """uvicorn's server; on its forced exit (a second Ctrl-C) the waiting requests get a 503
    and the application's lifespan still ends, instead of two tracebacks of cancelled tasks."""

    def __init__(self, config, batcher):
        super().__init__(config)
        self.batcher, self.loop = batcher, None

    async def serve(self, sockets=None):
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        if self.force_exit and self.loop is not None:
            self.loop.call_soon_threadsafe(self.batcher.close)

    async def shutdown(self, sockets=None):
        await super().shutdown(sockets)
        if self.force_exit:  # uvicorn skips the lifespan's end then
            for _ in range(100):  # the 503s take microseconds: at most 1 s
                if not self.server_state.tasks:
                    break
                await asyncio.sleep(0.01)
            await self.lifespan.shutdown()


def serve(recommender, host="127.0.0.1", port=8000, max_batch=64, max_wait=0.002, threads=1):
    """Serve `recommender` until interrupted, the model on `threads` torch threads (port 0:
    a free port, printed)."""
    torch.set_num_threads(threads)
    app = create_app(recommender, max_batch, max_wait)
    server = _Server(uvicorn.Config(app, access_log=False, log_level="warning"),
                     app.state.batcher)
    listener = bound(host, port)
    url = f"http://{host}:{listener.getsockname()[1]}"
    # What is loaded now lives as long as the server: out of the collector's full passes,
    # which otherwise stop every request for about 0.2 s now and then (benchmarks/serve_load.py)
    gc.collect()
    gc.freeze()
    print(f"serving {recommender.name} at {url} (POST /recommend, GET /health, docs at /docs); "
          "Ctrl-C stops", flush=True)
    try:
        server.run(sockets=[listener])  # raises the signal that stopped it again
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: the service at {url} stopped") from None
    finally:
        gc.unfreeze()  # frozen objects outlive the interpreter's last collection: "leaked"
