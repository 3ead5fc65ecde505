// The web client: sign-in, rooms, the conversation tree, streamed replies, quota and plan.
// It uses only the public API (docs/api.md); docs/web-client.md describes it.
import { AccountData, Sharing } from "./account.js";
import { Api, ApiError } from "./api.js";
import { attachmentList, FileCache, PendingFiles } from "./attachments.js";
import { renderMarkdown } from "./markdown.js";
import { sourcesBlock, thoughtBlock, viewOf } from "./parts.js";
import { Search } from "./search.js";
import { DEFAULT_OPTIONS, RoomSettings } from "./settings.js";
import { followReply, pause } from "./stream.js";

const api = new Api();
const $ = (id) => document.getElementById(id);
const STREAM_KEY = "gb.stream"; // sessionStorage: the reply being followed, to resume after a reload

const state = {
  user: null,
  rooms: [],
  room: null, // the open chatroom detail (null: a new chat, not created yet)
  usage: null,
  subscription: null,
  stream: null, // {replyId, roomId, controller, text, thought, citations}
  busy: false,
  draft: { ...DEFAULT_OPTIONS }, // a new chat's model and options, used when its room is created
};
const files = new FileCache(api);
const OPTION_FIELDS = ["model", "temperature", "thinking", "grounding"];

// --- errors: always shown, never swallowed ------------------------------------------------
function messageOf(error) {
  if (error instanceof ApiError) return error.detail;
  return "Something went wrong in this page: " + (error && error.message ? error.message : error);
}

function showError(error) {
  const box = $("error");
  box.textContent = typeof error === "string" ? error : messageOf(error);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function guard(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      if (error && error.name === "AbortError") return;
      if (error instanceof ApiError && error.code === "daily_limit_reached") {
        showLimit(error);
        return;
      }
      if (error instanceof ApiError && error.status === 401 && !api.signedIn) return; // signed out
      showError(error);
    }
  };
}

function notice(text) {
  const box = $("notice");
  box.textContent = text;
  box.hidden = !text;
}

const RECONNECTING = "Connection lost. Reconnecting…";

// While a reply's stream is down, the page says so; it clears only its own notice.
function connectionNotice(up) {
  if (!up) notice(RECONNECTING);
  else if ($("notice").textContent === RECONNECTING) notice("");
}

