// "My assistant" (own stats, training history, export, delete) and the admin page.

import { api, download } from "./api.js";
import { button, confirmDialog, el, fmtDate, statusPill, table, toast } from "./ui.js";

const has = (v) => v !== undefined && v !== null && v !== "";
const today = () => new Date().toISOString().slice(0, 10);

function card(title, ...children) {
  return el("section", { class: "card", "aria-label": title }, el("h2", { class: "card-title", text: title }), ...children);
}

function loading(view, title) {
  view.replaceChildren(el("div", { class: "page" }, el("h1", { class: "page-h", text: title }),
    el("p", { class: "muted", text: "Loading…" })));
}

function metricsText(metrics) {
  if (!has(metrics)) return "";
  let m = metrics;
  if (typeof m === "string") { try { m = JSON.parse(m); } catch { return m; } }
  if (typeof m !== "object") return String(m);
  // The gate's verdict in words (e.g. why the safety floor rejected a run) says the most.
  if (typeof m.decision === "string") return m.decision;
  return Object.entries(m).slice(0, 4)
    .map(([k, v]) => `${k.replace(/_/g, " ")} ${typeof v === "number" ? +v.toFixed(3) : v}`).join(" · ");
}

function runsTable(runs, { withUser = false } = {}) {
  const cols = [
    ["Run", (r) => `#${r.id ?? "?"}`],
    ...(withUser ? [["User", (r) => r.user_name ?? r.user ?? r.name ?? (has(r.user_id) ? `user ${r.user_id}` : "—")]] : []),
    ["Status", (r) => statusPill(r.status)],
    ["Requested", (r) => fmtDate(r.created_at)],
    ["Finished", (r) => fmtDate(r.finished_at)],
    ["Version", (r) => has(r.adapter_version) ? `v${r.adapter_version}` : "—"],
    ["Events", (r) => has(r.events_used) ? String(r.events_used) : "—"],
    ["Notes", (r) => r.error ? el("span", { class: "error-text", text: r.error }) : metricsText(r.metrics) || "—"],
  ];
  return table(cols, runs, { caption: "Training runs" });
}

// ---- my assistant -------------------------------------------------------------------------

export async function showMe(view, { onDeleted }) {
  loading(view, "My assistant");
  let me;
  try {
    me = await api.get("/api/me");
  } catch (err) {
    view.replaceChildren(el("div", { class: "page" }, el("h1", { class: "page-h", text: "My assistant" }),
      el("div", { class: "notice" }, err.missing
        ? "Your assistant's profile isn't available on this server yet."
        : `Could not load your profile: ${err.message}`)));
    return;
  }
  const counts = me.counts || {};
  const versionDate = me.current_version_created_at ?? me.adapter?.created_at;
  const lastRun = me.last_run ?? me.last_training_run;
  const stat = (label, key) => el("div", { class: "stat" },
    el("span", { class: "stat-n", text: has(counts[key]) ? String(counts[key]) : "—" }),
    el("span", { class: "stat-l", text: label }));
  const version = has(me.current_version)
    ? el("p", { class: "lead" }, "Answers come from ", el("strong", { text: `your personal version v${me.current_version}` }),
      has(versionDate) ? ` (trained ${fmtDate(versionDate)}).` : ".")
    : el("p", { class: "lead" }, "Answers come from the ", el("strong", { text: "shared base model" }),
      " — your personal version will appear after your first training run.");
  const reward = me.reward_head && typeof me.reward_head === "object"
    ? el("p", { class: "muted small" }, `Preference model: ${has(me.reward_head.version) ? `v${me.reward_head.version}` : "trained"}`,
      has(me.reward_head.created_at) ? ` · ${fmtDate(me.reward_head.created_at)}` : "",
      metricsText(me.reward_head.metrics) ? ` · ${metricsText(me.reward_head.metrics)}` : "")
    : null;

  const runsBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const page = el("div", { class: "page" },
    el("h1", { class: "page-h", text: "My assistant" }),
    card(`${me.name ?? "You"}${me.role === "admin" ? " · admin" : ""}`, version, reward,
      el("div", { class: "stats" },
        stat("thumbs up", "thumbs_up"), stat("thumbs down", "thumbs_down"),
        stat("comparisons", "comparisons"), stat("rankings", "rankings"),
        stat("new since last training", "events_since_last_training"))),
    card("Training history", runsBox),
    card("Your data",
      el("p", { class: "muted", text: "Download everything you have told your assistant, or delete it all, including your personal versions. Deleting also signs you out." }),
      el("div", { class: "row" },
        button({ label: "Export my data as JSON", text: "Export my data", cls: "btn",
          onclick: () => download("/api/me/export", `my-assistant-${today()}.json`).catch((e) => toast(e.message, "error")) }),
        button({ label: "Delete my data", text: "Delete my data…", cls: "btn btn-danger-outline",
          onclick: async () => {
            const ok = await confirmDialog({ title: "Delete all your data?",
              body: "Your conversations, feedback and personal versions will be deleted for good, and you will be signed out.",
              confirm: "Delete everything", danger: true });
            if (!ok) return;
            try { await api.del("/api/me"); toast("Your data was deleted"); onDeleted(); } catch (e) { toast(e.message, "error"); }
          } }))),
  );
  view.replaceChildren(page);

  let runs = null;
  try { runs = await api.get("/api/me/runs"); } catch { runs = null; }
  if (Array.isArray(runs?.runs)) runs = runs.runs;
  if (!Array.isArray(runs)) runs = lastRun && typeof lastRun === "object" ? [lastRun] : [];
  runsBox.replaceChildren(runs.length ? runsTable(runs)
    : el("p", { class: "muted", text: "No training runs yet. Keep rating answers: training starts once you have given enough new feedback." }));
}

