// Attachments: files chosen with the button or dropped on the conversation are uploaded at once
// (POST /chatroom/{id}/attachments), shown as chips in the composer until the message is sent
// with their ids, and the files of a sent message are shown from its parts. The download route
// needs the Authorization header, so images and files are fetched with the token into blob URLs.

// Types a browser shows inline; HEIC and the rest are download links.
const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/webp", "image/gif"]);

export class PendingFiles {
  // ensureRoom(): the id of the open room, created first for a new chat.
  // onError(file, error): an upload the server refused or could not take.
  constructor(api, list, { ensureRoom, onChange, onError }) {
    this.api = api;
    this.list = list;
    this.ensureRoom = ensureRoom;
    this.onChange = onChange;
    this.onError = onError;
    this.items = [];
    this.roomId = null;
    this.inflight = new Set();
  }

  // Resolves when every upload under way has ended (a send waits for them).
  settled() {
    return Promise.allSettled([...this.inflight]);
  }

  get ids() {
    return this.items.filter((item) => item.state === "done").map((item) => item.attachment.id);
  }

  async add(files) {
    if (!files.length) return;
    const roomId = await this.ensureRoom();
    if (this.roomId !== roomId) this.clear();
    this.roomId = roomId;
    await Promise.all(
      [...files].map((file) => {
        const upload = this.#upload(roomId, file);
        this.inflight.add(upload);
        return upload.finally(() => this.inflight.delete(upload));
      }),
    );
  }

  async #upload(roomId, file) {
    const item = { file, roomId, state: "uploading", progress: 0, attachment: null };
    this.items.push(item);
    this.render();
    try {
      item.attachment = await this.api.upload(`/chatroom/${roomId}/attachments`, file, (fraction) => {
        item.progress = fraction;
        const bar = item.node && item.node.querySelector("progress");
        if (bar) bar.value = fraction;
      });
      item.state = "done";
    } catch (error) {
      this.#drop(item);
      if (this.roomId === roomId) this.onError(file, error);
      return;
    }
    if (item.removed) this.#deleteOnServer(item); // taken back while it was uploading
    else this.render();
  }

  #drop(item) {
    this.items = this.items.filter((other) => other !== item);
    this.render();
  }

  // The user took the file back: the upload goes from the server too (one still uploading, once
  // it has arrived).
  #remove(item) {
    item.removed = true;
    if (item.state === "done") this.#deleteOnServer(item);
    this.#drop(item);
  }

  #deleteOnServer(item) {
    // Best effort: a file left behind still goes with its room.
    this.api
      .request("DELETE", `/chatroom/${item.roomId}/attachments/${item.attachment.id}`)
      .catch(() => {});
  }

  // After a send: the chips go, their files now the message's.
  clear(roomId = null) {
    this.items = [];
    this.roomId = roomId;
    this.render();
  }

  // When another room or a new chat opens: the files not sent are removed, from the server too.
  discard() {
    for (const item of this.items) this.#remove(item);
    this.clear();
  }

  render() {
    this.list.replaceChildren(...this.items.map((item) => this.#chip(item)));
    this.list.hidden = this.items.length === 0;
    this.onChange();
  }

  #chip(item) {
    const chip = document.createElement("li");
    chip.className = "chip";
    chip.dataset.state = item.state;
    const name = document.createElement("span");
    name.className = "chip-name";
    name.textContent = item.file.name;
    chip.append(name);
    if (item.state === "uploading") {
      chip.setAttribute("aria-busy", "true");
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.value = item.progress;
      bar.setAttribute("aria-label", `Uploading ${item.file.name}`);
      chip.append(bar);
    } else {
      const size = document.createElement("span");
      size.className = "small muted";
      size.textContent = formatSize(item.attachment.size);
      chip.append(size);
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    remove.addEventListener("click", () => this.#remove(item));
    chip.append(remove);
    item.node = chip;
    return chip;
  }
}

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// The blob URLs of the open room's files, fetched once each; released when another room opens.
export class FileCache {
  constructor(api) {
    this.api = api;
    this.urls = new Map();
  }

  url(roomId, attachmentId) {
    const key = `${roomId}/${attachmentId}`;
    if (!this.urls.has(key)) {
      const loading = this.api
        .blob(`/chatroom/${roomId}/attachments/${attachmentId}`)
        .then((blob) => URL.createObjectURL(blob));
      loading.catch(() => this.urls.delete(key));
      this.urls.set(key, loading);
    }
    return this.urls.get(key);
  }

  release() {
    for (const loading of this.urls.values()) loading.then(URL.revokeObjectURL, () => {});
    this.urls.clear();
  }
}

// The files of a message: image thumbnails, other files as download links. onError(error).
export function attachmentList(cache, roomId, parts, onError) {
  const files = parts.filter((part) => part.type === "attachment");
  if (!files.length) return null;
  const list = document.createElement("ul");
  list.className = "attachments";
  list.setAttribute("aria-label", "Attached files");
  for (const part of files) {
    const item = document.createElement("li");
    item.append(INLINE_IMAGES.has(part.media_type) ? thumbnail(cache, roomId, part, onError) : fileLink(cache, roomId, part, onError));
    list.append(item);
  }
  return list;
}

function thumbnail(cache, roomId, part, onError) {
  const link = fileLink(cache, roomId, part, onError);
  link.className = "thumb";
  link.replaceChildren();
  const image = document.createElement("img");
  image.alt = part.filename;
  link.append(image);
  cache.url(roomId, part.attachment_id).then((url) => {
    image.src = url;
  }, onError);
  return link;
}

function fileLink(cache, roomId, part, onError) {
  const link = document.createElement("a");
  link.className = "file";
  link.href = "#";
  link.textContent = part.filename;
  link.title = `Download ${part.filename}`;
  link.setAttribute("aria-label", `Download ${part.filename}`);
  link.addEventListener("click", (event) => {
    event.preventDefault();
    cache.url(roomId, part.attachment_id).then((url) => {
      const save = document.createElement("a");
      save.href = url;
      save.download = part.filename;
      save.click();
    }, onError);
  });
  return link;
}
