// The page of a share link (/s/<id>): fetches the public snapshot GET /share/<id> and shows it
// read-only. User text is shown as text; model output goes through marked and DOMPurify
// (markdown.js), as in the chat.
import { renderMarkdown } from "./markdown.js";

const shareId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).pop() || "");
const nameEl = document.getElementById("shared-name");
const list = document.getElementById("shared-messages");
const errorEl = document.getElementById("shared-error");

function fileLine(part) {
  const line = document.createElement("p");
  line.className = "file";
  line.textContent = `Attached: ${part.filename || "a file"} (${part.media_type || "file"})`;
  return line;
}

function messageEl(message) {
  const item = document.createElement("article");
  item.className = `msg ${message.role === "user" ? "user" : "assistant"}`;
  const bubble = document.createElement("div");
  bubble.className = "bubble body";
  if (message.role === "user") {
    bubble.textContent = message.content;
  } else {
    bubble.append(renderMarkdown(message.content));
  }
  item.append(bubble);
  for (const part of message.parts || []) {
    if (part.type === "attachment") item.append(fileLine(part));
  }
  return item;
}

function fail(text) {
  nameEl.textContent = "Not available";
  errorEl.textContent = text;
  errorEl.hidden = false;
}

async function show() {
  let response;
  try {
    response = await fetch(`/share/${encodeURIComponent(shareId)}`, { credentials: "omit" });
  } catch {
    fail("The server could not be reached; try again later.");
    return;
  }
  if (!response.ok) {
    fail(response.status === 404 ? "This link does not exist or was revoked." : "This link cannot be shown.");
    return;
  }
  const shared = await response.json();
  nameEl.textContent = shared.name;
  document.title = `${shared.name} (shared)`;
  list.replaceChildren(...shared.messages.map(messageEl));
}

show();
