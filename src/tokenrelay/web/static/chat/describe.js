// Words for the chat page: what went wrong (an error a person can act on) and what an answer
// took (its tokens, cost, time to first token, duration and model). Pure functions.

import { APIError, ConnectionError, StreamError } from "../client/index.js";

/**
 * The numbers kept with an answer (measured in the browser, usage from the stream's `usage` event).
 * @typedef {{
 *   state?: string, model?: string, firstTokenMs?: number | null, durationMs?: number,
 *   promptTokens?: number, completionTokens?: number, source?: string, costUsd?: number | null,
 * }} AnswerStats
 */

/**
 * One line under an answer: "stopped · 12 prompt + 20 completion tokens · first token 35 ms ·
 * 0.42 s · $0.000052 · fast" (parts missing when unknown).
 * @param {AnswerStats} stats
 */
export function describeAnswer(stats) {
  const parts = [];
  if (stats.state === "stopped") parts.push("stopped");
  if (stats.promptTokens != null && stats.completionTokens != null) {
    const how =
      stats.source === "estimated" ? ", estimated by tokenrelay"
      : stats.source === "tokenizer" ? ", counted with the model's tokenizer"
      : "";
    parts.push(`${stats.promptTokens} prompt + ${stats.completionTokens} completion tokens${how}`);
  }
  if (stats.firstTokenMs != null) parts.push(`first token ${Math.round(stats.firstTokenMs)} ms`);
  if (stats.durationMs != null) parts.push(`${(stats.durationMs / 1000).toFixed(2)} s`);
  if (stats.costUsd != null) parts.push(formatCost(stats.costUsd));
  if (stats.model) parts.push(stats.model);
  return parts.join(" · ");
}

/** US dollars, with the digits that matter for the fractions of a cent answers cost. @param {number} usd */
export function formatCost(usd) {
  if (usd <= 0) return "$0";
  if (usd >= 0.01) return `$${usd.toFixed(4)}`;
  // Two significant digits of a fraction of a cent: $0.000052.
  return `$${usd.toFixed(Math.min(12, 1 - Math.floor(Math.log10(usd))))}`;
}

/**
 * The stats a `usage` event gives (tokens; cost when the model is priced).
 * @param {any} usage
 * @returns {AnswerStats}
 */
export function usageStats(usage) {
  if (!usage || typeof usage !== "object") return {};
  const number = (/** @type {unknown} */ v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const stats = /** @type {AnswerStats} */ ({});
  const prompt = number(usage.prompt_tokens);
  const completion = number(usage.completion_tokens);
  if (prompt !== null && completion !== null) {
    stats.promptTokens = prompt;
    stats.completionTokens = completion;
    if (typeof usage.source === "string") stats.source = usage.source;
  }
  stats.costUsd = number(usage.cost_usd ?? usage.cost);
  return stats;
}

/**
 * A sentence a person can act on, with the gateway's code for the curious.
 * @param {unknown} error
 */
export function describeError(error) {
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

