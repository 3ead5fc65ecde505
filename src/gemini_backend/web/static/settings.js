// The room's model and options (GET /models, PATCH /chatroom/{id}; docs/api.md, "Models and
// generation options"): a dialog offering what each model supports and the caller's plan allows,
// saying why anything is disabled. A new chat keeps its choice until the room is created.
import { ApiError } from "./api.js";

const $ = (id) => document.getElementById(id);
const THINKING_LEVELS = ["off", "low", "medium", "high"];
const CAPABILITY_NAMES = { images: "images", pdf: "PDFs", thinking: "thinking", search: "Google Search" };
export const DEFAULT_OPTIONS = { model: null, temperature: null, thinking: null, grounding: false };

export class RoomSettings {
  // tier(): "basic" | "pro"; save(changes): the saved options (a PATCH, or a new chat's draft);
  // upgrade(): starts the upgrade.
  constructor(api, { tier, save, upgrade }) {
    this.api = api;
    this.tier = tier;
    this.save = save;
    this.catalogue = null;
    this.current = DEFAULT_OPTIONS;
    this.#wire(upgrade);
  }

  async load() {
    this.catalogue = await this.api.get("/models");
  }

  info(modelId) {
    const models = this.catalogue ? this.catalogue.models : [];
    return models.find((m) => m.id === (modelId || (this.catalogue && this.catalogue.default))) || null;
  }

  // The header button's text: the model a room's replies come from.
  label(options) {
    const info = this.info(options.model);
    return info ? info.display_name : "Default model";
  }

  open(options) {
    this.current = { ...DEFAULT_OPTIONS, ...options };
    this.#fill();
    $("settings-error").hidden = true;
    $("settings-upgrade").hidden = true;
    $("settings-dialog").showModal();
    $("set-model").focus();
  }

  #wire(upgrade) {
    $("set-model").addEventListener("change", () => this.#rules());
    $("set-temperature-default").addEventListener("change", () => this.#rules());
    $("set-temperature").addEventListener("input", () => this.#showTemperature());
    $("settings-cancel").addEventListener("click", () => $("settings-dialog").close());
    $("settings-upgrade-button").addEventListener("click", () => upgrade());
    $("settings-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submit();
    });
  }

  #fill() {
    const select = $("set-model");
    const tier = this.tier();
    const options = (this.catalogue ? this.catalogue.models : []).map((model) => {
      const option = document.createElement("option");
      option.value = model.id;
      const allowed = model.tiers.includes(tier);
      option.textContent = allowed ? model.display_name : `${model.display_name} (Pro plan)`;
      // A room may keep a model its owner's plan no longer allows; it stays selectable as is.
      option.disabled = !allowed && model.id !== this.current.model;
      return option;
    });
    select.replaceChildren(...options);
    select.value = (this.info(this.current.model) || {}).id || "";
    const temperature = this.current.temperature;
    $("set-temperature-default").checked = temperature === null;
    $("set-temperature").value = String(temperature === null ? 1 : temperature);
    const thinking = $("set-thinking");
    const levels = [["", "Model's default"], ...THINKING_LEVELS.map((l) => [l, l[0].toUpperCase() + l.slice(1)])];
    if (typeof this.current.thinking === "number") levels.push([String(this.current.thinking), `${this.current.thinking} tokens`]);
    thinking.replaceChildren(...levels.map(([value, text]) => new Option(text, value)));
    thinking.value = this.current.thinking === null ? "" : String(this.current.thinking);
    $("set-grounding").checked = Boolean(this.current.grounding);
    this.#rules();
  }

  // What the chosen model lacks, or the plan does not allow, is disabled and said so.
  #rules() {
    const info = this.info($("set-model").value);
    const tier = this.tier();
    const supports = info ? info.supports : [];
    const what = supports.map((s) => CAPABILITY_NAMES[s] || s).join(", ") || "text only";
    const pro = info && !info.tiers.includes("basic") ? " Pro plan only." : "";
    $("set-model-help").textContent = info
      ? `Reads ${what}; ${Math.round(info.context_tokens / 1024)}K tokens of context.${pro}`
      : "";
    const thinking = $("set-thinking");
    const canThink = supports.includes("thinking");
    for (const option of thinking.options) option.disabled = !canThink && option.value !== "" && option.value !== "off";
    if (!canThink && thinking.selectedOptions[0] && thinking.selectedOptions[0].disabled) thinking.value = "";
    $("set-thinking-help").textContent = canThink
      ? "Shows the model's thought summary above its reply."
      : `${info ? info.display_name : "This model"} does not think before answering.`;
    const grounding = $("set-grounding");
    const canSearch = supports.includes("search");
    if (!canSearch) grounding.checked = false;
    grounding.disabled = !canSearch || (tier !== "pro" && !this.current.grounding);
    let help = "Answers cite the Google Search results they are based on.";
    if (!canSearch) help = `${info ? info.display_name : "This model"} cannot search the web.`;
    else if (tier !== "pro") help = "Grounding in Google Search needs the Pro plan.";
    $("set-grounding-help").textContent = help;
    $("set-temperature").disabled = $("set-temperature-default").checked;
    this.#showTemperature();
  }

  #showTemperature() {
    const value = $("set-temperature-default").checked ? "the model's default" : Number($("set-temperature").value).toFixed(1);
    $("set-temperature-value").textContent = value;
  }

  // Only the fields that changed are sent: the plan is checked against what a request sets.
  #changes() {
    const chosen = {
      model: $("set-model").value || null,
      temperature: $("set-temperature-default").checked ? null : Number($("set-temperature").value),
      thinking: decodeThinking($("set-thinking").value),
      grounding: $("set-grounding").checked,
    };
    if (chosen.model === (this.catalogue && this.catalogue.default) && this.current.model === null) chosen.model = null;
    const changes = {};
    for (const [key, value] of Object.entries(chosen)) if (value !== this.current[key]) changes[key] = value;
    return changes;
  }

  async #submit() {
    const changes = this.#changes();
    const error = $("settings-error");
    error.hidden = true;
    $("settings-upgrade").hidden = true;
    if (!Object.keys(changes).length) {
      $("settings-dialog").close();
      return;
    }
    $("settings-save").disabled = true;
    try {
      await this.save(changes);
      $("settings-dialog").close();
    } catch (failure) {
      if (failure && failure.name === "AbortError") return;
      error.textContent = failure instanceof ApiError ? failure.detail : String(failure);
      error.hidden = false;
      $("settings-upgrade").hidden = !(failure instanceof ApiError && failure.code === "plan_required");
    } finally {
      $("settings-save").disabled = false;
    }
  }
}

function decodeThinking(value) {
  if (value === "") return null;
  return THINKING_LEVELS.includes(value) ? value : Number(value);
}