// ---- admin --------------------------------------------------------------------------------

const pendingTrain = [];   // retrain requests the server could not take yet (no endpoint)

export async function showAdmin(view) {
  loading(view, "Admin");
  let users;
  try {
    users = await api.get("/admin/users");
  } catch (err) {
    view.replaceChildren(el("div", { class: "page" }, el("h1", { class: "page-h", text: "Admin" }),
      el("div", { class: "notice notice-warn", role: "alert" },
        el("strong", { text: err.status === 403 ? "Admin role needed." : "Could not load the admin page." }),
        " ", err.status === 403 ? "Your key does not have the admin role; ask an administrator." : err.message)));
    return;
  }
  const keyBox = el("div", { class: "key-reveal", hidden: true, role: "status" });
  const showKey = (who, key) => {
    keyBox.hidden = false;
    const code = el("code", { class: "key", text: key });
    keyBox.replaceChildren(el("p", {}, el("strong", { text: `API key for ${who}` }), " — shown once; copy it now."),
      el("div", { class: "row" }, code, button({ label: "Copy key", text: "Copy", cls: "btn btn-small",
        onclick: () => navigator.clipboard.writeText(key).then(() => toast("Copied"), () => toast("Select and copy the key", "error")) })));
  };
  const usersBox = el("div");
  const runsBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const pendingBox = el("ul", { class: "pending-list" });
  const refreshUsers = async () => { users = await api.get("/admin/users"); paintUsers(); };
  const paintUsers = () => usersBox.replaceChildren(table([
    ["Name", (u) => el("span", { class: "strong", text: u.name })],
    ["Role", (u) => el("span", { class: u.role === "admin" ? "pill pill-admin" : "pill", text: u.role })],
    ["Version", (u) => has(u.current_version) ? `v${u.current_version}` : "base"],
    ["Created", (u) => fmtDate(u.created_at)],
    ["Actions", (u) => el("div", { class: "row row-tight" },
      button({ label: `Retrain ${u.name} now`, text: "Retrain", cls: "btn btn-small", onclick: () => train(u.name) }),
      button({ label: `Rotate API key of ${u.name}`, text: "Rotate key", cls: "btn btn-small", onclick: async () => {
        const ok = await confirmDialog({ title: `Rotate ${u.name}'s key?`, body: "Their current key stops working immediately.", confirm: "Rotate key" });
        if (!ok) return;
        try { const r = await api.post(`/admin/users/${u.id}/rotate-key`); showKey(u.name, r.api_key); } catch (e) { toast(e.message, "error"); }
      } }),
      button({ label: `Delete user ${u.name}`, text: "Delete", cls: "btn btn-small btn-danger-outline", onclick: async () => {
        const ok = await confirmDialog({ title: `Delete ${u.name}?`, body: "Their conversations, feedback and adapters are deleted for good.", confirm: "Delete user", danger: true });
        if (!ok) return;
        try { await api.del(`/admin/users/${u.id}`); toast(`${u.name} deleted`); await refreshUsers(); } catch (e) { toast(e.missing ? "Deleting users isn't available on this server yet." : e.message, "error"); }
      } }))],
  ], users, { caption: "Users" }));

  const refreshRuns = async () => {
    try {
      let runs = await api.get("/admin/runs");
      if (Array.isArray(runs?.runs)) runs = runs.runs;
      runsBox.replaceChildren(runs.length ? runsTable(runs, { withUser: true }) : el("p", { class: "muted", text: "No training runs yet." }));
    } catch (e) {
      runsBox.replaceChildren(el("p", { class: "muted", text: e.missing ? "Training runs aren't available on this server yet." : e.message }));
    }
  };
  const paintPending = () => pendingBox.replaceChildren(...pendingTrain.map((p) => el("li", {},
    statusPill("pending"), ` Retrain ${p.user ?? "everyone"} · requested ${fmtDate(p.at)} — the training service isn't available yet`)));
  async function train(user) {
    const body = user ? { user, force: true } : { force: true };
    try {
      const r = await api.post("/admin/train", body);
      const queued = r?.queued ?? r?.runs;
      const n = Array.isArray(queued) ? queued.length : null;
      toast(n === 0 ? "Nothing to train: no user has new feedback (or a run is already queued)."
        : `Retrain ${user ?? "everyone"}: ${n != null ? `${n} run${n === 1 ? "" : "s"} queued` : "queued"}`);
      refreshRuns();
    } catch (e) {
      if (e.missing) {
        pendingTrain.push({ user, at: new Date().toISOString() });
        paintPending();
        toast(`Retrain ${user ?? "everyone"} is pending`);
      } else toast(e.message, "error");
    }
  }

  const nameInput = el("input", { class: "input", id: "new-user-name", "aria-label": "New user name", placeholder: "name", autocomplete: "off", required: true });
  const adminBox = el("input", { type: "checkbox", id: "new-user-admin" });
  const create = el("form", { class: "row create-user", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const u = await api.post("/admin/users", { name: nameInput.value.trim(), admin: adminBox.checked });
      showKey(u.name, u.api_key);
      nameInput.value = "";
      adminBox.checked = false;
      await refreshUsers();
    } catch (err) { toast(err.message, "error"); }
  } }, nameInput, el("label", { class: "check", for: "new-user-admin" }, adminBox, " admin"),
  el("button", { type: "submit", class: "btn btn-primary", "aria-label": "Create user" }, "Create user"));

  const exportUser = el("select", { class: "input", "aria-label": "User to export" },
    users.map((u) => el("option", { value: u.name, text: u.name })));
  const exportFormat = el("select", { class: "input", "aria-label": "Export format" },
    el("option", { value: "preference", text: "preference pairs" }), el("option", { value: "unpaired", text: "unpaired (thumbs)" }));

  view.replaceChildren(el("div", { class: "page" },
    el("h1", { class: "page-h", text: "Admin" }),
    card("Users", create, keyBox, usersBox),
    card("Training",
      el("div", { class: "row space" },
        el("p", { class: "muted", text: "Runs queue per user; “Retrain” forces a run even with little new feedback." }),
        el("div", { class: "row row-tight" },
          button({ label: "Refresh training runs", text: "Refresh", cls: "btn btn-ghost btn-small", onclick: refreshRuns }),
          button({ label: "Retrain everyone now", text: "Retrain everyone", cls: "btn btn-primary btn-small", onclick: () => train(null) }))),
      pendingBox, runsBox),
    card("Export feedback",
      el("p", { class: "muted", text: "JSON Lines for training elsewhere." }),
      el("div", { class: "row" }, exportUser, exportFormat,
        button({ label: "Download export", text: "Download", cls: "btn", onclick: () => {
          const user = exportUser.value, fmt = exportFormat.value;
          download(`/admin/export?user=${encodeURIComponent(user)}&format=${fmt}`, `${user}-${fmt}-${today()}.jsonl`)
            .catch((e) => toast(e.missing ? "Export isn't available on this server yet." : e.message, "error"));
        } })))));
  paintUsers();
  paintPending();
  refreshRuns();
}
