// The chat page: one conversation, streamed through the gateway's `/chat` with the JS client.
// Each assistant answer carries `data-state` (streaming, reconnecting, done, stopped, error)
// for people reading the page's markup and for the browser tests.
//
// When the gateway has resumable streams (`/readyz` says `cluster.state` is "ok", checked once
// at load) each answer is asked for as one: a dropped connection is then resumed from the last
// event received (`GET /v1/streams/{id}` with `Last-Event-ID`), and Stop ends the answer on
// the gateway (`POST /v1/streams/{id}/stop`) rather than by closing the connection, which
// for a resumable stream would only detach from it.

import {
  APIError,
  ConnectionError,
  ProtocolError,
  SSEParser,
  StreamError,
  chatEvents,
  errorFromResponse,
  isAbortError,
  listModels,
} from "./client/index.js";
import { StreamingMarkdown } from "./markdown.js";

const KEY_STORAGE = "tokenrelay.apiKey";
/** Waits between attempts to resume a dropped stream, as EventSource does; the last repeats. */
const RETRY_DELAYS_MS = [250, 500, 1000, 2000];
/** How long the page keeps trying to resume before it gives the answer up as lost. */
const RETRY_FOR_MS = 60_000;
/** Nothing at all (not even a keep-alive) for this long: the connection is dead, resume. */
const SILENCE_MS = 45_000;
/** After Stop, how long the stream may take to end with `done` before the page lets go. */
const STOP_WAIT_MS = 3000;

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const ui = {
  conversation: $("conversation"),
  composer: /** @type {HTMLFormElement} */ ($("composer")),
  prompt: /** @type {HTMLTextAreaElement} */ ($("prompt")),
  send: /** @type {HTMLButtonElement} */ ($("send")),
  stop: /** @type {HTMLButtonElement} */ ($("stop")),
  model: /** @type {HTMLSelectElement} */ ($("model")),
  apiKey: /** @type {HTMLInputElement} */ ($("api-key")),
  newChat: /** @type {HTMLButtonElement} */ ($("new-chat")),
  notice: $("notice"),
};

/** The conversation on screen; "New chat" starts another (an answer still streaming keeps its own). */
/** @type {{role: string, content: string}[]} */
let history = [];
/**
 * The answer streaming now: its fetches' controller and, when resumable, its stream.
 * @typedef {{controller: AbortController, stream: ResumableChat | null}} Run
 * @type {Run | null}
 */
let running = null;
/** Whether this gateway serves resumable streams (it has Redis): set once, at load. */
let resumable = false;
const gatewayChecked = checkResumable();

ui.apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
ui.apiKey.addEventListener("change", () => {
  // The key stays in this browser: it is only ever sent to this gateway, in a header.
  localStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
  loadModels();
});
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (text && !running) {
    ui.prompt.value = "";
    ask(text);
  }
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => {
  if (!running) return;
  if (running.stream) {
    ui.stop.disabled = true; // the gateway is told; the answer ends when its `done` comes
    running.stream.stop();
  } else {
    running.controller.abort(); // a plain stream: closing the connection stops it
  }
});
ui.newChat.addEventListener("click", () => {
  // The old answer is let go of at once; a resumable one is also stopped on the gateway
  // (closing its connection would only detach from it).
  running?.stream?.stop();
  running?.controller.abort();
  history = []; // a new array: the stopped answer finishes into the old conversation, not this one
  ui.conversation.replaceChildren();
  ui.prompt.focus();
});
loadModels();

/** Asks `/readyz` once whether the gateway keeps streams resumable (it has Redis for them). */
async function checkResumable() {
  try {
    const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
    const body = await response.json();
    resumable = body?.cluster?.state === "ok";
  } catch {
    resumable = false; // plain streams, as before
  }
}

