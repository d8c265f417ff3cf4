// The admin console: the key prompt, the three tabs, and who handles a refused key.
import { ApiError, adminKey, api, authMessage, forgetKey, rememberKey } from "./api.js";
import { KeysPanel } from "./keys.js";
import { LivePanel } from "./live.js";
import { UsagePanel } from "./usage.js";

/** @param {string} id */
function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing`);
  return element;
}

const TABS = /** @type {const} */ (["usage", "keys", "live"]);
const login = byId("login");
const loginForm = /** @type {HTMLFormElement} */ (byId("login-form"));
const keyInput = /** @type {HTMLInputElement} */ (byId("admin-key"));
const loginError = byId("login-error");
const tabList = byId("tabs");
const signOut = byId("sign-out");

/** @type {Map<string, string> | null} key id → "name (prefix)" */
let keyLabelCache = null;

/**
 * A failed call: a refused key sends the operator back to the prompt, with the reason;
 * anything else is shown where it happened.
 * @param {unknown} error
 * @param {HTMLElement} where
 */
function onError(error, where) {
  if (error instanceof ApiError && error.isAuth) {
    showLogin(authMessage(error));
    return;
  }
  where.textContent = error instanceof Error ? error.message : String(error);
}

/** @param {import("./keys.js").Key[]} keys */
function rememberLabels(keys) {
  keyLabelCache = new Map(keys.map((k) => [k.id, `${k.name} (${k.prefix})`]));
}

async function keyLabels() {
  if (!keyLabelCache) rememberLabels((await api("/v1/admin/keys")).data);
  return /** @type {Map<string, string>} */ (keyLabelCache);
}

const usage = new UsagePanel({ onError, keyLabels });
const keys = new KeysPanel({ onError, onChange: rememberLabels });
const live = new LivePanel({ onError });

/** @param {string} message */
function showLogin(message) {
  forgetKey();
  live.stop();
  keyLabelCache = null;
  usage.loaded = false;
  keys.loaded = false;
  for (const dialog of document.querySelectorAll("dialog[open]")) /** @type {HTMLDialogElement} */ (dialog).close();
  for (const name of TABS) byId(`panel-${name}`).hidden = true;
  tabList.hidden = true;
  signOut.hidden = true;
  login.hidden = false;
  loginError.textContent = message;
  keyInput.value = "";
  keyInput.setAttribute("aria-invalid", message ? "true" : "false");
  keyInput.focus();
}

function showConsole() {
  login.hidden = true;
  loginError.textContent = "";
  tabList.hidden = false;
  signOut.hidden = false;
  const wanted = location.hash.slice(1);
  select(/** @type {typeof TABS[number]} */ (TABS.includes(/** @type {any} */ (wanted)) ? wanted : "usage"), false);
}

/**
 * @param {typeof TABS[number]} name
 * @param {boolean} focus
 */
function select(name, focus) {
  for (const other of TABS) {
    const tab = byId(`tab-${other}`);
    const on = other === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    byId(`panel-${other}`).hidden = !on;
  }
  if (focus) byId(`tab-${name}`).focus();
  history.replaceState(null, "", `#${name}`);
  if (name === "live") live.start();
  else live.stop();
  if (name === "usage") void usage.show();
  if (name === "keys") void keys.show();
}

tabList.addEventListener("click", (event) => {
  const tab = /** @type {HTMLElement} */ (event.target).closest('[role="tab"]');
  if (tab) select(/** @type {typeof TABS[number]} */ (tab.id.slice(4)), false);
});

// Arrow keys move between tabs (and select them), Home and End go to the ends: the WAI-ARIA
// tabs pattern with automatic activation; Tab itself goes into the panel.
tabList.addEventListener("keydown", (event) => {
  const current = TABS.indexOf(/** @type {any} */ (document.activeElement?.id.slice(4)));
  if (current < 0) return;
  const next = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: TABS.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  select(TABS[(next + TABS.length) % TABS.length], true);
});

loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    loginError.textContent = "Enter the admin key.";
    keyInput.setAttribute("aria-invalid", "true");
    keyInput.focus();
    return;
  }
  rememberKey(key);
  await open();
});

signOut.addEventListener("click", () => showLogin(""));

/** Check the stored key against the gateway, then show the console. */
async function open() {
  try {
    rememberLabels((await api("/v1/admin/keys")).data);
  } catch (error) {
    if (error instanceof ApiError && error.isAuth) showLogin(authMessage(error));
    else {
      // Not the key's fault (the gateway is down, say): say so and keep the prompt.
      login.hidden = false;
      loginError.textContent = error instanceof Error ? error.message : String(error);
    }
    return;
  }
  keyInput.value = "";
  keyInput.setAttribute("aria-invalid", "false");
  showConsole();
}

if (adminKey()) void open();
else showLogin("");
document.documentElement.dataset.ready = "true";
