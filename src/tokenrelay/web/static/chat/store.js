// Conversations kept in this browser (localStorage), within a size cap.
//
// One key per conversation and an index of them all (id, title, times, size), so the sidebar
// lists conversations without reading every one. Past the cap (or when the browser's quota
// is full) the conversations used longest ago are dropped, never the one being saved.
// localStorage rather than IndexedDB: synchronous, so a conversation is written before the
// page can be closed, and answers are small next to its ~5 MB per site.

const INDEX_KEY = "tokenrelay.chats";
const CHAT_PREFIX = "tokenrelay.chat.";
/** Characters of conversations kept (localStorage counts UTF-16 characters; ~5 M per site). */
export const DEFAULT_MAX_CHARS = 3_000_000;

/**
 * @typedef {import("./describe.js").AnswerStats} AnswerStats
 * @typedef {{role: "user" | "assistant", content: string, stats?: AnswerStats, error?: string}} StoredMessage
 * @typedef {{id: string, title: string, renamed?: boolean, createdAt: number, updatedAt: number,
 *   messages: StoredMessage[]}} Conversation
 * @typedef {{id: string, title: string, createdAt: number, updatedAt: number, size: number}} Entry
 */

export class ConversationStore {
  /**
   * @param {Storage} storage
   * @param {{maxChars?: number}} [options]
   */
  constructor(storage, options = {}) {
    this.storage = storage;
    this.maxChars = options.maxChars ?? DEFAULT_MAX_CHARS;
  }

  /** Every conversation kept, most recently used first. @returns {Entry[]} */
  list() {
    return [...this.#index()].sort((a, b) => b.updatedAt - a.updatedAt);
  }

  /** @param {string} id @returns {Conversation | null} */
  get(id) {
    const text = this.storage.getItem(CHAT_PREFIX + id);
    if (text === null) return null;
    try {
      const value = JSON.parse(text);
      return value && Array.isArray(value.messages) ? value : null;
    } catch {
      return null; // written by something else: not ours to show
    }
  }

  /**
   * Keep `conversation` (a new one or a new version); drops old ones past the cap.
   * @param {Conversation} conversation
   * @returns {string[]} the ids of conversations dropped to make room
   */
  save(conversation) {
    const text = JSON.stringify(conversation);
    /** @type {string[]} */
    const dropped = [];
    let index = this.#index().filter((entry) => entry.id !== conversation.id);
    const entry = {
      id: conversation.id,
      title: conversation.title,
      createdAt: conversation.createdAt,
      updatedAt: conversation.updatedAt,
      size: text.length,
    };
    const oldestFirst = () => [...index].sort((a, b) => a.updatedAt - b.updatedAt);
    // Room under the cap first, then whatever the browser's own quota says.
    while (index.length && index.reduce((sum, e) => sum + e.size, text.length) > this.maxChars) {
      const oldest = oldestFirst()[0];
      this.storage.removeItem(CHAT_PREFIX + oldest.id);
      index = index.filter((e) => e.id !== oldest.id);
      dropped.push(oldest.id);
    }
    for (;;) {
      try {
        this.storage.setItem(CHAT_PREFIX + conversation.id, text);
        this.#writeIndex([...index, entry]);
        return dropped;
      } catch (error) {
        if (!index.length) throw error; // this conversation alone does not fit
        const oldest = oldestFirst()[0];
        this.storage.removeItem(CHAT_PREFIX + oldest.id);
        index = index.filter((e) => e.id !== oldest.id);
        dropped.push(oldest.id);
      }
    }
  }

  /** @param {string} id */
  remove(id) {
    this.storage.removeItem(CHAT_PREFIX + id);
    this.#writeIndex(this.#index().filter((entry) => entry.id !== id));
  }

  /** @param {string} id @param {string} title */
  rename(id, title) {
    const conversation = this.get(id);
    if (!conversation) return;
    conversation.title = title;
    conversation.renamed = true;
    this.save(conversation); // its place in the list stays: updatedAt is unchanged
  }

  /**
   * The ids of conversations whose title or messages contain `query` (case-insensitive).
   * @param {string} query
   * @returns {Set<string>}
   */
  search(query) {
    const needle = query.trim().toLowerCase();
    const found = new Set();
    for (const entry of this.#index()) {
      if (!needle || entry.title.toLowerCase().includes(needle)) {
        found.add(entry.id);
        continue;
      }
      const conversation = this.get(entry.id);
      if (conversation?.messages.some((m) => m.content.toLowerCase().includes(needle))) found.add(entry.id);
    }
    return found;
  }

  /** @returns {Entry[]} */
  #index() {
    try {
      const value = JSON.parse(this.storage.getItem(INDEX_KEY) ?? "[]");
      return Array.isArray(value) ? value.filter((e) => e && typeof e.id === "string") : [];
    } catch {
      return [];
    }
  }

  /** @param {Entry[]} index */
  #writeIndex(index) {
    this.storage.setItem(INDEX_KEY, JSON.stringify(index));
  }
}

/** A new conversation's id: random, URL-safe. */
export function newId() {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 16);
}

/** A title from the first question: its first line, shortened. @param {string} question */
export function titleFrom(question) {
  // The first line's words, without the Markdown that opens it (`## `, `> `, `- `).
  const line = question.trim().split("\n", 1)[0].replace(/^([#>*+-]+\s+)+/, "").replace(/\s+/g, " ").trim();
  return line.length > 60 ? `${line.slice(0, 57)}…` : line || "New chat";
}