// --- time ------------------------------------------------------------------------------
function describeReset(date) {
  const minutes = Math.max(1, Math.round((date.getTime() - Date.now()) / 60000));
  const clock = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const span = minutes >= 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${minutes} min`;
  return `${clock} (in ${span})`;
}

// --- sign-in -----------------------------------------------------------------------------
let pendingNumber = null;

function showSignin(message) {
  state.user = null;
  stopFollowing();
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  search.clear();
  $("booting").hidden = true;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("phone-form").hidden = false;
  $("otp-form").hidden = true;
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("phone").focus();
}

function signinError(error) {
  const box = $("signin-error");
  box.textContent = messageOf(error);
  box.hidden = false;
}

async function sendCode(event) {
  event.preventDefault();
  $("signin-error").hidden = true;
  const number = $("phone").value.trim();
  if (!number) return signinError(new ApiError(422, "validation_error", "Enter your mobile number."));
  try {
    const sent = await api.request("POST", "/auth/send-otp", { mobile_number: number }, { auth: false });
    pendingNumber = number;
    $("phone-form").hidden = true;
    $("otp-form").hidden = false;
    $("otp-sent").textContent = `${sent.message} It is valid for ${Math.round(sent.expires_in / 60)} minutes.`;
    const shown = $("otp-shown");
    // The code is in the response only while the server's OTP delivery is `response` (a demo).
    shown.hidden = !sent.otp;
    shown.textContent = sent.otp ? `Your code is ${sent.otp} (this server shows codes instead of sending an SMS).` : "";
    $("otp").value = sent.otp || "";
    $("otp").focus();
  } catch (error) {
    signinError(error);
  }
}

async function verifyCode(event) {
  event.preventDefault();
  $("signin-error").hidden = true;
  try {
    const tokens = await api.request(
      "POST", "/auth/verify-otp", { mobile_number: pendingNumber, otp: $("otp").value.trim() }, { auth: false },
    );
    api.keep(tokens);
    await enterApp(tokens.user);
  } catch (error) {
    signinError(error);
  }
}

async function signOut() {
  const token = api.refreshToken;
  try {
    if (token) await api.request("POST", "/auth/logout", { refresh_token: token });
  } finally {
    sessionStorage.removeItem(STREAM_KEY);
    api.forget();
    showSignin("You are signed out.");
  }
}

// --- the app -----------------------------------------------------------------------------
async function enterApp(user) {
  state.user = user;
  $("booting").hidden = true;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").textContent = user.name || user.mobile_number;
  renderPlan();
  await Promise.all([loadRooms(), loadPlan(), settings.load()]);
  const id = roomFromLocation();
  if (id && state.rooms.some((r) => r.id === id)) await openRoom(id);
  else newChat();
  await returnFromBilling();
}

function roomFromLocation() {
  const match = /^#\/c\/(\d+)$/.exec(location.hash);
  return match ? Number(match[1]) : null;
}

async function loadRooms() {
  const data = await api.get("/chatroom?limit=100");
  state.rooms = data.chatrooms;
  renderRooms();
}

async function loadPlan() {
  const [usage, subscription] = await Promise.all([api.get("/chatroom/usage"), api.get("/subscription/status")]);
  state.usage = usage;
  state.subscription = subscription;
  renderPlan();
}

function currentTier() {
  return (state.subscription ? state.subscription.tier : state.user && state.user.tier) === "pro" ? "pro" : "basic";
}

function renderPlan() {
  const pro = currentTier() === "pro";
  const badge = $("plan-badge");
  badge.textContent = pro ? "Pro" : "Basic";
  badge.classList.toggle("pro", pro);
  $("upgrade").hidden = pro;
  const sub = state.subscription;
  $("manage-plan").hidden = !(sub && (pro || sub.subscription_id));
  const usage = state.usage;
  let text = "";
  if (usage) {
    if (usage.daily_limit === null) text = "Unlimited messages";
    else text = `${usage.remaining_today} of ${usage.daily_limit} left today`;
  }
  $("quota").textContent = text;
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of state.rooms) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "room";
    button.textContent = room.name;
    button.dataset.roomId = room.id;
    if (state.room && state.room.id === room.id) button.setAttribute("aria-current", "page");
    button.addEventListener("click", guard(() => openRoom(room.id)));
    item.append(button);
    list.append(item);
  }
  $("rooms-empty").hidden = state.rooms.length > 0;
}

function closeDrawer() {
  document.body.classList.remove("drawer-open");
  $("scrim").hidden = true;
  $("menu").setAttribute("aria-expanded", "false");
}

function toggleDrawer() {
  const open = !document.body.classList.contains("drawer-open");
  document.body.classList.toggle("drawer-open", open);
  $("scrim").hidden = !open;
  $("menu").setAttribute("aria-expanded", String(open));
}

function newChat() {
  stopFollowing();
  leaveRoom();
  state.room = null;
  state.draft = { ...DEFAULT_OPTIONS };
  history.replaceState(null, "", location.pathname);
  clearError();
  $("limit").hidden = true;
  renderRoom();
  renderRooms();
  closeDrawer();
  $("prompt").focus();
}

// The open room's pending files and fetched downloads belong to it alone.
function leaveRoom() {
  pending.discard();
  files.release();
}

async function openRoom(id) {
  stopFollowing();
  clearError();
  $("limit").hidden = true;
  const room = await api.get(`/chatroom/${id}`);
  if (!state.room || state.room.id !== id) leaveRoom();
  state.room = room;
  history.replaceState(null, "", `#/c/${id}`);
  renderRoom();
  renderRooms();
  closeDrawer();
  followActive();
}

// Shows a chatroom detail returned by the API, and follows its reply still being produced.
function showDetail(room) {
  state.room = room;
  renderRoom();
  followActive();
}

