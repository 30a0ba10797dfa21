// What this browser remembers per signed-in user: answer length, deleted conversation ids.

let owner = "me";

export function setPrefsUser(user) { owner = String(user?.id ?? user?.name ?? "me"); }
export const userKey = (what) => `assistant.${what}.${owner}`;

/** Answer length: [value, label, share of the server's default max_tokens]. */
export const LENGTHS = [["short", "Short", 0.5], ["normal", "Normal", 1], ["long", "Long", 3]];

export function getLength() { return localStorage.getItem(userKey("length")) || "normal"; }
export function setLength(value) { localStorage.setItem(userKey("length"), value); }

// Deleted conversations are remembered so that an old link never opens another chat.
const deletedKey = () => userKey("deleted");
export const deletedIds = () => new Set(JSON.parse(localStorage.getItem(deletedKey()) || "[]"));
export function markDeleted(id, deleted) {
  const ids = deletedIds();
  if (deleted) ids.add(id); else ids.delete(id);
  localStorage.setItem(deletedKey(), JSON.stringify([...ids].slice(-200)));
}
