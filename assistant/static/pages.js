// "My assistant" (what was learned, training, settings, export, delete) and the admin page.

import { api, download } from "./api.js";
import { LENGTHS, getLength, setLength } from "./prefs.js";
import { runsTable, verdictWords } from "./runs.js";
import { button, confirmDialog, el, fmtDate, progressDialog, statusPill, table, toast } from "./ui.js";

const has = (v) => v !== undefined && v !== null && v !== "";
const today = () => new Date().toISOString().slice(0, 10);
const pct = (x) => `${Math.round(x * 100)}%`;
const POLL_MS = 4000;      // a run's progress is written every 2 s; twice that is plenty

function card(title, ...children) {
  return el("section", { class: "card", "aria-label": title }, el("h2", { class: "card-title", text: title }), ...children);
}

function loading(view, title) {
  view.replaceChildren(el("div", { class: "page" }, el("p", { class: "page-h", "aria-hidden": "true", text: title }),
    el("p", { class: "muted", text: "Loading…" })));
}

/** New labels since the last run: a vote changed several times counts once when the server says so. */
export function newLabels(counts) {
  return Number.isInteger(counts?.effective_new_labels) ? counts.effective_new_labels
    : counts?.events_since_last_training ?? 0;
}

// ---- my assistant -------------------------------------------------------------------------

export async function showMe(view, { onDeleted }) {
  loading(view, "My assistant");
  let me;
  try {
    me = await api.get("/api/me");
  } catch (err) {
    view.replaceChildren(el("div", { class: "page" }, el("p", { class: "page-h", "aria-hidden": "true", text: "My assistant" }),
      el("div", { class: "notice" }, `Could not load your profile: ${err.message}`)));
    return;
  }
  const counts = me.counts || {};
  const stat = (label, value) => el("div", { class: "stat" },
    el("span", { class: "stat-n", text: has(value) ? String(value) : "—" }),
    el("span", { class: "stat-l", text: label }));
  const version = has(me.current_version)
    ? el("p", { class: "lead" }, "Answers come from ", el("strong", { text: `your personal version v${me.current_version}` }),
      has(me.adapter?.created_at) ? ` (trained ${fmtDate(me.adapter.created_at)}).` : ".")
    : el("p", { class: "lead" }, "Answers come from the ", el("strong", { text: "shared base model" }),
      " — your personal version will appear after your first successful training run.");

  const learnBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const nextBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const likesBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const chartBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const runsBox = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  const page = el("div", { class: "page" },
    el("p", { class: "page-h", "aria-hidden": "true", text: "My assistant" }),
    card(`${me.name ?? "You"}${me.role === "admin" ? " · admin" : ""}`, version,
      el("div", { class: "stats" },
        stat("thumbs up", counts.thumbs_up), stat("thumbs down", counts.thumbs_down),
        stat("comparisons", counts.comparisons), stat("rankings", counts.rankings),
        stat("new labels since last training", newLabels(counts)))),
    card("Next training", nextBox),
    card("What changed in your version", learnBox),
    card("What your preference model likes", likesBox),
    card("Progress over versions", chartBox),
    card("Training history", runsBox),
    card("Settings", settings()),
    dataCard(onDeleted));
  view.replaceChildren(page);

  const [insights, runs] = await Promise.all([
    api.get("/api/me/insights").catch((e) => ({ error: e.message })),
    api.get("/api/me/runs").catch(() => [])]);
  const totalSteps = me.limits?.rl_steps;
  let myRuns = runs;
  const paintRuns = () => runsBox.replaceChildren(myRuns.length ? runsTable(myRuns, { totalSteps })
    : el("p", { class: "muted", text: "No training runs yet. Keep rating answers: training starts once you have given enough new feedback." }));
  paintRuns();
  pollWhileActive(runsBox, () => myRuns, async () => { myRuns = await api.get("/api/me/runs"); paintRuns(); });
  if (insights.error) {
    for (const box of [nextBox, learnBox, likesBox, chartBox]) box.replaceChildren(el("p", { class: "muted", text: insights.error }));
    return;
  }
  const fill = (box, nodes) => box.replaceChildren(...nodes.filter(Boolean));
  fill(nextBox, nextTraining(insights.training, runs, totalSteps));
  fill(learnBox, whatChanged(me, insights.versions));
  fill(likesBox, likes(insights.reward));
  fill(chartBox, versionsChart(insights.versions));
}