function followActive() {
  const room = state.room;
  const live = room && [...room.messages].reverse().find(
    (m) => m.role === "assistant" && (m.status === "queued" || m.status === "generating"),
  );
  if (live) follow(room.id, live);
  else renderComposer();
}

// --- the conversation ----------------------------------------------------------------------
function renderRoom() {
  const room = state.room;
  $("room-title").textContent = room ? room.name : "New chat";
  $("share").hidden = !room;
  $("rename").hidden = !room;
  $("delete").hidden = !room;
  $("model-name").textContent = settings.label(room || state.draft);
  const list = $("messages");
  list.replaceChildren(...(room ? room.messages.map(messageElement) : []));
  $("empty").hidden = Boolean(room && room.messages.length);
  renderComposer();
  scrollToEnd();
}

function messageElement(message) {
  const node = $("message-template").content.firstElementChild.cloneNode(true);
  node.classList.add(message.role);
  node.dataset.messageId = message.id;
  node.setAttribute("aria-label", message.role === "user" ? "You said" : "Reply");
  fillBody(node, message, viewOf(message));
  const meta = node.querySelector(".meta");
  const siblings = message.sibling_ids || [message.id];
  if (siblings.length > 1) {
    const index = siblings.indexOf(message.id);
    const versions = meta.querySelector(".versions");
    versions.hidden = false;
    versions.querySelector(".pos").textContent = `${index + 1}/${siblings.length}`;
    versions.setAttribute("aria-label", `Version ${index + 1} of ${siblings.length}`);
    const prev = versions.querySelector(".prev");
    const next = versions.querySelector(".next");
    prev.disabled = index <= 0;
    next.disabled = index >= siblings.length - 1;
    prev.addEventListener("click", guard(() => switchTo(siblings[index - 1])));
    next.addEventListener("click", guard(() => switchTo(siblings[index + 1])));
  }
  if (message.role === "user") {
    const edit = meta.querySelector(".edit");
    edit.hidden = false;
    edit.setAttribute("aria-label", "Edit this message");
    edit.addEventListener("click", () => startEdit(node, message));
  } else {
    const retry = meta.querySelector(".retry");
    retry.hidden = false;
    retry.setAttribute("aria-label", "Retry this reply");
    retry.addEventListener("click", guard(() => retryReply(message)));
  }
  setState(node, message);
  return node;
}

// view: {text, thought, citations}, from the message's parts or its stream so far.
function fillBody(node, message, view) {
  const body = node.querySelector(".body");
  if (message.role === "user") {
    body.textContent = view.text; // what the person typed, shown as typed
    const list = attachmentList(files, message.chatroom_id, message.parts || [], showError);
    if (list) body.after(list);
    return;
  }
  const live = message.status === "queued" || message.status === "generating";
  const shown = [];
  if (view.thought) {
    const wasOpen = body.querySelector(".thoughts[open]") !== null;
    shown.push(thoughtBlock(view.thought, live && !view.text, wasOpen));
  }
  if (!view.text && !view.thought && live) shown.push(typingDots());
  else shown.push(renderMarkdown(view.text));
  if (view.citations) shown.push(sourcesBlock(view.citations));
  body.replaceChildren(...shown);
}

function typingDots() {
  const dots = document.createElement("span");
  dots.className = "typing";
  dots.setAttribute("aria-label", "Writing a reply");
  dots.append(document.createElement("span"), document.createElement("span"), document.createElement("span"));
  return dots;
}

const STATE_TEXT = {
  cancelled: "Stopped",
  failed: "The reply failed",
  blocked: "Blocked by the model's safety filter",
};

function setState(node, message) {
  const live = message.status === "queued" || message.status === "generating";
  node.toggleAttribute("data-streaming", live);
  node.setAttribute("aria-busy", String(live));
  let text = STATE_TEXT[message.status] || "";
  if (message.status === "failed" && message.error) text += ` (${message.error}). Retry to try again.`;
  node.querySelector(".state").textContent = text;
  node.classList.toggle("failed", message.status === "failed" || message.status === "blocked");
  for (const button of node.querySelectorAll(".meta button")) button.disabled ||= live;
}

