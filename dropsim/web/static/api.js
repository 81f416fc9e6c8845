// The /v1 gateway over fetch: bearer token, JSON bodies, problems as errors, Retry-After on 429.

const RATE_LIMIT_RETRIES = 3;
const LONGEST_RETRY_AFTER_MS = 30_000;

/** The server answered with a problem (RFC 9457 body: `code`, `detail`). */
export class ApiError extends Error {
  constructor(status, problem, headers) {
    super((problem && problem.detail) || `the server answered ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = (problem && problem.code) || null;
    this.headers = headers;
  }
}

/** No answer at all (offline, connection cut): the request may or may not have reached the server. */
export class NetworkError extends Error {
  constructor(cause) {
    super(`no answer from the server (${cause && cause.message ? cause.message : cause})`);
    this.name = "NetworkError";
  }
}

let bearer = null;

/** Send `token` as `Authorization: Bearer` from now on (null: anonymous). */
export function useToken(token) {
  bearer = token;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** How long a 429 (or 503) asks us to wait: seconds or an HTTP date, capped; else `fallbackMs`. */
export function retryAfterMs(headers, fallbackMs) {
  const value = headers.get("Retry-After");
  if (value === null) return fallbackMs;
  const seconds = Number(value);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - Date.now();
  if (!Number.isFinite(ms)) return fallbackMs;
  return Math.min(Math.max(ms, 0), LONGEST_RETRY_AFTER_MS);
}

async function parse(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text.slice(0, 200) };  // a proxy's HTML error page, say
  }
}

/**
 * `method path` with an optional JSON `body` and extra `headers`; resolves to
 * `{data, status, headers}`, rejects with ApiError (an answer that is not 2xx) or NetworkError.
 * A 429 is retried after its Retry-After, a few times, before it is reported.
 */
export async function call(method, path, { body, headers = {} } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const init = { method, headers: { Accept: "application/json", ...headers } };
    if (bearer) init.headers.Authorization = `Bearer ${bearer}`;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response, data;
    try {
      response = await fetch(path, init);
      data = await parse(response);
    } catch (error) {
      throw new NetworkError(error);
    }
    if (response.status === 429 && attempt < RATE_LIMIT_RETRIES) {
      await sleep(retryAfterMs(response.headers, 1000 * 2 ** attempt));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, data, response.headers);
    return { data, status: response.status, headers: response.headers };
  }
}

export const get = (path) => call("GET", path);
export const post = (path, body, headers) => call("POST", path, { body, headers });
export const put = (path) => call("PUT", path);
export const del = (path) => call("DELETE", path);