function nextTraining(t, runs, totalSteps) {
  const active = runs.find((r) => r.status === "running" || r.status === "queued");
  const bar = el("progress", { max: String(t.needed), value: String(Math.min(t.new_labels, t.needed)),
    class: "meter", "aria-label": "Feedback toward the next training" });
  const words = active
    ? `A training run is ${active.status === "running" ? "going now" : "queued"}.`
    : t.remaining > 0
      ? `${t.remaining} more label${t.remaining === 1 ? "" : "s"} (thumbs, comparisons or rankings) before the next training.`
      : "Enough new feedback: your next training starts at the next scheduled check.";
  return [el("p", {}, el("strong", { text: `${t.new_labels} of ${t.needed}` }), " new labels since your last training. ", words),
    bar,
    el("p", { class: "small muted", text: "Changing a vote on one answer counts as one label; ties, “both bad” and cleared votes teach nothing and are not counted." }),
    active && totalSteps ? el("p", { class: "small muted", text: `Training learns in ${totalSteps} steps, then checks the new version against the current one.` }) : null];
}

function whatChanged(me, versions) {
  const last = versions[versions.length - 1];
  const out = [];
  if (last) out.push(el("p", { text: verdictWords({ ...last, metrics: { gate: last.gate, decision: last.decision } }) || "" }));
  if (!has(me.current_version)) {
    out.push(el("p", { class: "muted", text: "No personal version yet, so there is nothing to compare with the base model." }));
    return out;
  }
  const examples = el("div", { class: "examples" });
  const go = button({ label: "Show examples", text: "Show examples", cls: "btn", onclick: async () => {
    go.disabled = true;
    examples.replaceChildren(el("p", { class: "muted", role: "status" }, el("span", { class: "spinner", "aria-hidden": "true" }),
      " Asking the base model and your version the same prompts… (up to a minute when the server is busy)"));
    try {
      const r = await api.post("/api/me/examples");
      examples.replaceChildren(...exampleRows(r));
    } catch (e) {
      examples.replaceChildren(el("p", { class: "error", text: `Could not make examples: ${e.message}` }));
      go.disabled = false;
    }
  } });
  out.push(el("p", { class: "muted small", text: `The same prompts from your own chats, answered by the shared base model and by your v${me.current_version} (no sampling, so the difference is what training changed).` }),
    go, examples);
  return out;
}

function exampleRows(r) {
  if (!r.examples?.length) return [el("p", { class: "muted", text: r.reason || "No prompts of yours to use yet." })];
  return r.examples.map((x) => el("div", { class: "example" },
    el("p", { class: "example-prompt" }, el("span", { class: "muted small", text: "Prompt: " }), x.prompt),
    el("div", { class: "cands cands-2" },
      el("div", { class: "cand" }, el("div", { class: "cand-head" }, el("span", { class: "badge badge-base", text: "Base model" })),
        el("p", { class: "example-text", text: x.base })),
      el("div", { class: "cand" }, el("div", { class: "cand-head" }, el("span", { class: "badge badge-personal", text: `Your v${r.version}` })),
        el("p", { class: "example-text", text: x.mine })))));
}

function likes(reward) {
  if (!reward.head) return [el("p", { class: "muted", text: "Your preference model appears with your first training run." })];
  const h = reward.head;
  const out = [el("p", {}, has(h.cv_accuracy)
    ? `It agrees with ${pct(h.cv_accuracy)} of your own choices that it did not train on (cross-validated on ${h.n_pairs ?? 0} pairs and ${h.n_thumbs ?? 0} thumbs).`
    : `Fitted on ${h.n_pairs ?? 0} pairs and ${h.n_thumbs ?? 0} thumbs.`)];
  if (!reward.likes.length) {
    out.push(el("p", { class: "muted", text: "Not enough scored answers yet to show what it prefers." }));
    return out;
  }
  const list = (title, items) => el("div", { class: "likes-col" }, el("h3", { class: "small-h", text: title }),
    el("ol", { class: "likes" }, items.map((a) => el("li", {},
      el("a", { href: `#/c/${a.conversation_id}`, class: "small muted", text: `“${a.prompt}”` }),
      el("p", { class: "example-text", text: a.answer }),
      el("span", { class: "small muted", text: `score ${a.score.toFixed(2)}` })))));
  out.push(el("div", { class: "likes-grid" }, list("Likes most", reward.likes), list("Likes least", reward.dislikes)),
    el("p", { class: "small muted", text: `Among ${reward.scored} of your answers it has seen${reward.unscored ? ` (${reward.unscored} newer ${reward.unscored === 1 ? "one is" : "ones are"} scored after the next training)` : ""}.` }));
  return out;
}

