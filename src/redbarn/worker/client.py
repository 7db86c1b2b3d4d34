"""The Synchronize loop of one worker thread, as bb_worker's BuildClient runs it.

Each `WorkerThread` is one worker identity with its own loop (Buildbarn W6-W26):

- it reports `started`, `fetching_inputs`, `running`, `uploading_outputs` and
  `completed` as soon as they happen (not at `next_synchronization_at`); only the
  latest stage is sent if several queued up;
- `executing` starts the action, replacing (cancelling) any running one; `idle`
  cancels a running action and discards its result;
- failed RPCs are retried with jittered exponential backoff (tenacity), so a
  frontend or load balancer restart is a pause, not a crash;
- after `shutdown` is set (SIGTERM) it asks for no more work (`prefer_being_idle`). An
  idle thread cuts its long poll or backoff short, says once that it is idle (an
  action the cut call was handed comes back and is run), and returns. A busy one
  lets the running action finish and report `completed`, and returns once the
  scheduler answers `idle` (or `next_synchronization_at` + grace passes without an
  answer). It starts no action that would replace the running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

import grpc
from google.protobuf import empty_pb2
from google.rpc import code_pb2
from tenacity import AsyncRetrying, RetryCallState, RetryError, wait_random_exponential

from redbarn import digests
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.proto import remoteworker_pb2 as rw_pb2
from redbarn.proto import remoteworker_pb2_grpc as rw_grpc
from redbarn.worker.cas import Scope
from redbarn.worker.executors.base import BuildExecutor, Job, Stage
from redbarn.worker.status import status_from_error

log = logging.getLogger(__name__)

Executing = rw_pb2.CurrentState.Executing


def thread_worker_ids(
    concurrency: int, labels: Mapping[str, str], hostname: str
) -> list[dict[str, str]]:
    """One worker_id per thread (Buildbarn W2): `thread` zero-padded to the width of
    N-1 (absent when N == 1), then `hostname` and the labels, labels winning."""
    width = len(str(concurrency - 1))
    ids = []
    for i in range(concurrency):
        wid = {"thread": str(i).zfill(width)} if concurrency > 1 else {}
        wid["hostname"] = hostname
        wid.update(labels)
        ids.append(wid)
    return ids


class _Interrupted(Exception):
    """The shutdown signal cut a (long-polling) Synchronize short."""


class _BadResponse(Exception):
    pass


class WorkerThread:
    def __init__(
        self,
        *,
        stub: rw_grpc.OperationQueueStub,
        executor: BuildExecutor,
        worker_id: Mapping[str, str],
        instance_name_prefix: str = "",
        platform: re_pb2.Platform | None = None,
        size_class: int = 0,
        shutdown: asyncio.Event,
        sync_timeout: float = 300.0,
        grace: float = 60.0,
        farewell: float = 1.0,
        backoff_max: float = 5.0,
        coalesce: float = 0.01,
        clock: Callable[[], float] = time.time,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.name = digests.worker_json(worker_id)
        self._heartbeat = heartbeat
        self._stub = stub
        self._executor = executor
        self._prefix = instance_name_prefix
        self._base = rw_pb2.SynchronizeRequest(
            worker_id=dict(worker_id),
            instance_name_prefix=instance_name_prefix,
            platform=platform or re_pb2.Platform(),
            size_class=size_class,
        )
        self._shutdown = shutdown
        self._sync_timeout = sync_timeout
        self._grace = grace
        self._farewell = farewell
        self._farewell_by: float | None = None  # an idle thread stops by then
        self._farewell_done = False  # a call made while stopping has been answered
        self._backoff = wait_random_exponential(multiplier=0.1, max=backoff_max)
        self._clock = clock
        self._coalesce = coalesce
        self._state = rw_pb2.CurrentState(idle=empty_pb2.Empty())
        self._next_sync = clock()
        self._until: float | None = None  # scheduler may think we execute until then
        self._task: asyncio.Task[None] | None = None
        self._updates: asyncio.Queue[Executing] = asyncio.Queue()
        self.synchronizations = 0

    # -- the loop ------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """An action runs here, or its result has not been reported yet."""
        return not self._state.HasField("idle")

    def _may_terminate(self) -> bool:
        """Shutting down, with nothing owed to the scheduler.

        A busy thread owes it the action's result, until the scheduler stops waiting
        (`_until`). An idle one whose last call was cut short or failed may have been
        handed an action it never received: it owes one idle report (the farewell),
        answered by that action handed back (see `_apply`) or by `idle`. The farewell
        gets one try, repeated only while the scheduler still winds down the cut call
        (RESOURCE_EXHAUSTED), and at most `farewell` seconds: an unreachable scheduler
        requeues such an action when this worker's lease expires."""
        if not self._shutdown.is_set():
            return False
        now = self._clock()
        if self._until is None or now > self._until:
            return True
        if self.busy:
            return False
        if self._farewell_by is None:
            self._farewell_by = now + self._farewell
        return self._farewell_done or now > self._farewell_by

    async def run(self) -> None:
        """Synchronize until shutdown completes. Never raises on RPC failures."""
        try:
            while not self._may_terminate():
                await self._wait()
                response = await self._synchronize()
                if response is None:
                    break  # shutting down
                try:
                    await self._apply(response)
                except Exception:  # a bug, not the scheduler's fault: keep the thread alive
                    log.exception("%s: cannot apply the scheduler's response", self.name)
                    await asyncio.sleep(1.0)
        finally:
            await self._stop_execution()
        log.info("%s: stopped", self.name)

    def _executing(self) -> bool:
        return self._task is not None

    async def _next_update(self, timeout: float) -> bool:
        """Apply the next execution update if one comes within `timeout` seconds."""
        get = asyncio.ensure_future(self._updates.get())
        done, _ = await asyncio.wait({get}, timeout=max(timeout, 0.0))
        if get in done:
            self._apply_update(get.result())
            return True
        get.cancel()
        return False

    async def _wait(self) -> None:
        # Capped, so that a scheduler clock running ahead cannot starve the heartbeat.
        delay = min(self._next_sync - self._clock(), self._grace / 2)
        if self._executing():
            if await self._next_update(delay):
                # A short action's stages follow each other within milliseconds:
                # report the latest of them in one call instead of one call each.
                settle = self._clock() + self._coalesce
                while self._executing() and await self._next_update(settle - self._clock()):
                    pass
        elif delay > 0 and not self._shutdown.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shutdown.wait(), delay)

    def _apply_update(self, update: Executing) -> None:
        self._state = rw_pb2.CurrentState(executing=update)
        if update.HasField("completed"):
            self._task = None

    def _drain_updates(self) -> None:
        while not self._updates.empty():
            self._apply_update(self._updates.get_nowait())

    def _prefer_being_idle(self) -> bool:
        if self._shutdown.is_set():
            return True
        kind = self._state.WhichOneof("worker_state")
        if kind == "idle":
            return self._until is not None
        ex = self._state.executing
        if ex.HasField("completed"):
            return bool(ex.completed.status.code != code_pb2.OK)
        return False

    async def _sleep(self, seconds: float) -> None:
        """The backoff between attempts; shutting down cuts it short."""
        if self._shutdown.is_set():
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._shutdown.wait(), seconds)

    def _wait_before_retry(self, rs: RetryCallState) -> float:
        if rs.outcome is not None and isinstance(rs.outcome.exception(), _Interrupted):
            return 0.0
        if self._shutdown.is_set() and not self.busy:
            return 0.05  # the farewell, within `farewell` seconds
        return float(self._backoff(rs))

    def _before_sleep(self, rs: RetryCallState) -> None:
        err = rs.outcome.exception() if rs.outcome is not None else None
        if isinstance(err, _Interrupted):
            return
        if isinstance(err, grpc.aio.AioRpcError):
            err_text = f"{err.code().name}: {err.details()}"
        else:
            err_text = repr(err)
        # While saying farewell, RESOURCE_EXHAUSTED (the cut call still held) is expected.
        farewell = self._shutdown.is_set() and not self.busy
        log.log(
            logging.DEBUG if farewell else logging.WARNING,
            "%s: Failed to synchronize with scheduler (attempt %d): %s",
            self.name,
            rs.attempt_number,
            err_text,
        )

    async def _synchronize(self) -> rw_pb2.SynchronizeResponse | None:
        """The scheduler's response, retried with backoff; None once the thread may stop
        instead (shutting down, and nothing owed to the scheduler)."""
        try:
            async for attempt in AsyncRetrying(
                wait=self._wait_before_retry,
                stop=lambda rs: self._may_terminate(),
                before_sleep=self._before_sleep,
                sleep=self._sleep,
            ):
                with attempt:
                    if self._may_terminate():  # shutdown came during the wait or backoff
                        raise _Interrupted()
                    return await self._synchronize_once()
        except RetryError:
            return None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _synchronize_once(self) -> rw_pb2.SynchronizeResponse:
        self._drain_updates()
        request = rw_pb2.SynchronizeRequest()
        request.CopyFrom(self._base)
        request.current_state.CopyFrom(self._state)
        request.prefer_being_idle = self._prefer_being_idle()
        started = self._clock()
        previous = self._next_sync
        self.synchronizations += 1
        stopping = self._shutdown.is_set()
        timeout = self._sync_timeout
        if stopping and not self.busy and self._farewell_by is not None:
            timeout = max(self._farewell_by - started, 0.01)
        call = self._stub.Synchronize(request, timeout=timeout)
        try:
            if stopping:
                try:
                    response = await call
                except grpc.aio.AioRpcError as err:
                    # RESOURCE_EXHAUSTED: the scheduler still holds the call just cut.
                    self._farewell_done = err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
                    raise
                self._farewell_done = True
            else:
                rpc = asyncio.ensure_future(call)
                stop = asyncio.ensure_future(self._shutdown.wait())
                try:
                    await asyncio.wait({rpc, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                if not rpc.done():
                    rpc.cancel()
                    with contextlib.suppress(BaseException):
                        await rpc
                    raise _Interrupted()
                response = rpc.result()
        finally:
            if self._until is None:
                self._until = max(previous, started) + self._grace
        if not response.HasField("next_synchronization_at"):
            raise _BadResponse("Scheduler response contained invalid synchronization timestamp")
        assert isinstance(response, rw_pb2.SynchronizeResponse)
        if self._heartbeat is not None:
            self._heartbeat()
        return response

    async def _apply(self, response: rw_pb2.SynchronizeResponse) -> None:
        self._next_sync = response.next_synchronization_at.ToNanoseconds() / 1e9
        desired = response.desired_state
        kind = desired.WhichOneof("worker_state")
        if kind == "executing" and self._shutdown.is_set() and self.busy:
            # Stopping: start nothing new. The scheduler no longer wants the running
            # action either; this worker stops, and its lease expiring requeues the new one.
            log.info(
                "%s: shutting down: not starting %s",
                self.name,
                digests.key(desired.executing.action_digest),
            )
            await self._stop_execution()
            self._state = rw_pb2.CurrentState(idle=empty_pb2.Empty())
        elif kind == "executing":
            if self._shutdown.is_set():  # asked to be idle, so handed before the signal
                log.info(
                    "%s: shutting down: running %s, assigned before the signal",
                    self.name,
                    digests.key(desired.executing.action_digest),
                )
            await self._start_execution(desired.executing)
            self._until = self._next_sync + self._grace
        elif kind == "idle":
            await self._stop_execution()
            self._state = rw_pb2.CurrentState(idle=empty_pb2.Empty())
            self._until = None
        elif self._executing():
            self._until = self._next_sync + self._grace
        else:
            self._until = None

    # -- executions ----------------------------------------------------------------

    async def _start_execution(self, desired: rw_pb2.DesiredState.Executing) -> None:
        await self._stop_execution()
        function = desired.digest_function or digests.infer_function(
            len(desired.action_digest.hash)
        )
        scope = Scope(
            digests.join_instance_name(self._prefix, desired.instance_name_suffix), function
        )
        action_digest = re_pb2.Digest()
        action_digest.CopyFrom(desired.action_digest)
        updates: asyncio.Queue[Executing] = asyncio.Queue()

        def report(stage: Stage) -> None:
            update = Executing(action_digest=action_digest)
            getattr(update, stage.value).SetInParent()
            updates.put_nowait(update)

        job = Job(
            action_digest=action_digest,
            action=desired.action,
            scope=scope,
            worker_name=self.name,
            queued_timestamp=desired.queued_timestamp,
            auxiliary_metadata=list(desired.auxiliary_metadata),
            report=report,
        )

        async def execute() -> None:
            try:
                response = await self._executor.execute(job)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # an executor must not raise; be safe anyway
                log.exception("%s: executor raised", self.name)
                response = re_pb2.ExecuteResponse(status=status_from_error(err))
            updates.put_nowait(Executing(action_digest=action_digest, completed=response))

        log.debug("%s: starting %s", self.name, digests.key(action_digest))
        self._updates = updates
        self._task = asyncio.create_task(
            execute(), name=f"{self.name} {digests.key(action_digest)}"
        )
        self._state = rw_pb2.CurrentState(
            executing=Executing(action_digest=action_digest, started=empty_pb2.Empty())
        )

    async def _stop_execution(self) -> None:
        """Cancel the running action, wait for it, and discard its result."""
        task, self._task = self._task, None
        self._updates = asyncio.Queue()
        if task is None:
            return
        if not task.done():
            log.info("%s: cancelling %s", self.name, task.get_name())
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
