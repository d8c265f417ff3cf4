"""Admission: what a stream must be granted before it starts, held exactly while it runs.

``async with Admission(runtime, key, record) as admitted`` checks the key's budget and takes
its rate-limit slot (requests per minute, concurrent streams); leaving the block gives the
slot back, whatever ended the stream. A refusal raises before anything was sent, so the
client gets an HTTP 429. Acquiring and releasing live in this one structure: nothing can be
taken that is not given back.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from tokenrelay.auth.keys import ApiKey
from tokenrelay.config import MODEL_TOKENIZER
from tokenrelay.limits.budgets import completion_allowance
from tokenrelay.record import StreamRecord
from tokenrelay.relay.runtime import RelayRuntime

log = logging.getLogger(__name__)


class Admission:
    """One stream's admission. ``completion_allowance``: completion tokens its budget leaves."""

    __slots__ = ("_key", "_record", "_runtime", "_slot_taken", "completion_allowance")

    def __init__(self, runtime: RelayRuntime, key: ApiKey | None, record: StreamRecord) -> None:
        self._runtime = runtime
        self._key = key
        self._record = record
        self._slot_taken = False
        self.completion_allowance: int | None = None

    async def __aenter__(self) -> Admission:
        key, runtime, record = self._key, self._runtime, self._record
        if key is None:
            return self
        spending = runtime.spending
        if spending is not None and (key.budget_tokens or key.budget_usd):
            encoding = record.tokenizer_encoding
            if encoding == MODEL_TOKENIZER:
                encoding = "cl100k_base"  # an estimate is enough to refuse a request over budget
            # Off the event loop: tiktoken on a long prompt would stall every other stream.
            prompt_tokens = await asyncio.to_thread(runtime.counter.count_prompt, record.messages, encoding)
            self.completion_allowance = completion_allowance(
                key, await spending.spent(key.id), prompt_tokens, record.prices
            )
        limiter = runtime.limiter
        if limiter is not None and (key.rpm or key.max_concurrent):
            await limiter.admit(key, record.stream_id)
            self._slot_taken = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._slot_taken:
            return
        assert self._key is not None and self._runtime.limiter is not None
        try:
            await self._runtime.limiter.release(self._key, self._record.stream_id)
        except Exception:
            log.exception(
                "releasing the stream's limits failed", extra={"request_id": self._record.request_id}
            )
