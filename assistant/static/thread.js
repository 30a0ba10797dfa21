// A conversation as a tree: an edited message is a sibling of the one it replaces (same
// parent), a turn may hold several answers. Pure functions over /api/conversations/{id}.

/** Index the tree: turns by id, answer id -> turn, sibling groups by parent turn. */
function tree(detail) {
  const turns = detail.turns;
  const byAnswer = new Map();
  for (const t of turns) for (const c of t.candidates) byAnswer.set(c.id, t);
  const groupOf = (t) => (t.parent_id == null ? "root" : `t${byAnswer.get(t.parent_id)?.id ?? t.parent_id}`);
  const groups = new Map();
  for (const t of turns) {
    const key = groupOf(t);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(t);
  }
  const latest = new Map();            // turn id -> newest id in its subtree
  const newest = (t) => {
    if (latest.has(t.id)) return latest.get(t.id);
    const kids = groups.get(`t${t.id}`) || [];
    const v = Math.max(t.id, ...t.candidates.map((c) => c.id), ...kids.map(newest));
    latest.set(t.id, v);
    return v;
  };
  return { groups, newest };
}

/** The path shown: in each sibling group the selected turn (`branch`: group key -> turn id),
 * else the one with the newest work. Each step: {turn, siblings, key}. */
export function threadPath(detail, branch) {
  const { groups, newest } = tree(detail);
  const out = [];
  let key = "root";
  while (groups.has(key)) {
    const siblings = groups.get(key);
    let pick = siblings.find((t) => t.id === branch.get(key));
    if (!pick) pick = siblings.reduce((a, b) => (newest(b) > newest(a) ? b : a));
    out.push({ turn: pick, siblings, key });
    key = `t${pick.id}`;
  }
  return out;
}

function candLabel(turn, id) {
  return `answer ${turn.candidates.findIndex((c) => c.id === id) + 1}`;
}

/** The verdict(s) among `verdicts` that cover this answer, in words. */
export function verdictText(msg, turn, verdicts) {
  const out = [];
  for (const v of verdicts.filter((x) => x.message_ids.includes(msg.id))) {
    if (v.kind === "ranking") {
      out.push(`You ranked this #${v.message_ids.indexOf(msg.id) + 1} of ${v.message_ids.length}`);
      continue;
    }
    const other = candLabel(turn, v.message_ids.find((id) => id !== msg.id));
    const mine = v.message_ids.indexOf(msg.id) === 0 ? "a" : "b";
    if (v.choice === "tie") out.push(`You judged this a tie with ${other}`);
    else if (v.choice === "both_bad") out.push(`You judged this and ${other} both bad`);
    else if (v.choice === mine) out.push(`You preferred this over ${other}`);
    else out.push(`You preferred ${other} over this`);
  }
  return out;
}
