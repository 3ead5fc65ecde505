// A reply's Server-Sent Events read with fetch(): EventSource cannot send the Authorization
// header. The parser follows the HTML standard's event-stream rules (any line ending, `:`
// comments, multi-line data, the id kept across events).

export async function* parseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "", data: [], id: null };
  let skipLineFeed = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // A chunk ending in "\r" may be the first half of "\r\n": its "\n" is no new line.
      const text = skipLineFeed && value.startsWith("\n") ? value.slice(1) : value;
      skipLineFeed = text.endsWith("\r");
      buffer += text;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length || event.type) {
            yield { type: event.type || "message", data: event.data.join("\n"), id: event.id };
          }
          event = { type: "", data: [], id: event.id };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let fieldValue = colon === -1 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "event") event.type = fieldValue;
        else if (field === "data") event.data.push(fieldValue);
        else if (field === "id" && !fieldValue.includes("\0")) event.id = fieldValue;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// Follows one reply to its end: reconnects after a dropped connection with Last-Event-ID, so
// no text is repeated or lost. `handlers`: delta(text, replace), thought(text, replace),
// citations(data), reset(), done(message), error(message), progress(lastEventId),
// connection(up: boolean). Resolves with the final message; rejects only when
// aborted or on an error the API answered (an ApiError other than a passing 5xx/429).
export async function followReply(api, roomId, replyId, { lastEventId = null, signal, handlers }) {
  let delay = 500;
  for (;;) {
    if (signal.aborted) throw new DOMException("aborted", "AbortError");
    let response;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      response = await api.fetch("GET", `/chatroom/${roomId}/messages/${replyId}/stream`, { headers, signal });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      const passing = error.status === 0 || error.status >= 500 || error.code === "too_many_streams";
      if (!passing) throw error;
      handlers.connection(false);
      await pause((error.retryAfter || 0) * 1000 || delay, signal);
      delay = Math.min(delay * 2, 10000);
      continue;
    }
    handlers.connection(true);
    try {
      for await (const event of parseEvents(response.body)) {
        delay = 500;
        const known = handle(event, handlers);
        if (event.id) {
          lastEventId = event.id;
          handlers.progress(lastEventId);
        }
        if (known && known.final) return known.final;
      }
    } catch (error) {
      if (error.name === "AbortError") throw error;
      // The connection dropped mid-stream: resume below.
    }
    handlers.connection(false);
    await pause(delay, signal);
    delay = Math.min(delay * 2, 10000);
  }
}

function handle(event, handlers) {
  // A reply replayed from the database (ids db-1, db-2, ...) comes as one event per part, each
  // with the whole of it: it replaces what was shown.
  const replayed = Boolean(event.id && event.id.startsWith("db-"));
  switch (event.type) {
    case "delta": {
      const data = JSON.parse(event.data);
      handlers.delta(data.text || "", replayed);
      return {};
    }
    case "thought": {
      const data = JSON.parse(event.data);
      handlers.thought(data.text || "", replayed);
      return {};
    }
    case "citations":
      handlers.citations(JSON.parse(event.data));
      return {};
    case "reset":
      handlers.reset();
      return {};
    case "done": {
      const message = JSON.parse(event.data);
      handlers.done(message);
      return { final: message };
    }
    case "error": {
      const message = JSON.parse(event.data);
      handlers.error(message);
      return { final: message };
    }
    default:
      return null; // an event a later API may add: ignored
  }
}

// Waits `ms`, sooner when the browser comes back online or the page becomes visible again
// (a laptop lid opened), and stops at an abort.
export function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const finish = () => {
      clearTimeout(timer);
      window.removeEventListener("online", finish);
      document.removeEventListener("visibilitychange", onVisible);
      signal.removeEventListener("abort", onAbort);
      resolve();
    };
    const onVisible = () => {
      if (document.visibilityState === "visible") finish();
    };
    const onAbort = () => {
      finish();
      reject(new DOMException("aborted", "AbortError"));
    };
    const timer = setTimeout(finish, ms);
    window.addEventListener("online", finish);
    document.addEventListener("visibilitychange", onVisible);
    signal.addEventListener("abort", onAbort);
  });
}
