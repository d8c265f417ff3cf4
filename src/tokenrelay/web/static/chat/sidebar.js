// The list of kept conversations: open one, rename it (in place), delete it (press twice),
// and filter them by the text of their titles and messages. Every control is a button or an
// input, so the list works from the keyboard as it does with a pointer.

/**
 * @typedef {import("./store.js").ConversationStore} ConversationStore
 * @typedef {{
 *   list: HTMLElement, search: HTMLInputElement, empty: HTMLElement, store: ConversationStore,
 *   open: (id: string) => void, removed: (id: string) => void, renamed: (id: string) => void,
 * }} SidebarOptions
 */

export class Sidebar {
  /** @type {string | null} */
  active = null;

  /** @param {SidebarOptions} options */
  constructor(options) {
    this.options = options;
    options.search.addEventListener("input", () => this.render());
    options.search.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && options.search.value) {
        event.stopPropagation(); // clears the search; the page's Escape (Stop) is not meant
        options.search.value = "";
        this.render();
      }
    });
  }

  /** Redraw the list (after any change), marking `active` when given. @param {string | null} [active] */
  render(active = this.active) {
    this.active = active;
    const { list, search, empty, store } = this.options;
    const query = search.value.trim();
    const matching = query ? store.search(query) : null;
    const entries = store.list().filter((entry) => !matching || matching.has(entry.id));
    list.replaceChildren(...entries.map((entry) => this.#item(entry.id, entry.title)));
    empty.hidden = entries.length > 0;
    empty.textContent = query ? "No conversation matches." : "No conversations yet.";
  }

  /** The ids in the order shown. */
  ids() {
    return [...this.options.list.querySelectorAll("li")].map((li) => /** @type {string} */ (li.dataset.id));
  }

  /** Put the keyboard focus on the open conversation's entry. */
  focusActive() {
    const selector = this.active ? `li[data-id="${CSS.escape(this.active)}"] .open` : "li .open";
    /** @type {HTMLElement | null} */ (this.options.list.querySelector(selector))?.focus();
  }

  /** @param {string} id @param {string} title */
  #item(id, title) {
    const li = document.createElement("li");
    li.dataset.id = id;
    const open = li.appendChild(document.createElement("button"));
    open.type = "button";
    open.className = "open";
    open.textContent = title;
    open.title = title;
    if (id === this.active) open.setAttribute("aria-current", "page");
    open.addEventListener("click", () => this.options.open(id));

    const rename = li.appendChild(document.createElement("button"));
    rename.type = "button";
    rename.className = "rename";
    rename.textContent = "Rename";
    rename.setAttribute("aria-label", `Rename “${title}”`);
    rename.addEventListener("click", () => this.#startRename(li, id, title));

    const remove = li.appendChild(document.createElement("button"));
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete “${title}”`);
    remove.addEventListener("click", () => {
      if (remove.dataset.armed !== "true") {
        // A second press deletes: a slip of the finger or of Enter loses nothing.
        remove.dataset.armed = "true";
        remove.textContent = "Sure?";
        remove.setAttribute("aria-label", `Press again to delete “${title}”`);
        return;
      }
      this.options.store.remove(id);
      this.options.removed(id);
    });
    remove.addEventListener("blur", () => {
      remove.dataset.armed = "false";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", `Delete “${title}”`);
    });
    return li;
  }

  /** @param {HTMLElement} li @param {string} id @param {string} title */
  #startRename(li, id, title) {
    const input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    let done = false;
    const finish = (/** @type {boolean} */ save) => {
      if (done) return;
      done = true;
      const value = input.value.trim();
      if (save && value && value !== title) {
        this.options.store.rename(id, value);
        this.options.renamed(id);
      }
      this.render();
      this.focusActiveOr(id);
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    li.replaceChildren(input);
    input.focus();
    input.select();
  }

  /** @param {string} id */
  focusActiveOr(id) {
    /** @type {HTMLElement | null} */ (this.options.list.querySelector(`li[data-id="${CSS.escape(id)}"] .open`))?.focus();
  }
}
