// Share links of a room, and the account's data: export, import, deleting the account.
import { ApiError } from "./api.js";

const $ = (id) => document.getElementById(id);

function readable(error) {
  if (error instanceof ApiError) return error.detail;
  return "Something went wrong in this page: " + (error && error.message ? error.message : error);
}

function say(id, text) {
  const box = $(id);
  box.textContent = text || "";
  box.hidden = !text;
}

// The file name a download's Content-Disposition gives, else `fallback`.
function filenameOf(response, fallback) {
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : fallback;
}

// The export routes need the bearer token, so the file is fetched and handed to the browser
// as a blob URL (released once the download has started).
async function download(api, path, fallback) {
  const response = await api.fetch("GET", path);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filenameOf(response, fallback);
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function importType(file) {
  if (/\.ndjson$/i.test(file.name)) return "application/x-ndjson";
  return file.type || "application/json";
}

export class Sharing {
  constructor(api, { room }) {
    this.api = api;
    this.room = room; // () => the open room's id, or null
    this.dialog = $("share-dialog");
    $("share-create").addEventListener("click", () => this.#act(() => this.create()));
    $("share-copy").addEventListener("click", () => this.copy());
    $("share-close").addEventListener("click", () => this.dialog.close());
  }

  async open() {
    say("share-error", "");
    say("share-copied", "");
    $("share-new").hidden = true;
    this.dialog.showModal();
    await this.#act(() => this.list());
  }

  async #act(action) {
    try {
      await action();
    } catch (error) {
      say("share-error", readable(error));
    }
  }

  async create() {
    say("share-error", "");
    const link = await this.api.request("POST", `/chatroom/${this.room()}/share`, {});
    $("share-url").value = link.url;
    $("share-new").hidden = false;
    say("share-copied", "");
    $("share-url").focus();
    $("share-url").select();
    await this.list();
  }

  // The clipboard where the browser allows it; else the text is selected for a manual copy.
  async copy() {
    const field = $("share-url");
    try {
      await navigator.clipboard.writeText(field.value);
      say("share-copied", "Link copied.");
    } catch {
      field.focus();
      field.select();
      say("share-copied", "Press Ctrl+C (⌘C) to copy the selected link.");
    }
  }

  async list() {
    const data = await this.api.get(`/chatroom/${this.room()}/shares`);
    const list = $("share-list");
    list.replaceChildren(...data.shares.map((share) => this.item(share)));
    $("share-none").hidden = data.shares.length > 0;
  }

  item(share) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = share.url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.textContent = share.url;
    const when = document.createElement("span");
    when.className = "small muted";
    when.textContent = new Date(share.created_at).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "danger";
    revoke.textContent = "Revoke";
    revoke.setAttribute("aria-label", `Revoke the link created ${when.textContent}`);
    revoke.addEventListener("click", () => this.#act(async () => {
      await this.api.request("DELETE", `/share/${share.share_id}`);
      if ($("share-url").value === share.url) $("share-new").hidden = true;
      await this.list();
    }));
    item.append(link, when, revoke);
    return item;
  }
}

export class AccountData {
  constructor(api, { room, imported, deleted, user }) {
    this.api = api;
    this.room = room; // () => the open room's id, or null
    this.imported = imported; // (chatrooms) => shows them
    this.deleted = deleted; // () => back to sign-in
    this.user = user; // () => the signed-in user
    this.dialog = $("data-dialog");
    $("data-close").addEventListener("click", () => this.dialog.close());
    $("export-json").addEventListener("click", () => this.#act(() => this.exportRoom("json")));
    $("export-markdown").addEventListener("click", () => this.#act(() => this.exportRoom("markdown")));
    $("export-all").addEventListener("click", () => this.#act(() => download(api, "/user/export", "gemini-backend-export.ndjson")));
    $("import-file").addEventListener("change", () => this.#act(() => this.import()));
    $("delete-account").addEventListener("click", () => this.askDelete());
    $("erase-send-code").addEventListener("click", () => this.#erase(() => this.sendCode()));
    $("erase-cancel").addEventListener("click", () => $("erase-dialog").close());
    $("erase-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#erase(() => this.erase());
    });
  }

  open() {
    say("data-error", "");
    say("data-done", "");
    const room = this.room();
    $("export-json").disabled = !room;
    $("export-markdown").disabled = !room;
    this.dialog.showModal();
  }

  async #act(action) {
    say("data-error", "");
    say("data-done", "");
    try {
      await action();
    } catch (error) {
      say("data-error", readable(error));
    }
  }

  async #erase(action) {
    say("erase-error", "");
    try {
      await action();
    } catch (error) {
      say("erase-error", readable(error));
    }
  }

  exportRoom(format) {
    const id = this.room();
    const extension = format === "json" ? "json" : "md";
    return download(this.api, `/chatroom/${id}/export?format=${format}`, `chatroom-${id}.${extension}`);
  }

  async import() {
    const input = $("import-file");
    const file = input.files[0];
    input.value = "";
    if (!file) return;
    const response = await this.api.fetch("POST", "/chatroom/import", {
      raw: file,
      headers: { "Content-Type": importType(file) },
    });
    const data = await response.json();
    const count = data.chatrooms.length;
    say("data-done", `Imported ${count} chat${count === 1 ? "" : "s"} from ${file.name}.`);
    await this.imported(data.chatrooms);
  }

  askDelete() {
    this.dialog.close();
    say("erase-error", "");
    say("erase-code-shown", "");
    $("erase-otp").value = "";
    $("erase-password").value = "";
    $("erase-dialog").showModal();
    $("erase-otp").focus();
  }

  // A fresh sign-in code proves the person is there; the page shows it while the server's
  // delivery is `response`, as on the sign-in screen.
  async sendCode() {
    const sent = await this.api.request("POST", "/auth/send-otp", { mobile_number: this.user().mobile_number }, { auth: false });
    say("erase-code-shown", sent.otp ? `Your code is ${sent.otp} (this server shows codes instead of sending an SMS).` : sent.message);
    if (sent.otp) $("erase-otp").value = sent.otp;
  }

  async erase() {
    const otp = $("erase-otp").value.trim();
    const password = $("erase-password").value;
    if (!otp && !password) {
      say("erase-error", "Enter a one-time password (Send me a code) or your password.");
      return;
    }
    const body = otp ? { otp } : { current_password: password };
    await this.api.request("DELETE", "/user/me", body);
    $("erase-dialog").close();
    this.deleted();
  }
}