function nodeOf(messageId) {
  return $("messages").querySelector(`[data-message-id="${messageId}"]`);
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function renderComposer() {
  const streaming = Boolean(state.stream);
  $("send").hidden = streaming;
  $("stop").hidden = !streaming;
  $("send").disabled = state.busy;
}

// --- following a reply ---------------------------------------------------------------------
function saved() {
  try {
    return JSON.parse(sessionStorage.getItem(STREAM_KEY) || "null");
  } catch {
    return null;
  }
}

function stopFollowing() {
  if (state.stream) state.stream.controller.abort();
  state.stream = null;
}

async function follow(roomId, reply) {
  stopFollowing();
  const controller = new AbortController();
  const resumed = saved();
  // After a reload: the text so far and where it ended, so the stream continues from there.
  const resume = resumed && resumed.replyId === reply.id ? resumed : null;
  const stream = {
    roomId,
    replyId: reply.id,
    controller,
    text: resume ? resume.text : "",
    thought: resume ? resume.thought || "" : "",
    citations: resume ? resume.citations || null : null,
  };
  state.stream = stream;
  renderComposer();
  let frame = 0;
  const draw = () => {
    frame = 0;
    const node = nodeOf(reply.id);
    if (node) fillBody(node, { ...reply, status: "generating" }, stream);
    scrollToEnd();
  };
  const redraw = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };
  if (resume) redraw();
  const remember = (lastEventId) => {
    const { text, thought, citations } = stream;
    sessionStorage.setItem(STREAM_KEY, JSON.stringify({ roomId, replyId: reply.id, lastEventId, text, thought, citations }));
  };
  try {
    const final = await followReply(api, roomId, reply.id, {
      lastEventId: resume ? resume.lastEventId : null,
      signal: controller.signal,
      handlers: {
        delta: (text, replace) => {
          stream.text = replace ? text : stream.text + text;
          redraw();
        },
        thought: (text, replace) => {
          stream.thought = replace ? text : stream.thought + text;
          redraw();
        },
        citations: (data) => {
          stream.citations = data;
          redraw();
        },
        reset: () => {
          stream.text = "";
          stream.thought = "";
          stream.citations = null;
          redraw();
        },
        connection: connectionNotice,
        done: () => {},
        error: () => {},
        progress: remember,
      },
    });
    if (frame) cancelAnimationFrame(frame);
    sessionStorage.removeItem(STREAM_KEY);
    connectionNotice(true);
    finished(final);
  } catch (error) {
    if (error.name === "AbortError") return;
    showError(error);
  } finally {
    if (state.stream === stream) {
      state.stream = null;
      renderComposer();
    }
  }
}

function finished(message) {
  if (state.room && state.room.id === message.chatroom_id) {
    const index = state.room.messages.findIndex((m) => m.id === message.id);
    if (index >= 0) state.room.messages[index] = message;
    const node = nodeOf(message.id);
    if (node) {
      const fresh = messageElement(message);
      const thoughts = fresh.querySelector(".thoughts");
      if (thoughts && node.querySelector(".thoughts[open]")) thoughts.open = true;
      node.replaceWith(fresh);
    }
    scrollToEnd();
  }
  refreshAfterReply(message.chatroom_id).catch(showError);
}

// The quota gives a slot back for a failed reply, and a room's title appears after its first
// exchange (generated after the reply): both are read again.
async function refreshAfterReply(roomId) {
  await loadPlan();
  for (let attempt = 0; attempt < 4; attempt++) {
    await loadRooms();
    const room = state.rooms.find((r) => r.id === roomId);
    if (!room || room.name !== "New chat") {
      if (room && state.room && state.room.id === roomId) {
        state.room.name = room.name;
        $("room-title").textContent = room.name;
      }
      return;
    }
    await pause(1000 * (attempt + 1), new AbortController().signal);
  }
}

// --- writing ---------------------------------------------------------------------------
function idempotencyKey() {
  return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
}

