// The conversation on screen: one <article class="message user|assistant"> per message.
// An assistant answer carries `data-state` (streaming, reconnecting, done, stopped, error,
// interrupted) for people reading the page's markup and for the browser tests, a live
// status line (says "Reconnecting…" while a dropped answer is resumed) and a line of stats.

import { renderMarkdown } from "../markdown.js";
import { describeAnswer } from "./describe.js";

/**
 * @typedef {import("./store.js").StoredMessage} StoredMessage
 * @typedef {{article: HTMLElement, body: HTMLElement, status: HTMLElement, meta: HTMLElement,
 *   actions: HTMLElement}} MessageView
 * @typedef {{edit: (article: HTMLElement) => void, regenerate: () => void}} MessageActions
 */

/**
 * A message's frame, appended to `container`.
 * @param {HTMLElement} container
 * @param {"user" | "assistant"} role
 * @param {MessageActions} on
 * @returns {MessageView}
 */
export function addMessage(container, role, on) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  article.setAttribute("aria-label", role === "user" ? "Your message" : "Answer");
  const body = article.appendChild(document.createElement("div"));
  body.className = "body";
  // A live region from the start (empty, so not shown): one added together with its text
  // may not be announced.
  const status = article.appendChild(document.createElement("p"));
  status.className = "status";
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  const meta = article.appendChild(document.createElement("p"));
  meta.className = "meta";
  const actions = article.appendChild(document.createElement("div"));
  actions.className = "actions";
  if (role === "user") {
    actions.append(button("Edit", "edit", "Edit and resend this question", () => on.edit(article)));
  } else {
    actions.append(button("Regenerate", "regenerate", "Ask for this answer again", () => on.regenerate()));
  }
  container.append(article);
  return { article, body, status, meta, actions };
}

/**
 * A whole kept conversation, drawn at once (answers rendered as Markdown).
 * @param {HTMLElement} container
 * @param {StoredMessage[]} messages
 * @param {MessageActions} on
 */
export function showConversation(container, messages, on) {
  container.replaceChildren();
  for (const message of messages) {
    const view = addMessage(container, message.role, on);
    if (message.role === "user") {
      view.body.textContent = message.content;
      continue;
    }
    view.body.append(renderMarkdown(message.content));
    // An answer still streaming when the page was closed was cut short there.
    const state = message.stats?.state === "streaming" || message.stats?.state === "reconnecting"
      ? "interrupted"
      : message.stats?.state ?? "done";
    view.article.dataset.state = state;
    if (message.error) showError(view, message.error);
    view.meta.textContent = state === "interrupted" ? "interrupted" : describeAnswer(message.stats ?? {});
  }
}

/** @param {MessageView} view @param {string} text */
export function showError(view, text) {
  const message = document.createElement("p");
  message.className = "error";
  message.setAttribute("role", "alert");
  message.textContent = text;
  view.article.insertBefore(message, view.actions);
}

/**
 * Which actions can be used now: Edit on every question, Regenerate on the last answer, none
 * while an answer streams.
 * @param {HTMLElement} container
 * @param {boolean} busy
 */
export function updateActions(container, busy) {
  const answers = container.querySelectorAll(".message.assistant");
  for (const element of container.querySelectorAll(".actions button")) {
    const action = /** @type {HTMLButtonElement} */ (element);
    const article = action.closest(".message");
    action.hidden = action.classList.contains("regenerate") && article !== answers[answers.length - 1];
    action.disabled = busy;
  }
}

/**
 * Replace a question's text with an editor; `send` gets the new text.
 * @param {HTMLElement} article
 * @param {string} text
 * @param {(text: string) => void} send
 */
export function editQuestion(article, text, send) {
  const body = /** @type {HTMLElement} */ (article.querySelector(".body"));
  const actions = /** @type {HTMLElement} */ (article.querySelector(".actions"));
  const form = document.createElement("form");
  form.className = "edit";
  const area = form.appendChild(document.createElement("textarea"));
  area.value = text;
  area.rows = Math.min(10, text.split("\n").length + 1);
  area.setAttribute("aria-label", "Edit your question");
  const row = form.appendChild(document.createElement("div"));
  row.className = "edit-buttons";
  const save = row.appendChild(document.createElement("button"));
  save.type = "submit";
  save.textContent = "Send";
  const cancel = row.appendChild(button("Cancel", "cancel", "Keep the question as it was", () => close()));
  cancel.type = "button";
  const close = () => {
    form.remove();
    body.hidden = false;
    actions.hidden = false;
    /** @type {HTMLElement | null} */ (actions.querySelector("button"))?.focus();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = area.value.trim();
    if (value) send(value);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      close();
    }
  });
  body.hidden = true;
  actions.hidden = true;
  article.insertBefore(form, body);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

/**
 * @param {string} text @param {string} className @param {string} label @param {() => void} click
 */
function button(text, className, label, click) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = text;
  element.title = label;
  element.addEventListener("click", click);
  return element;
}
