// One answer asked for as a resumable stream, resumed after a dropped connection: see
// ResumableChat below. Moved out of the page's controller (app.js) unchanged in behaviour.

import { APIError, ConnectionError, ProtocolError, SSEParser, StreamError, chatEvents, errorFromResponse } from "../client/index.js";

/** Waits between attempts to resume a dropped stream, as EventSource does; the last repeats. */
const RETRY_DELAYS_MS = [250, 500, 1000, 2000];
/** How long the page keeps trying to resume before it gives the answer up as lost. */
const RETRY_FOR_MS = 60_000;
/** Nothing at all (not even a keep-alive) for this long: the connection is dead, resume. */
const SILENCE_MS = 45_000;
/** After Stop, how long the stream may take to end with `done` before the page lets go. */
const STOP_WAIT_MS = 3000;

/**
 * One answer asked for as a resumable stream (`POST /chat` with `"resumable": true`). It reads
 * like the client's chatEvents(): the same events, and the same errors for a refusal, an
 * `error` event or a lost answer. But a dropped connection is resumed where it broke
 * (`GET /v1/streams/{id}` with `Last-Event-ID`, retried with backoff for up to RETRY_FOR_MS),
 * and stop() ends the answer on the gateway. If the gateway cannot make the stream resumable
 * just now (its Redis is away), the answer is asked for again as a plain stream.
 */
export class ResumableChat {
  /** The stream's id (`X-Stream-ID`), once the gateway has answered. @type {string | null} */
  streamId = null;
  /** The id of the last event received: a resumed stream goes on after it. */
  lastEventId = 0;
  /** @type {{apiKey?: string, model?: string, messages: {role: string, content: string}[], signal: AbortSignal}} */
  #options;
  #controller;
  #on;
  /** @type {"opening" | "resumable" | "plain" | "ended"} */
  #phase = "opening";
  #stopping = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #stopTimer = undefined;
  /**
   * Set while waiting to retry: ends the wait early (a Stop the gateway took wants its `done`;
   * the browser's `online` event does the same).
   * @type {(() => void) | null}
   */
  #wake = null;
  /** When the connection dropped (performance.now()); null while connected. @type {number | null} */
  #droppedAt = null;
  /** Attempts to resume since the connection dropped. */
  #attempt = 0;
  /** What went wrong last, for the message if the page gives up. */
  #lastFailure = "";
  /** @type {string | null} */
  #requestId = null;

  /**
   * @param {{apiKey?: string, model?: string, messages: {role: string, content: string}[], signal: AbortSignal}} options
   * @param {AbortController} controller aborting it lets go of the answer (rejects with AbortError)
   * @param {{reconnecting: () => void, reconnected: () => void, plainOnly: () => void}} on
   */
  constructor(options, controller, on) {
    this.#options = options;
    this.#controller = controller;
    this.#on = on;
  }

