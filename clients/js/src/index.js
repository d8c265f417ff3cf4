// @tokenrelay/client: the browser and Node.js client of the tokenrelay streaming gateway.

export { chatEvents, listModels, streamChat } from './client.js';
export {
  APIError,
  AuthenticationError,
  BadRequestError,
  ConnectionError,
  ProtocolError,
  RateLimitError,
  StreamError,
  TokenRelayError,
  UpstreamError,
  errorFromResponse,
  isAbortError,
} from './errors.js';
export { SSEParser } from './sse.js';

/**
 * @typedef {import('./client.js').ChatEvent} ChatEvent
 * @typedef {import('./client.js').ChatOptions} ChatOptions
 * @typedef {import('./client.js').ChatParams} ChatParams
 * @typedef {import('./client.js').ChatResult} ChatResult
 * @typedef {import('./client.js').ConnectionOptions} ConnectionOptions
 * @typedef {import('./client.js').DeltaEvent} DeltaEvent
 * @typedef {import('./client.js').DoneEvent} DoneEvent
 * @typedef {import('./client.js').Message} Message
 * @typedef {import('./client.js').StreamChatOptions} StreamChatOptions
 * @typedef {import('./client.js').Usage} Usage
 * @typedef {import('./client.js').UsageEvent} UsageEvent
 * @typedef {import('./sse.js').SSEMessage} SSEMessage
 * @typedef {import('./sse.js').SSEParserOptions} SSEParserOptions
 */