async function loadModels() {
  try {
    const models = await listModels({ apiKey: ui.apiKey.value.trim() || undefined });
    const chosen = ui.model.value;
    ui.model.replaceChildren(
      ...models.map((model) => {
        const option = document.createElement("option");
        option.value = option.textContent = typeof model === "string" ? model : model.id;
        return option;
      }),
    );
    if (chosen && [...ui.model.options].some((o) => o.value === chosen)) ui.model.value = chosen;
    showNotice("");
  } catch (error) {
    showNotice(`Could not load the models: ${describeError(error)}`);
  }
}

/** @param {string} text */
function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

/** @param {string} question */
async function ask(question) {
  const conversation = history; // this answer belongs here, whatever "New chat" does meanwhile
  conversation.push({ role: "user", content: question });
  addMessage("user").body.textContent = question;
  const answer = addMessage("assistant");
  answer.article.dataset.state = "streaming";

  /** @type {Run} */
  const run = { controller: new AbortController(), stream: null };
  running = run;
  setBusy(true);
  const started = performance.now();
  let text = "";
  /** @type {number | null} */
  let firstTokenMs = null;
  /** @type {any} */
  let usage = null;
  /** @type {string | null} */
  let finishReason = null;
  let frame = 0;
  const markdown = new StreamingMarkdown(answer.body);
  const render = () => {
    frame = 0;
    markdown.update(text); // only what changed since the last frame is rendered
    if (answer.article.isConnected) ui.conversation.scrollTop = ui.conversation.scrollHeight;
  };
  const options = {
    apiKey: ui.apiKey.value.trim() || undefined,
    model: ui.model.value || undefined,
    messages: conversation,
    signal: run.controller.signal,
  };
  try {
    await gatewayChecked;
    let events;
    if (resumable) {
      run.stream = new ResumableChat(options, run.controller, {
        reconnecting: () => {
          answer.article.dataset.state = "reconnecting";
          answer.status.textContent = "Connection lost. Reconnecting…";
        },
        reconnected: () => {
          answer.article.dataset.state = "streaming";
          answer.status.textContent = "";
        },
      });
      events = run.stream.events();
    } else {
      events = chatEvents(options);
    }
    for await (const event of events) {
      if (event.type === "delta") {
        firstTokenMs ??= performance.now() - started;
        text += event.text;
        // One render per frame however fast tokens come.
        frame ||= requestAnimationFrame(render);
      } else if (event.type === "usage") {
        usage = event;
      } else if (event.type === "done") {
        finishReason = event.finish_reason;
      }
    }
    // A resumable stream stopped on the gateway ends with `done`, finish_reason "stopped".
    answer.article.dataset.state = finishReason === "stopped" ? "stopped" : "done";
  } catch (error) {
    if (isAbortError(error)) {
      answer.article.dataset.state = "stopped";
    } else {
      answer.article.dataset.state = "error";
      const message = document.createElement("p");
      message.className = "error";
      message.setAttribute("role", "alert");
      message.textContent = describeError(error);
      answer.article.append(message);
    }
  } finally {
    cancelAnimationFrame(frame);
    render();
    answer.status.textContent = "";
    run.stream?.close();
    if (running === run) {
      // Not if "New chat" let this answer go and another question is already on its way.
      running = null;
      setBusy(false);
    }
  }
  const state = answer.article.dataset.state;
  if (text) conversation.push({ role: "assistant", content: text });
  else if (state !== "done") conversation.pop(); // nothing came back: do not send the question twice
  answer.meta.textContent = describeAnswer(state, usage, firstTokenMs, performance.now() - started);
}

/** @param {"user" | "assistant"} role */
function addMessage(role) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  const body = article.appendChild(document.createElement("div"));
  body.className = "body";
  // Says "Reconnecting…" while a dropped answer is being resumed. A live region from the
  // start (empty, so not shown): one added together with its text may not be announced.
  const status = article.appendChild(document.createElement("p"));
  status.className = "status";
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  const meta = article.appendChild(document.createElement("p"));
  meta.className = "meta";
  ui.conversation.append(article);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  return { article, body, status, meta };
}

/** @param {boolean} busy */
function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  if (!busy) ui.prompt.focus();
}