function versionsChart(versions) {
  if (!versions.length) return [el("p", { class: "muted", text: "No version has been checked yet." })];
  const holder = el("div", { class: "chart", role: "img",
    "aria-label": `Win rate of each trained version vs base: ${versions.map((v) => `run ${v.run_id} ${pct(vsBase(v) ?? 0)}`).join(", ")}` });
  const rows = table([
    ["Run", (v) => `#${v.run_id}`],
    ["Version", (v) => (has(v.version) ? `v${v.version}` : "not promoted")],
    ["Win rate vs base", (v) => (has(v.gate.win_rate_vs_base) ? pct(v.gate.win_rate_vs_base)
      : has(v.gate.win_rate) ? `${pct(v.gate.win_rate)} vs previous version` : "—")],
    ["Gate check", (v) => (has(v.gate.win_rate) ? `${pct(v.gate.win_rate)} vs ${v.gate.baseline === "base" ? "base model" : "previous version"}` : "—")],
    ["Status", (v) => statusPill(v.status)],
  ], versions, { caption: "Versions and their checks" });
  requestAnimationFrame(() => drawChart(holder, versions));
  return [el("p", { class: "small muted", text: "Each training run's new version against the base model, on your own prompts held out from training, judged by your preference model. 50% is no change. The gate check is against the version it would replace, which decides promotion." }),
    holder, rows];
}

async function drawChart(holder, versions) {
  if (!holder.isConnected) return;
  let uPlot;
  try { uPlot = (await import("./vendor/uplot/uPlot.esm.js")).default; } catch { return; }
  const css = getComputedStyle(document.documentElement);
  const ink = css.getPropertyValue("--muted").trim() || "#666";
  const accent = css.getPropertyValue("--accent").trim() || "#3554c8";
  const grid = css.getPropertyValue("--line").trim() || "#ddd";
  const xs = versions.map((_, i) => i + 1);
  const axis = { stroke: ink, grid: { stroke: grid }, ticks: { stroke: grid } };
  const opts = {
    width: Math.max(260, holder.clientWidth), height: 220,
    scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [{ ...axis, splits: () => xs, values: (u, vals) => vals.map((v) => (Number.isInteger(v) && versions[v - 1] ? `#${versions[v - 1].run_id}` : "")) },
      { ...axis, values: (u, vals) => vals.map((v) => pct(v)) }],
    series: [{ label: "run" },
      { label: "win rate vs base", stroke: accent, width: 2, points: { size: 7, fill: accent }, value: (u, v) => (v == null ? "—" : pct(v)) },
      { label: "no change", stroke: ink, dash: [4, 4], width: 1, points: { show: false } }],
    legend: { show: true },
  };
  holder.replaceChildren();
  new uPlot(opts, [xs, versions.map((v) => vsBase(v) ?? null), xs.map(() => 0.5)], holder);
}

// Runs recorded before the gate measured every version against the base fall back to the
// gate's own figure (against the version they would have replaced).
const vsBase = (v) => v.gate.win_rate_vs_base ?? v.gate.win_rate;

function settings() {
  const select = el("select", { class: "input", id: "length-setting", onchange: (e) => setLength(e.target.value).then(() => toast("Saved"), (err) => toast(`Not saved: ${err.message}`, "error")) },
    LENGTHS.map(([v, text]) => el("option", { value: v, text, selected: v === getLength() })));
  return el("div", { class: "row" }, el("label", { for: "length-setting", class: "label label-inline", text: "Answer length" }), select,
    el("span", { class: "small muted", text: "Short answers come faster; you can also change it next to the message box." }));
}

