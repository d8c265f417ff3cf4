"""Opening the upstream: attempts on the model's deployments until one gives its first output.

Before the first output (a content delta, a tool-call fragment, reasoning) nothing but
keep-alives has reached the client, so another deployment can still answer. After it, never:
the relay turns a failure into the typed ``error`` event.

An attempt fails on: a refused or reset connection, a 5xx, a 429 or Anthropic's 529, its own
first-output time-out (``attempt_first_token_timeout_seconds``; the last possible attempt has
only the overall first-token deadline, which the watchdog keeps), or a 200 stream that ends,
drops or reports an error before any output. A client's own fault (the upstream's 400, 404,
413, 422) ends the request at once: every deployment would refuse it. At most one attempt per
deployment and ``max_attempts`` in all.

The events an attempt yields before its first output (an OpenAI role chunk, say) are copied --
upstreams reuse one ``Chunk`` -- and handed to the relay with the rest of the read that held the
first output; the relay encodes them only then. A failed attempt's connection is closed here;
the serving one is the relay's to close, and ``release`` gives its slot back.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from typing import Any

from tokenrelay.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tokenrelay.events import Chunk
from tokenrelay.record import StreamRecord, StreamStatus
from tokenrelay.routing import Attempt, Deployment, ModelRouter
from tokenrelay.upstreams import UpstreamStream

# The outcome of the attempt that served, and of one cut short by the stream's end.
SERVED = "ok"
INTERRUPTED = "interrupted"


class Failover:
    """The attempts of one request; ``open`` returns the stream that answered.

    It owns the attempt in progress and, once one answers, the serving stream: ``aclose``
    (which the relay calls on every path) closes that stream and frees the deployment's slot,
    so nothing depends on the relay having received what ``open`` returned.
    """

    __slots__ = ("_body", "_current", "_deadline", "_record", "_router", "_stream")

    def __init__(self, *, router: ModelRouter, record: StreamRecord, body: dict[str, Any]) -> None:
        self._router = router
        self._record = record
        self._body = body
        # The attempt in progress, or the one serving; and the serving attempt's stream.
        self._current: Attempt | None = None
        self._stream: UpstreamStream | None = None
        self._deadline = record.started_mono + router.config.first_token_timeout_seconds

    async def open(self) -> tuple[UpstreamStream, Iterable[Chunk]]:
        """The first deployment to answer: its stream, and its events up to the first output
        (with the rest of that read). Raises the ``UpstreamError`` that ended the attempts."""
        router, record = self._router, self._record
        tried: list[Deployment] = []
        failures: list[tuple[str, UpstreamError]] = []
        while True:
            if tried and time.monotonic() >= self._deadline:
                # The overall first-token time-out is over (the watchdog ends the stream): a
                # new attempt would only be a request nobody waits for.
                raise _final_error(failures)
            attempt = router.pick(tried)
            if attempt is None:
                raise _final_error(failures)
            self._current = attempt
            deployment = attempt.deployment
            tried.append(deployment)
            last = len(tried) >= router.max_attempts
            record.deployment = deployment.name
            record.upstream_model = deployment.config.upstream_model or record.model
            record.attempt_log.append((deployment.name, INTERRUPTED))
            try:
                stream, primed = await self._attempt(attempt, last=last)
            except UpstreamRejected as error:
                record.attempt_log[-1] = (deployment.name, error.failure)
                self._end_attempt()  # the request's fault, not the deployment's
                raise
            except UpstreamError as error:
                record.attempt_log[-1] = (deployment.name, error.failure)
                attempt.failed()
                self._end_attempt()
                failures.append((deployment.name, error))
                if last:
                    raise _final_error(failures) from None
                continue
            # Cancelled (the client left, a time-out, the drain): the attempt stays current, for
            # ``interrupted`` to judge and ``aclose`` to free.
            record.attempt_log[-1] = (deployment.name, SERVED)
            prices = deployment.config.prices()
            if prices is not None:
                record.prices = prices
            self._stream = stream
            return stream, primed

    async def _attempt(self, attempt: Attempt, *, last: bool) -> tuple[UpstreamStream, Iterable[Chunk]]:
        config = attempt.deployment.config
        # The last possible attempt -- and one the overall first-token deadline would cut short
        # anyway -- has the rest of the overall time-out, which the watchdog keeps and reports.
        own_deadline = attempt.started_mono + config.attempt_first_token_timeout_seconds
        timeout = None if last or own_deadline >= self._deadline else own_deadline - time.monotonic()
        stream: UpstreamStream | None = None
        served = False
        try:
            async with asyncio.timeout(timeout):
                stream = await attempt.deployment.upstream.open_stream(
                    body=self._body,
                    upstream_model=config.upstream_model or self._record.model,
                    config=config,
                    request_id=self._record.request_id,
                )
                primed = await _first_output(stream)
            attempt.succeeded(time.monotonic())
            served = True
            return stream, primed
        except TimeoutError:
            raise UpstreamTimeout(
                f"no first output within {config.attempt_first_token_timeout_seconds:g}s", failure="timeout"
            ) from None
        except (UpstreamError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # A body that parses but is not shaped as its protocol says (a bug of that server
            # or of ours): this deployment's failure, and the next one may still answer.
            raise UpstreamProtocolError(
                f"unreadable answer from the upstream ({type(exc).__name__})", failure="protocol"
            ) from exc
        finally:
            if stream is not None and not served:
                await stream.aclose()

    def _end_attempt(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.release()

    def completed(self) -> None:
        """The serving deployment finished its answer (its run of failures ends)."""
        if self._current is not None and self._stream is not None:
            self._current.completed()

    def served_failed(self) -> None:
        """The serving deployment failed after its first output (counts towards ejection)."""
        if self._current is not None and self._stream is not None:
            self._current.failed()

    def interrupted(self, status: StreamStatus) -> None:
        """The stream was stopped from outside. A time-out is the deployment's failure (before
        or after the first output); a client leaving or a shutdown is not."""
        current = self._current
        if current is None:
            return
        if self._stream is None:
            log = self._record.attempt_log
            if log and log[-1][1] == INTERRUPTED:
                log[-1] = (log[-1][0], "timeout" if status is StreamStatus.TIMEOUT else str(status))
        if status is StreamStatus.TIMEOUT:
            current.failed()

    async def aclose(self) -> None:
        """Close the serving stream (unless it is closed already) and free its slot."""
        stream, self._stream = self._stream, None
        try:
            if stream is not None:
                await stream.aclose()
        finally:
            self._end_attempt()


async def _first_output(stream: UpstreamStream) -> Iterable[Chunk]:
    """Read until the first output, or the end of an answer that has none (still an answer)."""
    held: list[Chunk] = []
    while True:
        events = await stream.read()
        for event in events:
            held.append(copy_event(event))
            if event.text or event.is_progress:
                # The rest of this read is the relay's: a failure in it comes after output.
                return itertools.chain(held, events)
        if stream.ended:
            return held


def copy_event(event: Chunk) -> Chunk:
    """A Chunk of its own with every field of ``event`` (upstreams reuse theirs). Field by field
    over the slots, so a field added to ``Chunk`` is never left behind (a few events per stream,
    before the first output: not the hot path)."""
    copy = Chunk()
    for name in Chunk.__slots__:
        setattr(copy, name, getattr(event, name))
    return copy


def _final_error(failures: list[tuple[str, UpstreamError]]) -> UpstreamError:
    """What the client hears when no attempt answered."""
    if not failures:
        return UpstreamUnavailable("no deployment of this model could be tried", failure="connection")
    if len(failures) == 1:
        return failures[0][1]
    named = "; ".join(f"{name}: {error.failure} ({error.message})" for name, error in failures)
    errors = [error for _, error in failures]
    count = len(failures)
    if all(isinstance(error, UpstreamRateLimited) for error in errors):
        waits = [e.retry_after for e in errors if isinstance(e, UpstreamRateLimited) and e.retry_after]
        return UpstreamRateLimited(
            f"every deployment is rate limited ({count} attempts: {named})",
            retry_after=min(waits, key=_seconds) if waits else None,
        )
    if all(isinstance(error, UpstreamTimeout) for error in errors):
        return UpstreamTimeout(f"{count} attempts timed out before the first token: {named}")
    return UpstreamUnavailable(
        f"{count} attempts failed before the first token: {named}", failure=errors[-1].failure
    )


def _seconds(retry_after: str) -> float:
    try:
        return float(retry_after)
    except ValueError:
        return float("inf")  # an HTTP date: rarely shorter than a number of seconds