/**
 * @param {string | undefined} state
 * @param {any} usage
 * @param {number | null} firstTokenMs
 * @param {number} totalMs
 */
function describeAnswer(state, usage, firstTokenMs, totalMs) {
  const parts = [];
  if (state === "stopped") parts.push("stopped");
  if (usage) {
    const how =
      usage.source === "estimated" ? ", estimated by tokenrelay"
      : usage.source === "tokenizer" ? ", counted with the model's tokenizer"
      : "";
    parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens${how}`);
  }
  if (firstTokenMs !== null) parts.push(`first token ${Math.round(firstTokenMs)} ms`);
  parts.push(`${(totalMs / 1000).toFixed(2)} s`);
  return parts.join(" · ");
}

/**
 * A sentence a person can act on, with the gateway's code for the curious.
 * @param {unknown} error
 */
function describeError(error) {
  if (error instanceof APIError) {
    const retry = error.retryAfter != null ? ` Try again in ${error.retryAfter} s.` : "";
    const why =
      error.code === "budget_exceeded" ? "This key's budget is used up."
      : error.status === 429 ? `Rate limited.${retry}`
      : error.status === 401 || error.status === 403 ? "The gateway refused the API key."
      : error.code === "model_not_found" ? "The gateway does not know this model."
      : error.code === "stream_not_found" ? "The answer could not be resumed: the gateway no longer has it."
      : error.status === 503 ? "The gateway is restarting."
      : error.status === 504 ? "The model took too long to answer."
      : error.status >= 500 ? "The model provider is unavailable."
      : "The gateway refused the request.";
    return `${why} (${error.code}: ${error.message})`;
  }
  if (error instanceof StreamError) {
    const why =
      error.code === "budget_exceeded" ? "This key's budget ran out during the answer."
      : error.code === "upstream_timeout" ? "The model stopped responding."
      : error.code === "shutdown" ? "The gateway restarted during the answer."
      : error.code === "resume_gap" || error.code === "resume_buffer_full"
        ? "The answer could not be resumed: part of it is no longer kept."
      : error.code === "stream_lost" ? "The gateway serving the answer went away."
      : error.code === "resumable_unavailable" ? "The gateway lost the store that keeps answers resumable."
      : "The model provider broke off the answer.";
    return `${why} (${error.code}: ${error.message})`;
  }
  if (error instanceof ConnectionError) return `Disconnected from the gateway. (${error.code}: ${error.message})`;
  return `Something went wrong: ${error instanceof Error ? error.message : String(error)}`;
}

/**
 * One answer asked for as a resumable stream (`POST /chat` with `"resumable": true`). It reads
 * like the client's chatEvents(): the same events, and the same errors for a refusal, an
 * `error` event or a lost answer. But a dropped connection is resumed where it broke
 * (`GET /v1/streams/{id}` with `Last-Event-ID`, retried with backoff for up to RETRY_FOR_MS),
 * and stop() ends the answer on the gateway. If the gateway cannot make the stream resumable
 * just now (its Redis is away), the answer is asked for again as a plain stream.
 */
class ResumableChat {
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
   * @param {{reconnecting: () => void, reconnected: () => void}} on
   */
  constructor(options, controller, on) {
    this.#options = options;
    this.#controller = controller;
    this.#on = on;
  }

  /** @returns {AsyncGenerator<import("./client/index.js").ChatEvent, void, undefined>} */
  async *events() {
    /** @type {Response} */
    let response;
    try {
      response = await this.#open();
    } catch (error) {
      if (!(error instanceof APIError && refusesResumable(error))) throw error;
      if (error.status === 400) resumable = false; // the gateway has no Redis (any more): ask plainly from now on
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
   * @returns {AsyncGenerator<import("./client/index.js").ChatEvent, boolean, undefined>}
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
   * @param {import("./client/index.js").SSEMessage} message
   * @returns {import("./client/index.js").ChatEvent | null | "dropped"}
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