// A send, an edit or a retry: each answers 202 with a receipt and counts against the quota.
async function submit(path, body) {
  const { data, headers } = await api.request("POST", path, body, {
    withHeaders: true,
    headers: { "Idempotency-Key": idempotencyKey() },
  });
  const limit = headers.get("X-RateLimit-Limit");
  if (state.usage) {
    if (limit === null) state.usage = { ...state.usage, daily_limit: null };
    else state.usage = { ...state.usage, daily_limit: Number(limit), remaining_today: Number(headers.get("X-RateLimit-Remaining")) };
    renderPlan();
  }
  return data;
}

async function afterReceipt(roomId) {
  $("limit").hidden = true;
  const room = await api.get(`/chatroom/${roomId}`);
  if (!state.room || state.room.id === roomId) showDetail(room);
}

async function send(event) {
  if (event) event.preventDefault();
  const prompt = $("prompt");
  if (state.busy || state.stream) return;
  clearError();
  state.busy = true;
  renderComposer();
  try {
    await pending.settled(); // the files still uploading go with this message
    const content = prompt.value.trim();
    const attachmentIds = pending.ids;
    if (!content && !attachmentIds.length) return;
    const roomId = await ensureRoom();
    const body = attachmentIds.length ? { content, attachment_ids: attachmentIds } : { content };
    await submit(`/chatroom/${roomId}/message`, body);
    prompt.value = "";
    pending.clear(roomId);
    autosize();
    await afterReceipt(roomId);
    moveRoomToTop(roomId);
  } finally {
    state.busy = false;
    renderComposer();
  }
}

// The open room's id; a new chat's room is created first, with the options chosen for it.
async function ensureRoom() {
  if (!state.room) {
    const room = await api.request("POST", "/chatroom", { ...state.draft });
    state.room = { ...room, messages: [], active_leaf_id: null };
    history.replaceState(null, "", `#/c/${room.id}`);
    state.rooms.unshift(room);
    renderRooms();
    renderRoom();
  }
  return state.room.id;
}

// The settings dialog's changes: a PATCH for a room, the draft of a new chat.
async function saveOptions(changes) {
  if (!state.room) {
    state.draft = { ...state.draft, ...changes };
  } else {
    const room = await api.request("PATCH", `/chatroom/${state.room.id}`, changes);
    for (const field of OPTION_FIELDS) state.room[field] = room[field];
  }
  $("model-name").textContent = settings.label(state.room || state.draft);
}

function openSettings() {
  const source = state.room || state.draft;
  settings.open(Object.fromEntries(OPTION_FIELDS.map((field) => [field, source[field]])));
}

function moveRoomToTop(roomId) {
  const index = state.rooms.findIndex((r) => r.id === roomId);
  if (index > 0) state.rooms.unshift(...state.rooms.splice(index, 1));
  renderRooms();
}

async function retryReply(message) {
  clearError();
  await submit(`/chatroom/${state.room.id}/messages/${message.id}/retry`);
  await afterReceipt(state.room.id);
}

function startEdit(node, message) {
  const body = node.querySelector(".body");
  const form = document.createElement("form");
  form.className = "edit-form";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.textContent = "Edit your message";
  const area = document.createElement("textarea");
  area.value = message.content;
  area.id = `edit-${message.id}`;
  label.htmlFor = area.id;
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "primary";
  save.textContent = "Save and send";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  const row = document.createElement("div");
  row.className = "row end";
  row.append(cancel, save);
  form.append(label, area, row);
  body.replaceChildren(form);
  node.querySelector(".meta").hidden = true;
  area.focus();
  cancel.addEventListener("click", () => node.replaceWith(messageElement(message)));
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      node.replaceWith(messageElement(message));
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", guard(async (event) => {
    event.preventDefault();
    const content = area.value.trim();
    if (!content) return;
    clearError();
    await submit(`/chatroom/${state.room.id}/messages/${message.id}/edit`, { content });
    await afterReceipt(state.room.id);
  }));
}

