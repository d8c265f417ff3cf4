// The chat page's controller: conversations kept in this browser (chat/store.js) and listed
// in a sidebar (chat/sidebar.js), each answer streamed through the gateway's `/chat` with the
// JS client and rendered as Markdown while it arrives (markdown.js), with its stats.
//
// When the gateway has resumable streams (`/readyz` says `cluster.state` is "ok", checked once
// at load) each answer is asked for as one (chat/resumable.js): a dropped connection is then
// resumed from the last event received, and Stop ends the answer on the gateway rather than
// by closing the connection, which for a resumable stream would only detach from it.
//
// Keyboard: Enter sends (Shift+Enter: a new line), Escape stops the answer, Alt+Shift+N starts
// a new chat, Alt+ArrowUp / Alt+ArrowDown open the previous / next conversation.

import { chatEvents, isAbortError, listModels } from "./client/index.js";
import { describeAnswer, describeError, usageStats } from "./chat/describe.js";
import { addMessage, editQuestion, showConversation, showError, updateActions } from "./chat/render.js";
import { ResumableChat } from "./chat/resumable.js";
import { Sidebar } from "./chat/sidebar.js";
import { ConversationStore, newId, titleFrom } from "./chat/store.js";
import { StreamingMarkdown } from "./markdown-stream.js";
import { handleCopyButtons } from "./markdown.js";

const KEY_STORAGE = "tokenrelay.apiKey";
const ACTIVE_STORAGE = "tokenrelay.activeChat";
/** While an answer streams it is saved this often, so a closed page keeps most of it. */
const SAVE_EVERY_MS = 1000;

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
  toggleSidebar: /** @type {HTMLButtonElement} */ ($("toggle-sidebar")),
};

/**
 * @typedef {import("./chat/store.js").Conversation} Conversation
 * @typedef {import("./chat/store.js").StoredMessage} StoredMessage
 * @typedef {import("./chat/describe.js").AnswerStats} AnswerStats
 * The answer streaming now: its fetches' controller and, when resumable, its stream.
 * @typedef {{controller: AbortController, stream: ResumableChat | null, conversation: Conversation}} Run
 */

const store = new ConversationStore(localStorage);
const sidebar = new Sidebar({
  list: $("conversations"),
  search: /** @type {HTMLInputElement} */ ($("search")),
  empty: $("no-conversations"),
  store,
  open: (id) => openConversation(id),
  removed: (id) => {
    deleted.add(id);
    if (current.id === id) startNewChat();
    else sidebar.render(current.id);
    sidebar.focusActive();
  },
  renamed: (id) => {
    if (current.id === id) {
      current.title = store.get(id)?.title ?? current.title;
      current.renamed = true; // the next save keeps the new title
    }
  },
});
/** Conversations deleted while one of their answers still streamed: not to be saved again. */
const deleted = new Set();
const actions = {
  edit: (/** @type {HTMLElement} */ article) => startEdit(article),
  regenerate: () => regenerate(),
};

/** The conversation on screen (saved once it has a message). */
let current = emptyConversation();
/** @type {Run | null} */
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
    ask(current, text);
  }
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", () => startNewChat());
ui.toggleSidebar.addEventListener("click", () => setSidebarOpen(!document.body.classList.contains("sidebar-open")));
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running && !event.defaultPrevented) {
    event.preventDefault();
    stop();
  } else if (event.altKey && event.shiftKey && event.code === "KeyN") {
    event.preventDefault();
    startNewChat();
  } else if (event.altKey && !event.shiftKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
    event.preventDefault();
    switchBy(event.key === "ArrowUp" ? -1 : 1);
  } else if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
    setSidebarOpen(false);
    ui.toggleSidebar.focus();
  }
});
handleCopyButtons(ui.conversation);
// Another tab of this page changed the kept conversations: list them as they are now.
window.addEventListener("storage", (event) => {
  if (event.key?.startsWith("tokenrelay.chat")) sidebar.render();
});

restore();
loadModels();

