// What this browser remembers per signed-in user: answer length (the server's, cached),
// deleted conversation ids.

import { api } from "./api.js";

let owner = "me";

export function setPrefsUser(user) { owner = String(user?.id ?? user?.name ?? "me"); }
export const userKey = (what) => `assistant.${what}.${owner}`;

/** Answer length, a setting kept on the server (GET/PUT /api/me/settings) that decides a chat's
 * max_tokens when the request gives none; this browser caches it to draw the selects at once. */
export const LENGTHS = [["short", "Short"], ["normal", "Normal"], ["long", "Long"]];

export function getLength() { return localStorage.getItem(userKey("length")) || "normal"; }

let saving = Promise.resolve();

/** Save the answer length on the server; `settled()` waits for it before a message is sent. */
export function setLength(value) {
  localStorage.setItem(userKey("length"), value);
  saving = api.put("/api/me/settings", { answer_length: value });
  return saving;
}
export const settled = () => saving.catch(() => {});

/** Read the user's settings from the server into the cache (the cache stays if that fails). */
export async function loadSettings() {
  try {
    const s = await api.get("/api/me/settings");
    if (s?.answer_length) localStorage.setItem(userKey("length"), s.answer_length);
  } catch { /* offline or an older server: the cached value stands */ }
}

// Deleted conversations are remembered so that an old link never opens another chat.
const deletedKey = () => userKey("deleted");
export const deletedIds = () => new Set(JSON.parse(localStorage.getItem(deletedKey()) || "[]"));
export function markDeleted(id, deleted) {
  const ids = deletedIds();
  if (deleted) ids.add(id); else ids.delete(id);
  localStorage.setItem(deletedKey(), JSON.stringify([...ids].slice(-200)));
}