// A search result: its room opened, its branch made active if the message is not on the one
// shown (PUT .../active), and the message scrolled to and marked.
async function openResult(result) {
  if (!state.room || state.room.id !== result.chatroom_id) await openRoom(result.chatroom_id);
  else closeDrawer();
  if (result.message_id === null) return;
  if (!nodeOf(result.message_id)) {
    const room = await api.request("PUT", `/chatroom/${state.room.id}/active`, { leaf_id: result.message_id });
    showDetail(room);
  }
  const node = nodeOf(result.message_id);
  if (!node) return;
  for (const old of $("messages").querySelectorAll(".msg.found")) old.classList.remove("found");
  node.classList.add("found");
  node.tabIndex = -1;
  node.scrollIntoView({ block: "center" });
  node.focus({ preventScroll: true });
}

function accountDeleted() {
  sessionStorage.removeItem(STREAM_KEY);
  api.forget();
  showSignin("Your account and everything in it were deleted.");
}

async function showImported(chatrooms) {
  await loadRooms();
  if (chatrooms.length) await openRoom(chatrooms[0].id);
}

async function switchTo(messageId) {
  clearError();
  const room = await api.request("PUT", `/chatroom/${state.room.id}/active`, { leaf_id: messageId });
  showDetail(room);
}

async function stop() {
  const stream = state.stream;
  if (!stream) return;
  try {
    await api.request("POST", `/chatroom/${stream.roomId}/messages/${stream.replyId}/cancel`);
  } catch (error) {
    if (!(error instanceof ApiError && error.code === "reply_already_finished")) throw error;
  }
  // The stream ends with the cancelled reply (its `error` event) and `follow` shows it.
}

function showLimit(error) {
  const reset = error.retryAfter ? new Date(Date.now() + error.retryAfter * 1000) : null;
  const limit = state.usage && state.usage.daily_limit;
  let text = limit ? `You have used all ${limit} messages of your plan for today.` : error.detail;
  if (reset) text += ` Your messages reset at ${describeReset(reset)}.`;
  text += " Upgrade to Pro for unlimited messages.";
  $("limit-text").textContent = text;
  $("limit").hidden = false;
  if (state.usage) {
    state.usage = { ...state.usage, remaining_today: 0 };
    renderPlan();
  }
}

// --- rooms -----------------------------------------------------------------------------
async function rename() {
  const dialog = $("rename-dialog");
  $("rename-input").value = state.room.name;
  dialog.returnValue = "";
  dialog.showModal();
  const value = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  const name = $("rename-input").value.trim();
  if (value !== "ok" || !name) return;
  const room = await api.request("PATCH", `/chatroom/${state.room.id}`, { name });
  state.room.name = room.name;
  $("room-title").textContent = room.name;
  const listed = state.rooms.find((r) => r.id === room.id);
  if (listed) listed.name = room.name;
  renderRooms();
}

async function remove() {
  const dialog = $("delete-dialog");
  $("delete-text").textContent = `“${state.room.name}” and all its messages will be deleted.`;
  dialog.returnValue = "";
  dialog.showModal();
  const value = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (value !== "ok") return;
  const id = state.room.id;
  await api.request("DELETE", `/chatroom/${id}`);
  state.rooms = state.rooms.filter((r) => r.id !== id);
  newChat();
}

// --- plan ------------------------------------------------------------------------------
async function upgrade() {
  try {
    const session = await api.request("POST", "/subscribe/pro");
    location.assign(session.checkout_url);
  } catch (error) {
    if (error instanceof ApiError && error.code === "already_pro") {
      await loadPlan();
      notice("You are already on the Pro plan.");
      return;
    }
    throw error;
  }
}

async function managePlan() {
  const portal = await api.request("POST", "/subscription/portal");
  location.assign(portal.url);
}

// Back from Checkout (`?checkout=success|cancelled`) or the Billing Portal (`?billing=return`):
// the plan changes when the payment provider's events reach the server, so it is read until it
// shows (the built-in mock delivers them before it redirects).
// Read once at start, before the address is tidied.
const RETURNED = new URLSearchParams(location.search);

