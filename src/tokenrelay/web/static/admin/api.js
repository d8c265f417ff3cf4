// The admin API, with the admin key from this tab's session storage (never localStorage: the
// key should not outlive the tab, nor be readable by another one).

const STORAGE_KEY = "tokenrelay.adminKey";

/** The key, or null when none was entered in this tab. */
export function adminKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled: the page asks again
  }
}

/** @param {string} key */
export function rememberKey(key) {
  sessionStorage.setItem(STORAGE_KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** An answer of the API that is not a success, in its own error shape when it has one. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string | null} code
   * @param {string} message
   */
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }

  /** The key is missing, wrong or not the admin key: the page asks for it again. */
  get isAuth() {
    return this.status === 401 || this.status === 403;
  }
}

/**
 * A JSON request to the gateway with the admin key.
 * @param {string} path
 * @param {{method?: string, body?: unknown, signal?: AbortSignal}} [options]
 * @returns {Promise<any>}
 */
export async function api(path, { method = "GET", body, signal } = {}) {
  const key = adminKey();
  if (!key) throw new ApiError(401, "missing_api_key", "No admin key entered.");
  /** @type {Record<string, string>} */
  const headers = { authorization: `Bearer ${key}`, accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (signal?.aborted) throw error;
    throw new ApiError(0, "network_error", "The gateway cannot be reached.");
  }
  const text = await response.text();
  /** @type {any} */
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data?.error;
    throw new ApiError(
      response.status,
      typeof error?.code === "string" ? error.code : null,
      typeof error?.message === "string" ? error.message : `HTTP ${response.status}`,
    );
  }
  return data;
}

/**
 * What to tell the operator about a refused key.
 * @param {ApiError} error
 */
export function authMessage(error) {
  if (error.status === 401) {
    return `The gateway did not accept this key (${error.code ?? "401"}). Check it and try again.`;
  }
  if (error.code === "admin_key_required") {
    return `The console is closed: ${error.message} (admin_key_required).`;
  }
  return `This key is not the admin key (${error.code ?? "403"}): ${error.message}`;
}
