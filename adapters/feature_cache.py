"""The two caches of frozen base-model features (computed by adapters/features.py).

- The store's `features` table, one row per (message_id, base_id + feature spec): the
  server and training compute a message's vector once per base.
- Append-only .npz shards on disk keyed by the rendered text, for offline evaluation
  (assistant/eval_reward.py, the safety eval and bench/) over data sets with no message ids.

Both are keyed by the feature spec too, so vectors of another layer/pool setting are never
mixed with the current ones.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from adapters import features
from adapters.features import Item
from feedback_store.clock import now

SHARD_ITEMS = 128   # items per disk shard: an interrupted run keeps what it computed


# ---- database cache: one row per (message_id, base_id) -------------------------------

def features_id(base_id: str) -> str:
    """The features table's base_id column: the base and the feature spec, so vectors of
    another layer/pool setting are never mixed with the current ones."""
    return f"{base_id}|{features.feature_spec()}"


def cached_features(db, message_ids: list[int], base_id: str) -> dict[int, np.ndarray]:
    """Stored vectors for these messages under this base and the current feature spec
    (missing ids are absent)."""
    if not message_ids:
        return {}
    base_id = features_id(base_id)
    marks = ",".join("?" for _ in message_ids)
    rows = db.execute(
        f"SELECT message_id, dim, vector FROM features WHERE base_id = ? "
        f"AND message_id IN ({marks})", [base_id, *message_ids]).fetchall()
    return {mid: np.frombuffer(blob, dtype=np.float32, count=dim).copy()
            for mid, dim, blob in rows}


def store_features(db, rows: dict[int, np.ndarray], base_id: str) -> None:
    """Insert or replace vectors (float32 bytes) for (message_id, base_id + spec)."""
    base_id = features_id(base_id)
    stamp = now()
    db["features"].upsert_all(
        [{"message_id": int(mid), "base_id": base_id, "dim": int(vec.size),
          "vector": np.asarray(vec, dtype=np.float32).tobytes(), "created_at": stamp}
         for mid, vec in rows.items()], pk=("message_id", "base_id"))


def ensure_features(db, model, tokenizer, base_id: str,
                    items_by_message_id: dict[int, Item]) -> dict[int, np.ndarray]:
    """Vectors for every message id, computing (and storing) only the missing ones."""
    ids = list(items_by_message_id)
    have = cached_features(db, ids, base_id)
    missing = [mid for mid in ids if mid not in have]
    if missing:
        X = features.compute_features(model, tokenizer, [items_by_message_id[m] for m in missing])
        fresh = dict(zip(missing, X, strict=True))
        store_features(db, fresh, base_id)
        have.update(fresh)
    return have


# ---- disk cache for offline evaluation: shards of (sha256 key -> vector) --------------

class DiskFeatureCache:
    """Append-only .npz shards under root/<base>/<spec hash>/, loaded whole at start."""

    def __init__(self, root: Path, base_id: str, spec: str) -> None:
        self.base_id, self.spec = base_id, spec
        tag = hashlib.sha256(spec.encode()).hexdigest()[:12]
        self.dir = Path(root) / base_id.replace("/", "_").replace("@", "-") / tag
        self.vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")):
            with np.load(shard) as data:
                self.vectors.update(zip(data["keys"].tolist(), data["x"], strict=True))

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.base_id}\0{self.spec}\0{text}".encode()).hexdigest()

    def put(self, keys: list[str], X: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{uuid.uuid4().hex}.tmp.npz"
        np.savez(tmp, keys=np.array(keys), x=X.astype(np.float32))
        tmp.rename(self.dir / f"{time.time_ns()}-{uuid.uuid4().hex[:6]}.npz")
        self.vectors.update(zip(keys, X, strict=True))


def disk_cached_features(model, tokenizer, base_id: str, items: list[Item], cache_dir: Path,
                         layers: Sequence[float] | None = None, max_tokens: int | None = None,
                         progress: Callable[[int, int], None] | None = None,
                         pools: Sequence[str] | None = None,
                         answer_tokens: int | None = None) -> np.ndarray:
    """compute_features through the disk cache: each rendered text is computed once.

    `model` may be a zero-argument loader, called only if some text is not cached yet (a
    fully cached re-run then needs just the tokenizer).
    """
    layers = features.FEATURE_LAYERS if layers is None else tuple(layers)
    pools = features.FEATURE_POOLS if pools is None else tuple(pools)
    if max_tokens is None:
        max_tokens, answer_tokens = features.FEATURE_MAX_TOKENS, features.FEATURE_ANSWER_TOKENS
    cache = DiskFeatureCache(cache_dir, base_id,
                             features.feature_spec(layers, max_tokens, pools, answer_tokens))
    keys = [cache.key(features.template_text(tokenizer, p, a)[1]) for p, a in items]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache.vectors}.items(),
                  key=lambda ki: ki[1])
    # Shards of SHARD_ITEMS items: an interrupted run keeps what it computed. Items arrive
    # in file order, so the answers to one prompt stay in the same shard.
    if todo and callable(model) and not hasattr(model, "config"):
        model = model()
    for start in range(0, len(todo), SHARD_ITEMS):
        part = todo[start:start + SHARD_ITEMS]
        X = features.compute_features(model, tokenizer, [items[i] for _, i in part],
                             max_tokens=max_tokens, layers=layers, pools=pools,
                             answer_tokens=answer_tokens)
        cache.put([k for k, _ in part], X)
        if progress:
            progress(start + len(part), len(todo))
    return np.stack([cache.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