  /** @returns {AsyncGenerator<import("../client/index.js").ChatEvent, void, undefined>} */
  async *events() {
    /** @type {Response} */
    let response;
    try {
      response = await this.#open();
    } catch (error) {
      if (!(error instanceof APIError && refusesResumable(error))) throw error;
      if (error.status === 400) this.#on.plainOnly(); // the gateway has no Redis (any more): ask plainly from now on
      this.#phase = "plain";
      if (this.#stopping) this.#controller.abort();
      yield* chatEvents(this.#options);
      return;
    }
    this.#requestId = response.headers.get("x-request-id");
    this.streamId = response.headers.get("x-stream-id");
    // Without an id (a gateway set to serve it plainly when Redis is away) nothing can be resumed.
    this.#phase = this.streamId ? "resumable" : "plain";
    if (this.#stopping) {
      if (this.streamId) void this.#sendStop();
      else this.#controller.abort();
    }
    for (;;) {
      if (yield* this.#read(response)) return;
      if (!this.streamId) {
        throw new ConnectionError("stream_interrupted", `The stream broke off: ${this.#lastFailure}`, {
          requestId: this.#requestId,
        });
      }
      response = await this.#resume();
    }
  }

  /** Ends the answer on the gateway; it then ends here with `done` ("stopped"). */
  stop() {
    if (this.#stopping || this.#phase === "ended") return;
    this.#stopping = true;
    // Whatever the gateway answers, the page lets go of the answer before long.
    this.#stopTimer = setTimeout(() => this.#controller.abort(), STOP_WAIT_MS);
    if (this.#phase === "resumable") void this.#sendStop();
    else if (this.#phase === "plain") this.#controller.abort();
    // Still "opening": sent as soon as the response gives the stream's id.
  }

  /** The answer is over (the consumer's `finally`). */
  close() {
    clearTimeout(this.#stopTimer);
    this.#phase = "ended";
  }

  async #sendStop() {
    const url = `/v1/streams/${encodeURIComponent(/** @type {string} */ (this.streamId))}/stop`;
    try {
      // Not under the answer's signal: "New chat" lets go of the answer and still stops it.
      const response = await fetch(url, { method: "POST", headers: this.#headers({ Accept: "application/json" }) });
      // 202: stopped; 200: it had ended anyway. Either way `done` follows on the stream, and
      // a page waiting to resume resumes now, to get it.
      if (response.ok) {
        this.#wake?.();
        return;
      }
    } catch {
      // The gateway cannot be reached: nothing more to wait for.
    }
    this.#controller.abort();
  }

  /** @returns {Promise<Response>} */
  async #open() {
    const { model, messages, signal } = this.#options;
    /** @type {Response} */
    let response;
    try {
      response = await fetch("/chat", {
        method: "POST",
        headers: this.#headers({ Accept: "text/event-stream", "Content-Type": "application/json" }),
        body: JSON.stringify({ model, messages, resumable: true }),
        signal,
      });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      // Whether the gateway got the request is unknown, and there is no stream id to resume.
      throw new ConnectionError("connection_failed", `Could not reach the gateway: ${describeFailure(error)}`, {
        cause: error,
      });
    }
    if (!response.ok) throw await responseError(response);
    checkEventStream(response);
    return response;
  }

  /**
   * Waits and retries until the stream can be followed again from `lastEventId`.
   * @returns {Promise<Response>}
   */
  async #resume() {
    const { signal } = this.#options;
    this.#droppedAt ??= performance.now();
    this.#on.reconnecting();
    for (;;) {
      const delay = RETRY_DELAYS_MS[Math.min(this.#attempt, RETRY_DELAYS_MS.length - 1)];
      if (performance.now() + delay - this.#droppedAt > RETRY_FOR_MS) {
        throw new ConnectionError(
          "stream_interrupted",
          `Could not resume the answer within ${RETRY_FOR_MS / 1000} s (${this.#lastFailure})`,
          { requestId: this.#requestId },
        );
      }
      this.#attempt += 1;
      await this.#sleep(delay); // cut short by a Stop the gateway took: its `done` is waiting
      /** @type {Response} */
      let response;
      try {
        response = await fetch(`/v1/streams/${encodeURIComponent(/** @type {string} */ (this.streamId))}`, {
          headers: this.#headers({ Accept: "text/event-stream", "Last-Event-ID": String(this.lastEventId) }),
          cache: "no-store",
          signal,
        });
      } catch (error) {
        if (signal.aborted) throw signal.reason;
        this.#lastFailure = describeFailure(error); // the network is still down: try again
        continue;
      }
      if (response.ok) {
        checkEventStream(response);
        this.#on.reconnected();
        return response;
      }
      const error = await responseError(response);
      // 404 (the stream expired or is not this key's), 401, 400...: retrying cannot help.
      if (!(response.status >= 500 || response.status === 408 || response.status === 429)) throw error;
      this.#lastFailure = `${error.code}: ${error.message}`; // a proxy's 502, Redis away (503)...
    }
  }

  /**
   * Reads one connection's events. True when the answer ended (`done`); false when the
   * connection dropped first (it can be resumed). Throws on an `error` event or bad data.
   * @param {Response} response
   * @returns {AsyncGenerator<import("../client/index.js").ChatEvent, boolean, undefined>}
   */
  async *#read(response) {
    const { signal } = this.#options;
    if (!response.body) {
      this.#lastFailure = "the response has no body";
      return false;
    }
    const reader = response.body.getReader();
    const parser = new SSEParser();
    let answered = false;
    // A connection that silently died (no reset ever comes) shows as silence: the gateway
    // sends a keep-alive every few seconds while the model is quiet.
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let silence;
    let silent = false;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => {
        silent = true;
        reader.cancel().catch(() => {}); // read() now ends, as if the gateway had closed
      }, SILENCE_MS);
    };
    const onAbort = () => reader.cancel().catch(() => {});
    signal.addEventListener("abort", onAbort, { once: true });
    watch();
    try {
      for (;;) {
        /** @type {ReadableStreamReadResult<Uint8Array>} */
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          if (signal.aborted) throw signal.reason;
          if (answered) return true;
          this.#lastFailure = describeFailure(error);
          return false;
        }
        if (signal.aborted) throw signal.reason;
        if (chunk.done) {
          this.#lastFailure = silent
            ? `nothing came for ${SILENCE_MS / 1000} s`
            : "the stream ended before the answer was complete";
          return answered;
        }
        watch();
        if (this.#droppedAt !== null) {
          // Something came back: the connection works again, a later drop starts afresh.
          this.#droppedAt = null;
          this.#attempt = 0;
        }
        for (const message of parser.feed(chunk.value)) {
          if (answered) continue;
          const event = this.#eventOf(message);
          if (event === "dropped") return false;
          if (event === null) continue;
          yield event;
          if (signal.aborted) throw signal.reason;
          if (event.type === "done") answered = true;
        }
      }
    } finally {
      clearTimeout(silence);
      signal.removeEventListener("abort", onAbort);
      reader.cancel().catch(() => {});
    }
  }

  /**
   * The chat event in an SSE message, with its id recorded; null for what is skipped.
   * @param {import("../client/index.js").SSEMessage} message
   * @returns {import("../client/index.js").ChatEvent | null | "dropped"}
   */
  #eventOf(message) {
    if (message.event !== "message") return null;
    /** @type {any} */
    let value;
    try {
      value = JSON.parse(message.data);
    } catch (error) {
      throw new ProtocolError(`Unreadable event: ${message.data.slice(0, 100)}`, { cause: error, requestId: this.#requestId });
    }
    if (value === null || typeof value !== "object" || typeof value.type !== "string") {
      throw new ProtocolError(`Event without a type: ${message.data.slice(0, 100)}`, { requestId: this.#requestId });
    }
    if (value.type === "error" && value.code === "resumable_unavailable") {
      // This follower lost the gateway's Redis, not the answer: resume when it is back.
      this.#lastFailure = `${value.code}: ${value.message}`;
      return "dropped";
    }
    const id = Number(message.id);
    if (message.id !== undefined && Number.isSafeInteger(id)) {
      if (id <= this.lastEventId) {
        console.warn(`tokenrelay: event ${id} of stream ${this.streamId} was already received; skipped`);
        return null;
      }
      if (id > this.lastEventId + 1 && value.type !== "error") {
        throw new StreamError(
          "resume_gap",
          `Events ${this.lastEventId + 1} to ${id - 1} of the answer never arrived`,
          this.#requestId,
        );
      }
      this.lastEventId = id;
    }
    switch (value.type) {
      case "delta":
        if (typeof value.text !== "string") {
          throw new ProtocolError(`Delta without text: ${message.data.slice(0, 100)}`, { requestId: this.#requestId });
        }
        return value;
      case "usage":
      case "done":
        return value;
      case "error": {
        const code = typeof value.code === "string" && value.code ? value.code : "stream_error";
        const text = typeof value.message === "string" && value.message ? value.message : `The stream failed: ${code}`;
        throw new StreamError(code, text, this.#requestId);
      }
      default:
        return null; // a newer event type: skipped
    }
  }

  /** @param {number} ms */
  #sleep(ms) {
    const { signal } = this.#options;
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const finish = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        window.removeEventListener("online", wake);
        this.#wake = null;
      };
      const onAbort = () => {
        finish();
        reject(signal.reason);
      };
      const wake = () => {
        finish();
        resolve(undefined);
      };
      const timer = setTimeout(wake, ms);
      this.#wake = wake;
      signal.addEventListener("abort", onAbort, { once: true });
      window.addEventListener("online", wake); // the browser says the network is back: try now
    });
  }

  /** @param {Record<string, string>} headers */
  #headers(headers) {
    if (this.#options.apiKey) headers.Authorization = `Bearer ${this.#options.apiKey}`;
    return headers;
  }
}

/**
 * The gateway cannot make this stream resumable (no Redis configured, or Redis away just now)
 * but would serve it plainly.
 * @param {APIError} error
 */
function refusesResumable(error) {
  return error.code === "resumable_unavailable" || (error.status === 400 && error.param === "resumable");
}

/** @param {Response} response */
async function responseError(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // The status says enough.
  }
  return errorFromResponse(response.status, text, response.headers);
}

/** A 200 that is not an event stream (a captive portal's page) is not the gateway. @param {Response} response */
function checkEventStream(response) {
  const type = response.headers.get("content-type");
  if (type !== null && !type.toLowerCase().includes("text/event-stream")) {
    response.body?.cancel().catch(() => {});
    throw new ProtocolError(`Expected an event stream, got ${type}`, { requestId: response.headers.get("x-request-id") });
  }
}

/** @param {unknown} error */
function describeFailure(error) {
  return error instanceof Error ? error.message : String(error);
}