function dataCard(onDeleted) {
  return card("Your data",
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
          try {
            await progressDialog("Deleting your data", "Deleting your conversations, feedback and versions… This can take a minute while the assistant is busy; keep this page open.",
              () => api.del("/api/me"));
            toast("Your data was deleted. You are signed out.");
            onDeleted();
          } catch (e) { toast(`Your data was not deleted: ${e.message}`, "error"); }
        } })));
}

// ---- admin --------------------------------------------------------------------------------

export async function showAdmin(view) {
  loading(view, "Admin");
  let users;
  try {
    users = await api.get("/admin/users");
  } catch (err) {
    view.replaceChildren(adminError(err));
    return;
  }
  const page = adminState(users);
  api.get("/api/me").then((me) => { page.totalSteps = me.limits?.rl_steps ?? null; }).catch(() => {});
  view.replaceChildren(el("div", { class: "page" },
    el("p", { class: "page-h", "aria-hidden": "true", text: "Admin" }),
    card("Users", createUserForm(page), page.keyBox, page.usersBox, page.versionsBox),
    trainingCard(page),
    exportCard(page)));
  paintUsers(page);
  await refreshUsers(page).catch(() => {});
  await refreshRuns(page);
  pollWhileActive(page.runsBox, () => page.runs, () => refreshRuns(page));
}

function adminError(err) {
  const forbidden = err.status === 403;
  return el("div", { class: "page" }, el("p", { class: "page-h", "aria-hidden": "true", text: "Admin" }),
    el("div", { class: "notice notice-warn", role: "alert" },
      el("strong", { text: forbidden ? "Admin role needed." : "Could not load the admin page." }),
      " ", forbidden ? "Your key does not have the admin role; ask an administrator." : err.message));
}

/** What the admin page's parts share: the loaded lists and the boxes they paint into. */
function adminState(users) {
  return {
    users, counts: {}, runs: [], totalSteps: null,
    keyBox: el("div", { class: "key-reveal", hidden: true, role: "status" }),
    usersBox: el("div"),
    runsBox: el("div", {}, el("p", { class: "muted", text: "Loading…" })),
    versionsBox: el("div", { class: "versions-box" }),
    exportUser: el("select", { class: "input", "aria-label": "User to export" }),
  };
}

function showKey(page, who, key) {
  page.keyBox.hidden = false;
  const code = el("code", { class: "key", text: key });
  page.keyBox.replaceChildren(el("p", {}, el("strong", { text: `API key for ${who}` }), " — shown once; copy it now."),
    el("div", { class: "row" }, code, button({ label: "Copy key", text: "Copy key", cls: "btn btn-small",
      onclick: () => navigator.clipboard.writeText(key).then(() => toast("Copied"), () => toast("Select and copy the key", "error")) })));
}

const activeRun = (page, u) => page.runs.find((r) => r.user_id === u.id && (r.status === "queued" || r.status === "running"));

function feedbackOf(page, u) {
  const c = page.counts[String(u.id)];
  if (!c) return "—";
  return el("span", { title: "thumbs up / down, comparisons, rankings; new since last training" },
    `${c.thumbs_up}↑ ${c.thumbs_down}↓ · ${c.comparisons} cmp · ${c.rankings} rank · `,
    el("strong", { text: `${newLabels(c)} new` }));
}

function hasFeedback(page, u) {
  const c = page.counts[String(u.id)];
  return !c || c.thumbs_up + c.thumbs_down + c.comparisons + c.rankings + newLabels(c) > 0;
}

async function refreshUsers(page) {
  [page.users, page.counts] = await Promise.all([api.get("/admin/users"), api.get("/admin/feedback-counts").catch(() => ({}))]);
  paintUsers(page);
}

function paintUsers(page) {
  const picked = page.exportUser.value;
  page.exportUser.replaceChildren(...page.users.map((u) => el("option", { value: u.name, text: u.name, selected: u.name === picked })));
  page.usersBox.replaceChildren(table([
    ["Name", (u) => el("span", { class: "strong", text: u.name })],
    ["Role", (u) => el("span", { class: u.role === "admin" ? "pill pill-admin" : "pill", text: u.role })],
    ["Version", (u) => has(u.current_version) ? `v${u.current_version}` : "base"],
    ["Feedback", (u) => feedbackOf(page, u)],
    ["Created", (u) => fmtDate(u.created_at)],
    ["Actions", (u) => userActions(page, u)],
  ], page.users, { caption: "Users" }));
}

