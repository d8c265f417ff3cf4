"""The ASGI response a stream route returns: admission around the relay.

Admission (the key's budget and its rate-limit slot, ``admission.py``) is an ``async with``
around the whole stream, so the slot is given back by the same structure that took it,
whatever ended the stream; inside, ``StreamRelay`` (``stream.py``) runs the stream itself.
With replicas sharing Redis, the stream is leased first (a dead replica's streams still get
their rows); a resumable stream's encoder also stamps event ids and copies every event to
the stream's log.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tokenrelay.auth.keys import ApiKey
from tokenrelay.cluster import Resume
from tokenrelay.config import ModelConfig
from tokenrelay.protocols import Encoder
from tokenrelay.protocols.resumable import ResumableEvents, protocol_of
from tokenrelay.record import StreamRecord
from tokenrelay.relay.admission import Admission
from tokenrelay.relay.runtime import RelayRuntime
from tokenrelay.relay.stream import StreamRelay
from tokenrelay.routing import ModelRouter


class RelayedStream(Response):
    """The ASGI response a stream route returns: admission around the relay."""

    def __init__(
        self,
        *,
        runtime: RelayRuntime,
        record: StreamRecord,
        key: ApiKey | None,
        model: ModelConfig,
        body: dict[str, Any],
        router: ModelRouter,
        encoder: Encoder,
        resumable: bool = False,
    ) -> None:
        self.background = None
        self._resumable = resumable
        self._runtime = runtime
        self._record = record
        self._key = key
        self._model = model
        self._body = body
        self._router = router
        self._encoder = encoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is None:
            # No key, nothing to admit (auth off): not even the Admission object, per stream.
            await (await self._relay(None)).run(scope, receive, send)
            return
        # A refusal here raises before anything was sent: the app's handlers make it a 429.
        async with Admission(self._runtime, self._key, self._record) as admitted:
            await (await self._relay(admitted.completion_allowance)).run(scope, receive, send)

    async def _relay(self, completion_allowance: int | None) -> StreamRelay:
        encoder, resume = self._encoder, None
        cluster = self._runtime.cluster
        if cluster is not None:
            record = self._record
            protocol = protocol_of(encoder) if self._resumable else None
            key_id = self._key.id if self._key is not None else None
            stream_log = await cluster.open(record, protocol=protocol, key_id=key_id)
            if stream_log is not None:
                encoder = ResumableEvents(encoder, stream_log, stream_id=record.stream_id)
                resume = Resume(cluster, stream_log)
        return StreamRelay(
            runtime=self._runtime,
            record=self._record,
            model=self._model,
            body=self._body,
            router=self._router,
            encoder=encoder,
            completion_allowance=completion_allowance,
            resume=resume,
        )