/** Reopen the conversation open when the page was last closed, if it is still kept. */
function restore() {
  const id = localStorage.getItem(ACTIVE_STORAGE);
  const kept = id ? store.get(id) : null;
  if (kept) {
    current = kept;
    showConversation(ui.conversation, current.messages, actions);
    ui.conversation.scrollTop = ui.conversation.scrollHeight;
  }
  sidebar.render(kept ? current.id : null);
  updateActions(ui.conversation, false);
}

/** @returns {Conversation} */
function emptyConversation() {
  const now = Date.now();
  return { id: newId(), title: "New chat", createdAt: now, updatedAt: now, messages: [] };
}

/** An answer still streaming is let go of (and stopped on the gateway) and finishes into its own conversation. */
function letGo() {
  running?.stream?.stop();
  running?.controller.abort();
}

function startNewChat() {
  letGo();
  current = emptyConversation();
  localStorage.removeItem(ACTIVE_STORAGE);
  ui.conversation.replaceChildren();
  sidebar.render(null);
  setSidebarOpen(false);
  ui.prompt.focus();
}

/** @param {string} id */
function openConversation(id) {
  const kept = store.get(id);
  if (!kept) return;
  if (id !== current.id) {
    letGo();
    current = kept;
    localStorage.setItem(ACTIVE_STORAGE, id);
    showConversation(ui.conversation, current.messages, actions);
    updateActions(ui.conversation, false);
  }
  sidebar.render(id);
  setSidebarOpen(false);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  ui.prompt.focus();
}

/** Open the conversation `step` places above (-1) or below (1) the open one in the list. @param {number} step */
function switchBy(step) {
  const ids = sidebar.ids();
  if (!ids.length) return;
  const at = ids.indexOf(current.id);
  const next = at === -1 ? (step > 0 ? 0 : ids.length - 1) : at + step;
  if (next >= 0 && next < ids.length) openConversation(ids[next]);
}

/** @param {boolean} open */
function setSidebarOpen(open) {
  document.body.classList.toggle("sidebar-open", open);
  ui.toggleSidebar.setAttribute("aria-expanded", String(open));
  if (open) sidebar.focusActive();
}

function stop() {
  if (!running) return;
  if (running.stream) {
    ui.stop.disabled = true; // the gateway is told; the answer ends when its `done` comes
    running.stream.stop();
  } else {
    running.controller.abort(); // a plain stream: closing the connection stops it
  }
}

/** Ask the last question again, in place of its answer. */
function regenerate() {
  if (running || current.messages.at(-1)?.role !== "assistant") return;
  current.messages.pop();
  ui.conversation.querySelector(".message.assistant:last-of-type")?.remove();
  ask(current, null);
}

/** @param {HTMLElement} article a question on screen */
function startEdit(article) {
  if (running) return;
  const index = [...ui.conversation.querySelectorAll(".message")].indexOf(article);
  const message = current.messages[index];
  if (message?.role !== "user") return;
  editQuestion(article, message.content, (text) => {
    if (running) return;
    // The conversation goes on from the edited question: what came after it is dropped.
    current.messages.splice(index);
    showConversation(ui.conversation, current.messages, actions);
    ask(current, text);
  });
}

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
        option.value = option.textContent = typeof model === "string" ? model : /** @type {any} */ (model).id;
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

/** Keep `conversation` (unless it was deleted meanwhile); say so if older ones made room. @param {Conversation} conversation */
function save(conversation) {
  if (deleted.has(conversation.id)) return;
  try {
    const dropped = store.save(conversation);
    if (dropped.length) showNotice(`${dropped.length} old conversation(s) deleted to keep this one: storage is full.`);
  } catch {
    showNotice("This conversation is too large to be kept in this browser.");
  }
}

/**
 * The messages to send: every answered turn (a question whose answer failed with nothing is
 * not sent again).
 * @param {StoredMessage[]} messages
 */
function messagesToSend(messages) {
  /** @type {{role: string, content: string}[]} */
  const out = [];
  messages.forEach((message, i) => {
    const next = messages[i + 1];
    if (message.role === "user" && next?.role === "assistant" && !next.content) return;
    if (message.role === "assistant" && !message.content) return;
    out.push({ role: message.role, content: message.content });
  });
  return out;
}

