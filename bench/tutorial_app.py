"""Baseline for scale: the streaming proxy most tutorials show, written as naive production code.

The openai SDK parses every upstream chunk into a pydantic model; each one is dumped back to a
dict, ``json.dumps``-ed and yielded from a ``StreamingResponse``; ``request.is_disconnected()``
is polled between chunks. The model name from the request is passed to the upstream unchanged.

Run by ``bench/run.py``::

    TUTORIAL_UPSTREAM_URL=http://127.0.0.1:8001/v1 uvicorn --app-dir bench tutorial_app:app
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI

client = AsyncOpenAI(
    base_url=os.environ.get("TUTORIAL_UPSTREAM_URL", "http://127.0.0.1:8001/v1"), api_key="x"
)
app = FastAPI()


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> StreamingResponse:
    body = await request.json()
    request_id = request.headers.get("x-request-id", "")

    async def generate() -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=body["model"],
            messages=body["messages"],
            stream=True,
            extra_headers={"X-Request-ID": request_id},
        )
        async for chunk in stream:
            if await request.is_disconnected():
                break
            yield f"data: {json.dumps(chunk.model_dump())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(generate(), media_type="text/event-stream")
