// The chat page: one conversation, streamed through the gateway's `/chat` with the JS client.
// Each assistant answer carries `data-state` (streaming, done, stopped, error) for people
// reading the page's markup and for the browser tests.

import { APIError, ConnectionError, StreamError, chatEvents, isAbortError, listModels } from "./client/index.js";
import { StreamingMarkdown } from "./markdown.js";

const KEY_STORAGE = "tokenrelay.apiKey";

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
/** @type {AbortController | null} */
let running = null;

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
ui.stop.addEventListener("click", () => running?.abort());
ui.newChat.addEventListener("click", () => {
  running?.abort();
  history = []; // a new array: the stopped answer finishes into the old conversation, not this one
  ui.conversation.replaceChildren();
  ui.prompt.focus();
});
loadModels();

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

  running = new AbortController();
  setBusy(true);
  const started = performance.now();
  let text = "";
  /** @type {number | null} */
  let firstTokenMs = null;
  /** @type {any} */
  let usage = null;
  let frame = 0;
  const markdown = new StreamingMarkdown(answer.body);
  const render = () => {
    frame = 0;
    markdown.update(text); // only what changed since the last frame is rendered
    if (answer.article.isConnected) ui.conversation.scrollTop = ui.conversation.scrollHeight;
  };
  try {
    for await (const event of chatEvents({
      apiKey: ui.apiKey.value.trim() || undefined,
      model: ui.model.value || undefined,
      messages: conversation,
      signal: running.signal,
    })) {
      if (event.type === "delta") {
        firstTokenMs ??= performance.now() - started;
        text += event.text;
        // One render per frame however fast tokens come.
        frame ||= requestAnimationFrame(render);
      } else if (event.type === "usage") {
        usage = event;
      }
    }
    answer.article.dataset.state = "done";
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
    running = null;
    setBusy(false);
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
  const meta = article.appendChild(document.createElement("p"));
  meta.className = "meta";
  ui.conversation.append(article);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  return { article, body, meta };
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
      : "The model provider broke off the answer.";
    return `${why} (${error.code}: ${error.message})`;
  }
  if (error instanceof ConnectionError) return `Disconnected from the gateway. (${error.code}: ${error.message})`;
  return `Something went wrong: ${error instanceof Error ? error.message : String(error)}`;
}
