// Training runs as people read them: status, phases with progress, the gate's verdict in words.

import { el, fmtDate, statusPill, table } from "./ui.js";

const has = (v) => v !== undefined && v !== null && v !== "";
const PHASES = [["reward_head", "preference model"], ["dpo", "warm start"], ["rl", "learning"], ["gate", "check"]];

function metricsOf(run) {
  let m = run.metrics;
  if (typeof m === "string") { try { m = JSON.parse(m); } catch { m = null; } }
  return m && typeof m === "object" ? m : {};
}

const pct = (x) => `${Math.round(x * 100)}%`;
const secs = (s) => (s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);

/** The gate's verdict as a sentence. */
export function verdictWords(run) {
  const m = metricsOf(run);
  const g = m.gate;
  if (!g || typeof g !== "object") {
    // A run can stop before the gate, e.g. "skipped: not enough evidence to train (...)".
    const d = typeof m.decision === "string" ? m.decision.trim() : "";
    if (!d) return null;
    const skipped = d.match(/^skipped:\s*(.*?);?\s*nothing trained\.?$/i);
    return skipped ? `Skipped: ${skipped[1]}. Nothing was trained; your current version keeps answering.`
      : d.charAt(0).toUpperCase() + d.slice(1);
  }
  const against = g.baseline === "base" ? "the base model" : "your previous version";
  const win = has(g.win_rate) ? `it won ${pct(g.win_rate)} of ${g.n_prompts ?? "the"} test prompts against ${against}` : "";
  if (run.status === "succeeded") {
    return `Promoted${has(run.adapter_version) ? ` as v${run.adapter_version}` : ""}: ${win}, judged by your preference model.`;
  }
  if (run.status === "rejected") {
    const d = String(m.decision || "");
    const floor = d.match(/^rejected by the safety floor:\s*(.*)$/);
    if (floor) return `Not promoted by the safety floor: ${floor[1]}. Your current version keeps answering.`;
    const why = d.includes("KL") && d.includes("exceeds") ? "it drifted too far from the base model"
      : `it was not better than ${against}`;
    return `Not promoted: ${why}${win ? ` (${win})` : ""}. Your current version keeps answering.`;
  }
  return null;
}

/** What a run is doing or did, phase by phase. */
export function phaseWords(run, totalSteps) {
  const m = metricsOf(run);
  const steps = Array.isArray(m.steps) ? m.steps : [];
  if (run.status === "queued") return "Waiting for its turn";
  if (run.status === "running") {
    if (!steps.length) return "Fitting your preference model and warm start…";
    const last = steps[steps.length - 1];
    const of = totalSteps ? ` of ${totalSteps}` : "";
    return `Learning: step ${steps.length}${of}` + (has(last.reward_mean) ? ` (reward ${last.reward_mean.toFixed(2)})` : "");
  }
  const seconds = m.seconds && typeof m.seconds === "object" ? m.seconds : {};
  const done = PHASES.filter(([k]) => has(seconds[k])).map(([k, name]) => `${name} ${secs(seconds[k])}`);
  const parts = [];
  if (steps.length) parts.push(`${steps.length} learning step${steps.length === 1 ? "" : "s"}`);
  if (Array.isArray(m.dpo_steps) && m.dpo_steps.length) parts.push(`${m.dpo_steps.length} warm-start steps`);
  if (done.length) parts.push(done.join(", "));
  return parts.join(" · ") || "—";
}

function progressBar(run, totalSteps) {
  const steps = Array.isArray(metricsOf(run).steps) ? metricsOf(run).steps.length : 0;
  if (run.status !== "running" || !totalSteps) return null;
  return el("progress", { max: String(totalSteps), value: String(steps), class: "run-progress",
    "aria-label": `Training run ${run.id} progress` });
}

function outcome(run) {
  if (run.error) return el("span", { class: "error-text", text: `Failed: ${run.error}` });
  return verdictWords(run) || (run.status === "queued" || run.status === "running" ? "In progress" : "—");
}

export function runsTable(runs, { withUser = false, totalSteps = null } = {}) {
  const cols = [
    ["Run", (r) => `#${r.id ?? "?"}`],
    ...(withUser ? [["User", (r) => r.user_name ?? (has(r.user_id) ? `user ${r.user_id}` : "—")]] : []),
    ["Status", (r) => statusPill(r.status)],
    ["Requested", (r) => fmtDate(r.created_at)],
    ["Finished", (r) => fmtDate(r.finished_at)],
    ["Phases", (r) => el("div", { class: "phases" }, el("span", { text: phaseWords(r, totalSteps) }), progressBar(r, totalSteps))],
    ["Outcome", (r) => el("span", { class: "outcome" }, outcome(r))],
  ];
  return table(cols, runs, { caption: "Training runs" });
}