/**
 * Ask `question` (null: the last question again) in `conversation`, and stream its answer.
 * @param {Conversation} conversation
 * @param {string | null} question
 */
async function ask(conversation, question) {
  const started = performance.now();
  if (question !== null) {
    if (!conversation.messages.length && !conversation.renamed) conversation.title = titleFrom(question);
    conversation.messages.push({ role: "user", content: question });
    addMessage(ui.conversation, "user", actions).body.textContent = question;
  }
  const model = ui.model.value || undefined;
  const messages = messagesToSend(conversation.messages);
  /** @type {StoredMessage} */
  const answerMessage = { role: "assistant", content: "", stats: { state: "streaming", model } };
  conversation.messages.push(answerMessage);
  conversation.updatedAt = Date.now();
  localStorage.setItem(ACTIVE_STORAGE, conversation.id);
  save(conversation);
  sidebar.render(conversation.id);

  const answer = addMessage(ui.conversation, "assistant", actions);
  answer.article.dataset.state = "streaming";
  answer.article.setAttribute("aria-busy", "true");
  ui.conversation.scrollTop = ui.conversation.scrollHeight;

  /** @type {Run} */
  const run = { controller: new AbortController(), stream: null, conversation };
  running = run;
  setBusy(true);
  let text = "";
  /** @type {number | null} */
  let firstTokenMs = null;
  /** @type {AnswerStats} */
  let usage = {};
  /** @type {string | null} */
  let finishReason = null;
  let frame = 0;
  let savedAt = performance.now();
  const markdown = new StreamingMarkdown(answer.body);
  /** Change the answer; the page follows it if the reader was at the end (not reading above). */
  const follow = (/** @type {() => void} */ change) => {
    const list = ui.conversation;
    const following = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    change();
    if (following && answer.article.isConnected) list.scrollTop = list.scrollHeight;
  };
  const render = () => {
    frame = 0;
    follow(() => markdown.update(text)); // only the end of the answer is drawn again
    if (performance.now() - savedAt > SAVE_EVERY_MS) {
      savedAt = performance.now();
      answerMessage.content = text;
      save(conversation);
    }
  };
  const options = {
    apiKey: ui.apiKey.value.trim() || undefined,
    model,
    messages,
    signal: run.controller.signal,
  };
  /** @type {string | undefined} */
  let error;
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
        plainOnly: () => {
          resumable = false;
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
        usage = usageStats(event);
      } else if (event.type === "done") {
        finishReason = event.finish_reason;
      }
    }
    // A resumable stream stopped on the gateway ends with `done`, finish_reason "stopped".
    answer.article.dataset.state = finishReason === "stopped" ? "stopped" : "done";
  } catch (caught) {
    if (isAbortError(caught)) {
      answer.article.dataset.state = "stopped";
    } else {
      answer.article.dataset.state = "error";
      error = describeError(caught);
      const message = error;
      follow(() => showError(answer, message));
    }
  } finally {
    cancelAnimationFrame(frame);
    follow(() => {
      markdown.update(text);
      markdown.finish();
    });
    answer.status.textContent = "";
    answer.article.removeAttribute("aria-busy");
    run.stream?.close();
    if (running === run) {
      // Not if the page let this answer go and another question is already on its way.
      running = null;
      setBusy(false);
    }
  }
  /** @type {AnswerStats} */
  const stats = {
    state: answer.article.dataset.state,
    ...usage,
    firstTokenMs,
    durationMs: performance.now() - started,
    model,
  };
  follow(() => (answer.meta.textContent = describeAnswer(stats)));
  answerMessage.content = text;
  answerMessage.stats = stats;
  if (error) answerMessage.error = error;
  conversation.updatedAt = Date.now();
  save(conversation);
  sidebar.render();
}

/** @param {boolean} busy */
function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  updateActions(ui.conversation, busy);
  if (!busy) ui.prompt.focus();
}