function userActions(page, u) {
  const active = activeRun(page, u);
  const retrainTitle = active ? `A run is already ${active.status}` : !hasFeedback(page, u) ? "No feedback to train on yet" : `Retrain ${u.name} now`;
  return el("div", { class: "row row-tight" },
    button({ label: `Retrain ${u.name}`, text: "Retrain", cls: "btn btn-small", title: retrainTitle,
      disabled: Boolean(active) || !hasFeedback(page, u), onclick: () => train(page, u.name) }),
    button({ label: `Versions of ${u.name}`, text: "Versions", cls: "btn btn-small", onclick: () => showVersions(page, u) }),
    button({ label: `Rotate key of ${u.name}`, text: "Rotate key", cls: "btn btn-small", onclick: () => rotateKey(page, u) }),
    button({ label: `Delete ${u.name}`, text: "Delete", cls: "btn btn-small btn-danger-outline", onclick: () => deleteUser(page, u) }));
}

async function rotateKey(page, u) {
  const ok = await confirmDialog({ title: `Rotate ${u.name}'s key?`, body: "Their current key stops working immediately.", confirm: "Rotate key" });
  if (!ok) return;
  try { const r = await api.post(`/admin/users/${u.id}/rotate-key`); showKey(page, u.name, r.api_key); } catch (e) { toast(e.message, "error"); }
}

async function deleteUser(page, u) {
  const ok = await confirmDialog({ title: `Delete ${u.name}?`, body: "Their conversations, feedback and adapters are deleted for good.", confirm: "Delete user", danger: true });
  if (!ok) return;
  try {
    await progressDialog(`Deleting ${u.name}`, "Deleting their conversations, feedback and versions…", () => api.del(`/admin/users/${u.id}`));
    toast(`${u.name} deleted`);
    await refreshUsers(page);
  } catch (e) { toast(e.message, "error"); }
}

async function showVersions(page, u) {
  const box = page.versionsBox;
  box.replaceChildren(el("p", { class: "muted", text: `Loading versions of ${u.name}…` }));
  let list;
  try { list = await api.get(`/admin/users/${u.id}/versions`); } catch (e) { box.replaceChildren(el("p", { class: "error", text: e.message })); return; }
  const head = el("div", { class: "row space" }, el("h3", { class: "small-h", text: `Versions of ${u.name}` }),
    button({ label: "Close versions", iconName: "close", cls: "btn-icon", onclick: () => box.replaceChildren() }));
  if (!list.length) { box.replaceChildren(head, el("p", { class: "muted", text: `${u.name} has no personal versions; the base model answers them.` })); return; }
  box.replaceChildren(head, table([
    ["Version", (v) => el("span", {}, `v${v.version} `, v.current ? el("span", { class: "pill pill-succeeded", text: "serving" }) : null)],
    ["Created", (v) => fmtDate(v.created_at)],
    ["Check", (v) => { const g = v.metrics?.gate; return g && typeof g.win_rate === "number" ? `won ${pct(g.win_rate)} vs ${g.baseline === "base" ? "base" : "previous"}` : "—"; }],
    ["", (v) => (v.current ? "" : button({ label: `Serve v${v.version} to ${u.name}`, text: `Serve v${v.version}`, cls: "btn btn-small",
      onclick: () => serveVersion(page, u, v) }))],
  ], list, { caption: `Versions of ${u.name}` }));
  box.scrollIntoView({ block: "nearest" });
}

async function serveVersion(page, u, v) {
  const ok = await confirmDialog({ title: `Serve v${v.version} to ${u.name}?`, body: "Their answers come from this version from their next message on. Newer versions are kept.", confirm: `Serve v${v.version}` });
  if (!ok) return;
  try { await api.post(`/admin/users/${u.id}/rollback`, { version: v.version }); toast(`${u.name} now uses v${v.version}`); await refreshUsers(page); showVersions(page, u); } catch (e) { toast(e.message, "error"); }
}

