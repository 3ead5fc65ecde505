// The public HTTP API (docs/api.md), as any client uses it: bearer access tokens kept in
// memory, the refresh token in localStorage (docs/web-client.md says why), rotated on use.

const REFRESH_KEY = "gb.refresh_token";
const LOCK_NAME = "gb.refresh";

export class ApiError extends Error {
  constructor(status, code, detail, headers) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.headers = headers || new Headers();
  }

  get retryAfter() {
    const value = Number(this.headers.get("Retry-After"));
    return Number.isFinite(value) && value > 0 ? value : null;
  }
}

// A readable sentence for an error body: FastAPI's 422 `detail` is a list.
function detailOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail) && body.detail.length) {
    return body.detail.map((d) => d.msg || String(d)).join("; ");
  }
  return `The server answered ${status}.`;
}

const RETRYABLE_401 = ["token_expired", "invalid_token", "not_authenticated"];

export function networkError() {
  return new ApiError(0, "network_error", "Cannot reach the server. Check your connection and try again.");
}

export class Api {
  constructor() {
    this.accessToken = null;
    this.refreshing = null;
    this.onSignedOut = () => {};
  }

  get refreshToken() {
    return localStorage.getItem(REFRESH_KEY);
  }

  get signedIn() {
    return this.accessToken !== null || this.refreshToken !== null;
  }

  keep(tokens) {
    this.accessToken = tokens.access_token;
    localStorage.setItem(REFRESH_KEY, tokens.refresh_token);
    return tokens;
  }

  forget() {
    this.accessToken = null;
    localStorage.removeItem(REFRESH_KEY);
  }

  // One refresh at a time in this tab, and across tabs (Web Locks): a rotated token spent
  // twice ends the session, so a tab re-reads the stored token once it holds the lock.
  refresh() {
    if (!this.refreshing) {
      const run = () => this.#refreshOnce();
      const locked = navigator.locks ? navigator.locks.request(LOCK_NAME, run) : run();
      this.refreshing = locked.finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async #refreshOnce() {
    const token = this.refreshToken;
    if (!token) throw new ApiError(401, "not_authenticated", "Please sign in.");
    try {
      const tokens = await this.request("POST", "/auth/refresh", { refresh_token: token }, { auth: false });
      return this.keep(tokens).user;
    } catch (error) {
      if (error.status === 401) {
        this.forget();
        this.onSignedOut("Your session has ended. Please sign in again.");
      }
      throw error;
    }
  }

  // fetch() with the access token; an expired or missing one is refreshed once and the request
  // sent again. Returns the Response (for streams and headers); errors are ApiErrors.
  // `raw` (a Blob) is sent as it is, with the Content-Type given in `headers`.
  async fetch(method, path, { body, raw, headers = {}, auth = true, signal } = {}) {
    for (let attempt = 0; ; attempt++) {
      const sent = { ...headers };
      if (body !== undefined) sent["Content-Type"] = "application/json";
      if (auth) {
        if (!this.accessToken) await this.refresh();
        sent.Authorization = `Bearer ${this.accessToken}`;
      }
      let response;
      try {
        response = await fetch(path, {
          method,
          headers: sent,
          body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
          signal,
          cache: "no-store",
        });
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw networkError();
      }
      if (response.ok) return response;
      const data = await response.json().catch(() => null);
      const code = (data && data.code) || "http_" + response.status;
      const retryable = RETRYABLE_401.includes(code);
      if (auth && response.status === 401 && retryable && attempt === 0) {
        this.accessToken = null;
        continue;
      }
      throw new ApiError(response.status, code, detailOf(data, response.status), response.headers);
    }
  }

  async request(method, path, body, options = {}) {
    const response = await this.fetch(method, path, { ...options, body });
    if (response.status === 204) return null;
    const data = await response.json();
    if (options.withHeaders) return { data, headers: response.headers };
    return data;
  }

  get(path) {
    return this.request("GET", path);
  }

  // A file as a Blob: the download routes need the Authorization header, so no plain <img src>.
  async blob(path) {
    const response = await this.fetch("GET", path);
    return response.blob();
  }

  // A multipart upload of one file. XMLHttpRequest, not fetch(): only it reports the upload's
  // progress, as onProgress(fraction).
  async upload(path, file, onProgress) {
    for (let attempt = 0; ; attempt++) {
      if (!this.accessToken) await this.refresh();
      const { status, data } = await postFile(path, file, this.accessToken, onProgress);
      if (status >= 200 && status < 300) return data;
      const code = (data && data.code) || "http_" + status;
      if (status === 401 && RETRYABLE_401.includes(code) && attempt === 0) {
        this.accessToken = null;
        continue;
      }
      throw new ApiError(status, code, detailOf(data, status));
    }
  }
}

function postFile(path, file, token, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      resolve({ status: xhr.status, data });
    });
    xhr.addEventListener("error", () => reject(networkError()));
    xhr.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
