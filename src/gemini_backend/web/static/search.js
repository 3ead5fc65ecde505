// Search across rooms (GET /search): debounced as the person types, and only the answer to the
// latest query is shown (an older one arriving late is dropped).
import { ApiError } from "./api.js";

const DEBOUNCE_MS = 250;
const $ = (id) => document.getElementById(id);

// The server escapes the snippet and adds only <mark>; DOMPurify keeps only <mark> anyway, in
// case the server's escaping ever slips (defence in depth).
function snippetFragment(html) {
  return window.DOMPurify.sanitize(html || "", {
    ALLOWED_TAGS: ["mark"],
    ALLOWED_ATTR: [],
    RETURN_DOM_FRAGMENT: true,
  });
}

function describeTime(iso) {
  const date = new Date(iso);
  return date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

const ROLE_TEXT = { user: "You", assistant: "Reply" };

export class Search {
  constructor(api, { open }) {
    this.api = api;
    this.open = open;
    this.timer = 0;
    this.serial = 0; // the query being answered; answers to older ones are dropped
    this.controller = null;
    this.query = "";
    this.cursor = null;
    this.input = $("search");
    this.input.addEventListener("input", () => this.schedule());
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        this.clear();
      } else if (event.key === "Enter") {
        event.preventDefault();
        this.run();
      }
    });
    $("search-more").addEventListener("click", () => this.more());
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), DEBOUNCE_MS);
  }

  clear() {
    clearTimeout(this.timer);
    this.serial += 1;
    if (this.controller) this.controller.abort();
    this.input.value = "";
    this.query = "";
    $("search-results").replaceChildren();
    $("search-panel").hidden = true;
  }

  run() {
    clearTimeout(this.timer);
    const query = this.input.value.trim();
    if (!query) {
      this.clear();
      return;
    }
    this.query = query;
    $("search-results").replaceChildren();
    this.fetchPage(null);
  }

  more() {
    if (this.cursor) this.fetchPage(this.cursor);
  }

  async fetchPage(cursor) {
    this.serial += 1;
    const serial = this.serial;
    if (this.controller) this.controller.abort();
    const controller = new AbortController();
    this.controller = controller;
    $("search-panel").hidden = false;
    $("search-more").hidden = true;
    this.status("Searching…");
    const params = new URLSearchParams({ q: this.query });
    if (cursor) params.set("cursor", cursor);
    try {
      const response = await this.api.fetch("GET", `/search?${params}`, { signal: controller.signal });
      const data = await response.json();
      if (serial !== this.serial) return;
      this.show(data, Boolean(cursor));
    } catch (error) {
      if (serial !== this.serial || (error && error.name === "AbortError")) return;
      this.status(readable(error));
    }
  }

  show(data, appended) {
    const list = $("search-results");
    for (const result of data.results) list.append(this.item(result));
    const count = list.children.length;
    if (!count) this.status(`No results for “${this.query}”.`);
    else this.status(`${count} result${count === 1 ? "" : "s"}${data.next_cursor ? " so far" : ""}.`);
    this.cursor = data.next_cursor;
    $("search-more").hidden = !data.next_cursor;
    if (appended && data.results.length) list.children[count - data.results.length].querySelector("button").focus();
  }

  item(result) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "result";
    const head = document.createElement("span");
    head.className = "result-head";
    const room = document.createElement("span");
    room.className = "result-room";
    room.textContent = result.chatroom_name;
    const meta = document.createElement("span");
    meta.className = "small muted";
    const role = result.role ? ROLE_TEXT[result.role] || result.role : "Chat name";
    meta.textContent = `${role} · ${describeTime(result.created_at)}`;
    head.append(room, meta);
    const snippet = document.createElement("span");
    snippet.className = "snippet small";
    snippet.append(snippetFragment(result.snippet));
    button.append(head, snippet);
    button.addEventListener("click", () => this.open(result));
    item.append(button);
    return item;
  }

  status(text) {
    $("search-status").textContent = text;
  }
}

function readable(error) {
  if (error instanceof ApiError && error.status === 422) return "That search is too long or not valid: " + error.detail;
  if (error instanceof ApiError) return error.detail;
  return "Search failed: " + (error && error.message ? error.message : error);
}