async function returnFromBilling() {
  const checkout = RETURNED.get("checkout");
  const billing = RETURNED.get("billing");
  RETURNED.delete("checkout");
  RETURNED.delete("billing");
  if (!checkout && !billing) return;
  if (checkout === "cancelled") {
    notice("Checkout cancelled: nothing was charged.");
    return;
  }
  if (checkout === "success") {
    notice("Payment received. Activating Pro…");
    for (let attempt = 0; attempt < 20 && state.subscription.tier !== "pro"; attempt++) {
      await pause(1000, new AbortController().signal);
      await loadPlan();
    }
    notice(state.subscription.tier === "pro" ? "Welcome to Pro: unlimited messages." : "Payment received; Pro appears here as soon as the payment provider confirms it.");
    return;
  }
  await loadPlan();
  notice(state.subscription.tier === "pro" ? "Your plan: Pro." : "Your plan: Basic.");
}

// --- the composer and the keyboard -----------------------------------------------------------
function autosize() {
  const area = $("prompt");
  area.style.height = "auto";
  area.style.height = Math.min(area.scrollHeight, 200) + "px";
}

function wire() {
  $("phone-form").addEventListener("submit", sendCode);
  $("otp-form").addEventListener("submit", verifyCode);
  $("otp-back").addEventListener("click", () => showSignin());
  $("composer").addEventListener("submit", guard(send));
  $("prompt").addEventListener("input", autosize);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      guard(send)();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.stream && !document.querySelector("dialog[open]")) {
      event.preventDefault();
      guard(stop)();
    }
  });
  $("stop").addEventListener("click", guard(stop));
  $("new-chat").addEventListener("click", newChat);
  $("rename").addEventListener("click", guard(rename));
  $("delete").addEventListener("click", guard(remove));
  $("upgrade").addEventListener("click", guard(upgrade));
  $("limit-upgrade").addEventListener("click", guard(upgrade));
  $("manage-plan").addEventListener("click", guard(managePlan));
  $("sign-out").addEventListener("click", guard(signOut));
  $("share").addEventListener("click", guard(() => sharing.open()));
  $("data-menu").addEventListener("click", () => accountData.open());
  $("room-settings").addEventListener("click", openSettings);
  $("attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", guard(async () => {
    const chosen = [...$("file-input").files];
    $("file-input").value = "";
    await attach(chosen);
  }));
  wireDrop($("conversation"));
  $("menu").addEventListener("click", toggleDrawer);
  $("scrim").addEventListener("click", closeDrawer);
  api.onSignedOut = (message) => showSignin(message);
}

// --- attachments -----------------------------------------------------------------------------
const pending = new PendingFiles(api, $("chips"), {
  ensureRoom,
  onChange: renderComposer,
  onError: (file, error) => showError(`${file.name}: ${messageOf(error)}`),
});

async function attach(chosen) {
  if (!chosen.length) return;
  clearError();
  await pending.add(chosen);
  $("prompt").focus();
}

// Files dropped anywhere on the conversation pane are attached.
function wireDrop(zone) {
  const carriesFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  let depth = 0;
  const hint = (shown) => {
    $("drop-hint").hidden = !shown;
    zone.classList.toggle("dropping", shown);
  };
  zone.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth += 1;
    hint(true);
  });
  zone.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) hint(false);
  });
  zone.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth = 0;
    hint(false);
    guard(attach)([...event.dataTransfer.files]);
  });
}

const settings = new RoomSettings(api, { tier: currentTier, save: saveOptions, upgrade: guard(upgrade) });
const search = new Search(api, { open: guard(openResult) });
const openRoomId = () => (state.room ? state.room.id : null);
const sharing = new Sharing(api, { room: openRoomId });
const accountData = new AccountData(api, {
  room: openRoomId,
  imported: showImported,
  deleted: accountDeleted,
  user: () => state.user,
});

async function boot() {
  wire();
  if (!api.refreshToken) {
    showSignin();
    return;
  }
  try {
    const user = await api.refresh();
    await enterApp(user);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // onSignedOut showed the form
    $("booting").hidden = true;
    if (!state.user) {
      $("booting").hidden = false;
      $("booting").textContent = messageOf(error) + " Reload the page to try again.";
    } else {
      showError(error);
    }
  }
}

boot();
