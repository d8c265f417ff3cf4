"""What runs inside the local model's child process: ``python -m tokenrelay.local.child ...``.

llama-cpp-python's OpenAI-compatible server, plus routes of ours:

- ``POST /tokenrelay/usage`` ``{"messages": [...], "completion": "..."}`` →
  ``{"prompt_tokens": n, "completion_tokens": m}``, counted with the model's own tokenizer
  and chat template, exactly as the server counts a prompt (its streamed answers carry no
  usage, so the gateway asks here).
- ``GET /tokenrelay/health``: 200 while the server's event loop runs, even mid-answer.
- ``GET /tokenrelay/requests``: the ``X-Request-ID`` of every chat request that reached the
  model (the last 1,000), so tests can tell which requests the model saw.

Only this process loads native code: a crash in llama.cpp ends it, not the gateway, whose
supervisor then restarts it.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import signal
import sys
from typing import Any, cast

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to end this process when the gateway dies, even by SIGKILL: no orphaned model."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _UsageCounter:
    """Prompt and completion token counts with the model's tokenizer and chat template."""

    def __init__(self, model_path: str) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        # A second, vocabulary-only instance: counting never waits for (or races) generation.
        self._vocab = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
        template = self._vocab.metadata.get("tokenizer.chat_template")
        model = self._vocab._model
        eos, bos = self._vocab.token_eos(), self._vocab.token_bos()
        # The same formatter llama-cpp-python builds from the GGUF metadata for generation.
        self._formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
            if template
            else None
        )

    def count(self, messages: list[dict[str, Any]], completion: str) -> dict[str, int]:
        if self._formatter is not None:
            formatted = self._formatter(messages=cast(Any, messages))
            prompt_text, add_bos = formatted.prompt, not formatted.added_special
        else:
            prompt_text = "\n".join(str(m.get("content") or "") for m in messages)
            add_bos = True
        prompt = self._vocab.tokenize(prompt_text.encode(), add_bos=add_bos, special=True)
        answer = self._vocab.tokenize(completion.encode(), add_bos=False, special=False) if completion else []
        return {"prompt_tokens": len(prompt), "completion_tokens": len(answer)}


class _TakeRequestIds:
    """Pure ASGI, outermost: note each chat request's id, then hide the header from the server.

    llama-cpp-python's request-id middleware (starlette-context) answers 400 with an empty
    body to an ``X-Request-ID`` that is not a UUID, and tokenrelay's ids need not be UUIDs.
    """

    def __init__(self, app: Any, seen: collections.deque[str]) -> None:
        self._app = app
        self._seen = seen

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            request_id = b""
            headers = []
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    request_id = value
                else:
                    headers.append((name, value))
            if scope["path"].endswith("/chat/completions"):
                self._seen.append(request_id.decode(errors="replace"))
            scope = {**scope, "headers": headers}
        await self._app(scope, receive, send)


def build_app(args: argparse.Namespace) -> Any:
    """llama-cpp-python's server app with tokenrelay's routes added."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    app = create_app(
        # No interrupting: the gateway queues requests itself and sends one at a time.
        server_settings=ServerSettings(host="127.0.0.1", port=args.port, interrupt_requests=False),
        model_settings=[
            ModelSettings(
                model=args.model,
                model_alias=args.alias,
                n_threads=args.threads,
                n_threads_batch=args.threads,
                n_ctx=args.context,
                verbose=False,
            )
        ],
    )
    counter = _UsageCounter(args.model)
    seen: collections.deque[str] = collections.deque(maxlen=1000)

    async def usage(request: Request) -> JSONResponse:
        body = await request.json()
        counts = counter.count(body.get("messages") or [], body.get("completion") or "")
        return JSONResponse(counts)

    async def health(_request: Request) -> JSONResponse:
        # Answered by the event loop alone: generation runs in worker threads under a lock.
        return JSONResponse({"status": "ok"})

    async def requests(_request: Request) -> JSONResponse:
        return JSONResponse({"request_ids": list(seen)})

    app.add_route("/tokenrelay/usage", usage, methods=["POST"])
    app.add_route("/tokenrelay/requests", requests, methods=["GET"])
    app.add_route("/tokenrelay/health", health, methods=["GET"])
    return _TakeRequestIds(app, seen)


def main(argv: list[str] | None = None) -> None:
    """Parse the supervisor's arguments, load the model, serve until told to stop."""
    parser = argparse.ArgumentParser(prog="tokenrelay.local.child")
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    # Below the gateway's priority: relaying tokens must not wait behind generating them. Set
    # before llama.cpp starts its threads, which inherit it (on Linux, nice is per thread).
    os.nice(args.nice)

    import uvicorn

    app = build_app(args)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