async function refreshRuns(page) {
  try {
    page.runs = await api.get("/admin/runs");
    page.runsBox.replaceChildren(page.runs.length ? runsTable(page.runs, { withUser: true, totalSteps: page.totalSteps }) : el("p", { class: "muted", text: "No training runs yet." }));
    paintUsers(page);
  } catch (e) {
    page.runsBox.replaceChildren(el("p", { class: "muted", text: e.message }));
  }
}

async function train(page, user) {
  const body = user ? { user, force: true } : { force: true };
  try {
    const r = await api.post("/admin/train", body);
    toast(queuedMessage(page.runs, user, Array.isArray(r?.queued) ? r.queued : []));
    await refreshRuns(page);
  } catch (e) {
    toast(e.message, "error");
  }
}

/** What a train request did: runs newly queued vs ones already queued or running. */
function queuedMessage(runs, user, queued) {
  const before = new Set(runs.map((x) => x.id));
  const fresh = queued.filter((x) => !before.has(x.id));
  const already = queued.filter((x) => before.has(x.id));
  if (!queued.length) return "Nothing to train: no user has new feedback (or their runs are already queued).";
  if (user && !fresh.length) return `${user} already has a run ${already[0].status}.`;
  return `${fresh.length} run${fresh.length === 1 ? "" : "s"} queued${already.length ? `; ${already.length} already going` : ""}.`;
}

function createUserForm(page) {
  const nameInput = el("input", { class: "input", id: "new-user-name", "aria-label": "New user name", placeholder: "name", autocomplete: "off", required: true });
  const adminBox = el("input", { type: "checkbox", id: "new-user-admin" });
  return el("form", { class: "row create-user", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const u = await api.post("/admin/users", { name: nameInput.value.trim(), admin: adminBox.checked });
      showKey(page, u.name, u.api_key);
      nameInput.value = "";
      adminBox.checked = false;
      await refreshUsers(page);
    } catch (err) { toast(err.message, "error"); }
  } }, nameInput, el("label", { class: "check", for: "new-user-admin" }, adminBox, " admin"),
  el("button", { type: "submit", class: "btn btn-primary" }, "Create user"));
}

function trainingCard(page) {
  return card("Training",
    el("div", { class: "row space" },
      el("p", { class: "muted", text: "Runs queue per user; “Retrain” forces a run for one user even with little new feedback." }),
      el("div", { class: "row row-tight" },
        button({ label: "Refresh training runs", text: "Refresh", cls: "btn btn-ghost btn-small", onclick: () => refreshRuns(page) }),
        button({ label: "Retrain everyone…", text: "Retrain everyone…", cls: "btn btn-small", onclick: async () => {
          const ok = await confirmDialog({ title: "Retrain every user with feedback?",
            body: "A run is queued for each user with any new feedback. Runs take minutes each and share this machine with chat.",
            confirm: "Retrain everyone" });
          if (ok) train(page, null);
        } }))),
    page.runsBox);
}

function exportCard(page) {
  const exportFormat = el("select", { class: "input", "aria-label": "Export format" },
    el("option", { value: "preference", text: "preference pairs" }), el("option", { value: "unpaired", text: "unpaired (thumbs)" }));
  return card("Export feedback",
    el("p", { class: "muted", text: "JSON Lines for training elsewhere." }),
    el("div", { class: "row" }, page.exportUser, exportFormat,
      button({ label: "Download export", text: "Download", cls: "btn", onclick: () => {
        const user = page.exportUser.value, fmt = exportFormat.value;
        download(`/admin/export?user=${encodeURIComponent(user)}&format=${fmt}`, `${user}-${fmt}-${today()}.jsonl`)
          .catch((e) => toast(e.message, "error"));
      } })));
}

/** Refresh every few seconds while a run is queued or running and `node` is on screen. */
function pollWhileActive(node, current, refresh) {
  const tick = async () => {
    if (!node.isConnected) return;
    if (current().some((r) => r.status === "queued" || r.status === "running")) await refresh().catch(() => {});
    setTimeout(tick, POLL_MS);
  };
  setTimeout(tick, POLL_MS);
}
