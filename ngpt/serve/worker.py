"""The one generation worker: a thread that owns the model and serves every request, a step at a time.

    worker = GenerationWorker(engine, max_active=8, max_waiting=64); worker.start()
    job = worker.submit(prompt_ids, SamplingParams(...))   # from the event loop; ServerBusy when full
    async for step in job.steps(): ...                       # engine Steps, the last with finish_reason
    job.cancel()                                             # the worker drops it before its next step
    worker.stop()

Only this thread touches the model, and each request has its own KV cache (Engine.stream allocates
one per generation), so no cache ever has two writers. Up to `max_active` requests are in flight at
once: the worker advances each by one token in turn (round robin), so concurrent clients all see
their replies stream instead of waiting for whole replies ahead of them; the rest wait in FIFO
order. Each request's result depends only on its own prompt, params and seed, never on its
neighbours. Steps are handed to the request's asyncio queue with call_soon_threadsafe, and a
cancelled job (client gone, stop string hit) is dropped before its next step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from ngpt.engine import Engine, Step
from ngpt.sampling import SamplingParams


class ServerBusy(RuntimeError):
    """The wait queue is full; the client should retry later."""


class WorkerStopped(RuntimeError):
    """The worker is not running (server shutting down, or it failed)."""


class Job:
    """One request: its prompt and params, a cancel flag, and the queue its steps arrive on."""

    def __init__(self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop) -> None:
        self.prompt, self.params = prompt, params
        self._loop = loop
        self._steps: asyncio.Queue[Step | BaseException] = asyncio.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def steps(self) -> AsyncIterator[Step]:
        """The generated steps until one has finish_reason; the worker's error, if any, is raised here."""
        while True:
            item = await self._steps.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason:
                return

    # Called from the worker thread only.
    def _put(self, item: Step | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._steps.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()


class GenerationWorker:
    def __init__(self, engine: Engine, max_active: int = 8, max_waiting: int = 64) -> None:
        if max_active < 1 or max_waiting < 0:
            raise ValueError(f"max_active must be >= 1 and max_waiting >= 0, got {max_active} and {max_waiting}")
        self.engine = engine
        self.max_active, self.max_waiting = max_active, max_waiting
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Written by the worker thread only; read (as a whole) by /health.
        self.active_jobs: tuple[Job, ...] = ()
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the generation worker was already started")
        self._thread = threading.Thread(target=self._run, name="ngpt-generation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail every waiting and active job, and end the thread (waits up to `timeout` seconds)."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, prompt: list[int], params: SamplingParams) -> Job:
        """Queue a request; call from the event loop. ValueError (from Engine.check) before queueing."""
        if not self.alive:
            raise WorkerStopped("the generation worker is not running")
        if self._queue.qsize() >= self.max_waiting + max(0, self.max_active - len(self.active_jobs)):
            raise ServerBusy(f"{self.max_waiting} requests are already waiting; retry shortly")
        self.engine.check(prompt, params)
        job = Job(prompt, params, asyncio.get_running_loop())
        self._queue.put(job)
        return job

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        active: list[tuple[Job, Iterator[Step]]] = []
        try:
            while not self._stopping.is_set():
                self._admit(active)
                for entry in list(active):
                    job, steps = entry
                    item, done = self._advance(job, steps)
                    if done:  # bookkeeping first: once a client has its last step, /health no longer counts it
                        active.remove(entry)
                        self.active_jobs = tuple(j for j, _ in active)
                    if item is not None:
                        job._put(item)
        finally:
            stopped = WorkerStopped("the server is shutting down")
            for job, steps in active:
                steps.close()
                job._put(stopped)
                self.counts["cancelled"] += 1
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job._put(stopped)
                    self.counts["cancelled"] += 1
            self.active_jobs = ()

    def _admit(self, active: list[tuple[Job, Iterator[Step]]]) -> None:
        """Move waiting jobs into the active set; block for one only when nothing is active."""
        while len(active) < self.max_active:
            try:
                job = self._queue.get(block=not active)
            except queue.Empty:
                break
            if job is None:  # stop() was called
                break
            if job.cancelled:
                self.counts["cancelled"] += 1
                continue
            try:
                active.append((job, self.engine.stream(job.prompt, job.params)))
            except Exception as e:  # noqa: BLE001 - any failure belongs to this request, not the worker
                job._put(e)
                self.counts["failed"] += 1
        self.active_jobs = tuple(job for job, _ in active)

    def _advance(self, job: Job, steps: Iterator[Step]) -> tuple[Step | BaseException | None, bool]:
        """One token for `job`: (what to hand the client, whether the job is done: finished, failed or cancelled)."""
        if job.cancelled:
            steps.close()
            self.counts["cancelled"] += 1
            return None, True
        try:
            step = next(steps)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on a long prompt: fail this request only
            self.counts["failed"] += 1
            return e, True
        if step.finish_reason:
            self.counts["finished"] += 1
            return step, True
        return step, False
