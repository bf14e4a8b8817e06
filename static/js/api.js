// REST client of the Enigmo API: JSON in and out, CSRF header on unsafe requests, typed errors.

const config = JSON.parse(document.getElementById("enigmo-config").textContent);
export const API = config.api;
let csrfToken = null;

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message || code || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code || `http_${status}`;
    this.body = body;
  }
}

export function setCsrfToken(token) {
  csrfToken = token;
}

function cookieToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : null;
}

export async function request(method, path, body, { raw = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", signal };
  if (method !== "GET" && method !== "HEAD") {
    // The cookie first: a login in another tab rotates the token, and the cookie is shared.
    const token = cookieToken() || csrfToken;
    if (token) headers["X-CSRFToken"] = token;
  }
  if (body instanceof Uint8Array || body instanceof Blob) {
    headers["Content-Type"] = "application/octet-stream";
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (err) {
    throw new ApiError(0, "network", "The server cannot be reached.");
  }
  if (raw && response.ok) return new Uint8Array(await response.arrayBuffer());
  const type = response.headers.get("Content-Type") || "";
  const data = type.startsWith("application/json") ? await response.json() : null;
  if (!response.ok) {
    const err = (data && data.error) || {};
    const apiError = new ApiError(response.status, err.code, err.message, data);
    apiError.retryAfter = Number(response.headers.get("Retry-After")) || null;
    throw apiError;
  }
  return data;
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body, opts) => request("POST", path, body === undefined ? {} : body, opts);
export const del = (path) => request("DELETE", path);
