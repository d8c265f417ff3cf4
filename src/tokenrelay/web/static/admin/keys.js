// The Keys tab: list, create (the secret shown once), edit limits and models, revoke.
import { api } from "./api.js";
import { clear, formatInt, formatTime, formatUsd, h } from "./format.js";

/**
 * @typedef {{id: string, name: string, prefix: string, state: string, created_at: string,
 *   expires_at: string | null, revoked_at: string | null, last_used_at: string | null,
 *   budget_tokens: number | null, budget_usd: number | null, rpm: number | null,
 *   max_concurrent: number | null, models: string[] | null, spent_tokens: number, spent_usd: number}} Key
 */

const LIMIT_FIELDS = /** @type {const} */ (["budget_tokens", "budget_usd", "rpm", "max_concurrent"]);

/** @param {string} id */
function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing`);
  return element;
}

/**
 * A spend-vs-budget line: a meter when there is a budget, and the numbers as text either way.
 * @param {number} spent
 * @param {number | null} budget
 * @param {"tokens" | "usd"} unit
 */
function spendLine(spent, budget, unit) {
  const amount = (/** @type {number} */ n) => (unit === "usd" ? formatUsd(n) : `${formatInt(n)} tokens`);
  const line = h("div", { class: "spend", "data-unit": unit, "data-spent": String(spent), "data-budget": budget ?? "" });
  if (budget === null || budget === undefined) {
    line.append(h("span", {}, `${amount(spent)} · no budget`));
    return line;
  }
  const share = budget > 0 ? spent / budget : 1;
  const meter = h("meter", {
    min: 0, max: budget, value: Math.min(spent, budget), low: budget * 0.75, high: budget * 0.9, optimum: 0,
    "aria-label": unit === "usd" ? "USD budget used" : "Token budget used",
  });
  const used = unit === "usd" ? `${formatUsd(spent)} of ${formatUsd(budget)}` : `${formatInt(spent)} of ${formatInt(budget)} tokens`;
  line.append(meter, h("span", {}, `${used} (${Math.round(share * 100)} %)`));
  if (share >= 1) line.classList.add("over");
  return line;
}

/** @param {Key} key */
function limitsText(key) {
  const parts = [];
  parts.push(key.rpm === null ? "rpm: no limit" : `rpm: ${formatInt(key.rpm)}`);
  parts.push(key.max_concurrent === null ? "concurrent: no limit" : `concurrent: ${formatInt(key.max_concurrent)}`);
  parts.push(key.models === null ? "models: all" : `models: ${key.models.join(", ") || "none"}`);
  if (key.expires_at) parts.push(`expires ${formatTime(key.expires_at)}`);
  return parts;
}

/** The value of a number input: a number, or null when empty (no limit). @param {HTMLInputElement} input */
function numberOrNull(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}

export class KeysPanel {
  /** @param {{onError: (error: unknown, where: HTMLElement) => void, onChange: (keys: Key[]) => void}} deps */
  constructor({ onError, onChange }) {
    this.onError = onError;
    this.onChange = onChange;
    this.panel = byId("panel-keys");
    this.body = /** @type {HTMLTableSectionElement} */ (/** @type {HTMLTableElement} */ (byId("keys-table")).tBodies[0]);
    this.error = byId("keys-error");
    this.keyDialog = /** @type {HTMLDialogElement} */ (byId("key-dialog"));
    this.form = /** @type {HTMLFormElement} */ (byId("key-form"));
    this.formError = byId("key-form-error");
    this.modelsList = byId("key-models-list");
    this.secretDialog = /** @type {HTMLDialogElement} */ (byId("secret-dialog"));
    this.secretValue = /** @type {HTMLInputElement} */ (byId("secret-value"));
    this.revokeDialog = /** @type {HTMLDialogElement} */ (byId("revoke-dialog"));
    /** @type {Key[]} */
    this.keys = [];
    /** @type {Key | null} the key being edited; null while creating */
    this.editing = null;
    /** @type {Key | null} */
    this.revoking = null;
    /** @type {string[] | null} */
    this.models = null;
    /** @type {HTMLElement | null} where focus goes back when a dialog closes */
    this.returnFocus = null;
    this.loaded = false;

    byId("key-create").addEventListener("click", (event) => void this.openForm(null, /** @type {HTMLElement} */ (event.currentTarget)));
    byId("keys-reload").addEventListener("click", () => void this.load());
    byId("key-cancel").addEventListener("click", () => this.keyDialog.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.save();
    });
    byId("secret-copy").addEventListener("click", () => void this.copySecret());
    byId("secret-done").addEventListener("click", () => {
      this.secretValue.value = ""; // now, not in the close event, which comes a task later
      this.secretDialog.close();
    });
    // However the dialog closes (button, Escape), the secret leaves the page with it.
    this.secretDialog.addEventListener("close", () => {
      this.secretValue.value = "";
      byId("secret-copied").textContent = "";
      this.restoreFocus();
    });
    this.keyDialog.addEventListener("close", () => this.restoreFocus());
    this.revokeDialog.addEventListener("close", () => this.restoreFocus());
    byId("revoke-cancel").addEventListener("click", () => this.revokeDialog.close());
    byId("revoke-confirm").addEventListener("click", () => void this.revoke());
    this.body.addEventListener("click", (event) => {
      const button = /** @type {HTMLElement} */ (event.target).closest("button[data-action]");
      if (!(button instanceof HTMLButtonElement)) return;
      const key = this.keys.find((k) => k.id === button.dataset.keyId);
      if (!key) return;
      if (button.dataset.action === "edit") void this.openForm(key, button);
      else if (button.dataset.action === "revoke") this.confirmRevoke(key, button);
    });
  }

  async show() {
    if (!this.loaded) await this.load();
  }

  async load() {
    this.error.textContent = "";
    this.panel.setAttribute("aria-busy", "true");
    try {
      const listed = await api("/v1/admin/keys");
      this.keys = listed.data;
      this.render();
      this.loaded = true;
      this.onChange(this.keys);
    } catch (error) {
      this.onError(error, this.error);
    } finally {
      this.panel.removeAttribute("aria-busy");
    }
  }

  render() {
    // A reload replaces the rows: a button that had the focus gets it back in its new row.
    const active = document.activeElement;
    const refocus = active instanceof HTMLElement && this.body.contains(active) ? active.dataset : null;
    clear(this.body);
    for (const key of this.keys) {
      const limits = h("ul", { class: "plain" });
      for (const part of limitsText(key)) limits.append(h("li", {}, part));
      const spend = h("div", { class: "spends" },
        spendLine(key.spent_tokens, key.budget_tokens, "tokens"),
        spendLine(key.spent_usd, key.budget_usd, "usd"));
      const usable = key.state === "active";
      // data-label: the column's name, shown by the stylesheet when a narrow screen stacks the cells.
      this.body.append(
        h("tr", { "data-key-id": key.id, "data-state": key.state },
          h("th", { scope: "row" }, key.name),
          h("td", { "data-label": "Prefix" }, h("code", {}, key.prefix)),
          h("td", { "data-label": "State" }, h("span", { class: `state state-${key.state}` }, key.state)),
          h("td", { "data-label": "Limits" }, limits),
          h("td", { "data-label": "Spend" }, spend),
          h("td", { "data-label": "Last used", class: "nowrap" }, formatTime(key.last_used_at)),
          h("td", { "data-label": "Actions" }, h("div", { class: "buttons" },
            h("button", { type: "button", "data-action": "edit", "data-key-id": key.id, "aria-label": `Edit ${key.name}` }, "Edit"),
            h("button", {
              type: "button", class: "danger", "data-action": "revoke", "data-key-id": key.id,
              "aria-label": `Revoke ${key.name}`, disabled: !usable,
            }, "Revoke")))),
      );
    }
    if (this.keys.length === 0) this.body.append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No keys yet.")));
    if (refocus?.action && refocus.keyId) {
      const again = this.body.querySelector(`button[data-action="${refocus.action}"][data-key-id="${CSS.escape(refocus.keyId)}"]`);
      if (again instanceof HTMLButtonElement && !again.disabled) again.focus();
    }
  }

  /** The gateway's models, for the allow-list checkboxes (the admin key sees them all). */
  async loadModels() {
    if (this.models) return this.models;
    const listed = await api("/v1/models");
    this.models = listed.data.map((/** @type {{id: string}} */ m) => m.id);
    return /** @type {string[]} */ (this.models);
  }

  /**
   * @param {Key | null} key the key to edit, or null to create one
   * @param {HTMLElement} opener
   */
  async openForm(key, opener) {
    this.editing = key;
    this.returnFocus = opener;
    this.form.reset();
    this.formError.textContent = "";
    byId("key-dialog-title").textContent = key ? `Edit ${key.name}` : "Create key";
    byId("key-save").textContent = key ? "Save" : "Create";
    let models = [];
    try {
      models = await this.loadModels();
    } catch (error) {
      this.onError(error, this.error);
      return;
    }
    // A key may allow a model the gateway no longer serves: keep it visible to untick.
    const names = [...new Set([...models, ...(key?.models ?? [])])];
    clear(this.modelsList);
    for (const [i, name] of names.entries()) {
      const id = `key-model-${i}`;
      this.modelsList.append(
        h("div", { class: "check" },
          h("input", { type: "checkbox", id, name: "models", value: name, checked: key?.models?.includes(name) ?? false }),
          h("label", { for: id }, name)),
      );
    }
    const field = (/** @type {string} */ id) => /** @type {HTMLInputElement} */ (byId(id));
    if (key) {
      field("key-name").value = key.name;
      field("key-budget-tokens").value = key.budget_tokens?.toString() ?? "";
      field("key-budget-usd").value = key.budget_usd?.toString() ?? "";
      field("key-rpm").value = key.rpm?.toString() ?? "";
      field("key-max-concurrent").value = key.max_concurrent?.toString() ?? "";
      field("key-expires").value = key.expires_at ? key.expires_at.slice(0, 10) : "";
    }
    this.keyDialog.showModal();
  }

  /** The form's values in the API's shape (empty: no limit). */
  formValues() {
    const field = (/** @type {string} */ id) => /** @type {HTMLInputElement} */ (byId(id));
    const ticked = [...this.modelsList.querySelectorAll("input:checked")].map((el) => /** @type {HTMLInputElement} */ (el).value);
    const expires = field("key-expires").value;
    return {
      name: field("key-name").value.trim(),
      budget_tokens: numberOrNull(field("key-budget-tokens")),
      budget_usd: numberOrNull(field("key-budget-usd")),
      rpm: numberOrNull(field("key-rpm")),
      max_concurrent: numberOrNull(field("key-max-concurrent")),
      models: ticked.length ? ticked : null,
      expires_at: expires ? `${expires}T00:00:00+00:00` : null,
    };
  }

  async save() {
    this.formError.textContent = "";
    const values = this.formValues();
    if (!values.name) {
      this.formError.textContent = "A key needs a name.";
      byId("key-name").focus();
      return;
    }
    for (const field of LIMIT_FIELDS) {
      const value = values[field];
      if (value !== null && (!Number.isFinite(value) || value < 0 || (field !== "budget_usd" && !Number.isInteger(value)))) {
        const what = field === "budget_usd" ? "a number" : "a whole number";
        this.formError.textContent = `${field.replace("_", " ")} must be ${what} of 0 or more, or empty for no limit.`;
        return;
      }
    }
    const saveButton = /** @type {HTMLButtonElement} */ (byId("key-save"));
    saveButton.disabled = true;
    try {
      if (this.editing) {
        const changes = changedFields(this.editing, values);
        if (Object.keys(changes).length) await api(`/v1/admin/keys/${encodeURIComponent(this.editing.id)}`, { method: "PATCH", body: changes });
        this.keyDialog.close();
      } else {
        /** @type {Record<string, unknown>} */
        const body = { name: values.name };
        for (const [name, value] of Object.entries(values)) if (value !== null && name !== "name") body[name] = value;
        const created = await api("/v1/admin/keys", { method: "POST", body });
        this.keyDialog.close();
        this.showSecret(created.secret);
      }
      await this.load();
    } catch (error) {
      this.onError(error, this.formError);
    } finally {
      saveButton.disabled = false;
    }
  }

  /** @param {string} secret */
  showSecret(secret) {
    this.secretValue.value = secret;
    byId("secret-copied").textContent = "";
    this.secretDialog.showModal();
    this.secretValue.select();
  }

  async copySecret() {
    const status = byId("secret-copied");
    try {
      await navigator.clipboard.writeText(this.secretValue.value);
      status.textContent = "Copied to the clipboard.";
    } catch {
      this.secretValue.select();
      status.textContent = "Copying is not allowed here: the key is selected, press Ctrl+C (⌘C).";
    }
  }

  /**
   * @param {Key} key
   * @param {HTMLElement} opener
   */
  confirmRevoke(key, opener) {
    this.revoking = key;
    this.returnFocus = opener;
    byId("revoke-error").textContent = "";
    byId("revoke-text").textContent =
      `Revoke ${key.name} (${key.prefix})? Requests with it are refused within the gateway's key cache time ` +
      "(a few seconds) on every replica. This cannot be undone.";
    this.revokeDialog.showModal();
    byId("revoke-cancel").focus(); // the safe choice is the default one
  }

  async revoke() {
    const key = this.revoking;
    if (!key) return;
    try {
      await api(`/v1/admin/keys/${encodeURIComponent(key.id)}/revoke`, { method: "POST" });
      this.returnFocus = byId("key-create"); // the row's button is disabled now
      this.revokeDialog.close();
      await this.load();
    } catch (error) {
      this.onError(error, byId("revoke-error"));
    }
  }

  restoreFocus() {
    // One dialog closing as the next opens (the form, then the secret): focus waits for the last.
    if (document.querySelector("dialog[open]")) return;
    const target = this.returnFocus;
    this.returnFocus = null;
    if (target && document.contains(target) && !(/** @type {HTMLButtonElement} */ (target).disabled)) target.focus();
  }
}

/**
 * The fields of ``values`` that differ from ``key`` (a PATCH sends only those; null clears).
 * @param {Key} key
 * @param {ReturnType<KeysPanel["formValues"]>} values
 */
function changedFields(key, values) {
  /** @type {Record<string, unknown>} */
  const changes = {};
  if (values.name !== key.name) changes.name = values.name;
  for (const field of LIMIT_FIELDS) if (values[field] !== key[field]) changes[field] = values[field];
  const before = key.models ? [...key.models].sort().join("\n") : null;
  const after = values.models ? [...values.models].sort().join("\n") : null;
  if (before !== after) changes.models = values.models;
  if ((values.expires_at?.slice(0, 10) ?? null) !== (key.expires_at?.slice(0, 10) ?? null)) changes.expires_at = values.expires_at;
  return changes;
}
