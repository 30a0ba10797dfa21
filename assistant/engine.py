"""The generation engine: one shared base model, many per-user LoRA adapters.

Every row (one candidate of one request) is decoded in one running batch on one dedicated
generation thread, by a decode loop of our own rather than `model.generate`:

- **Continuous batching.** Rows join the batch at token boundaries and leave it when they end
  (stop string, EOS, their own max_tokens, cancel): a new request is prefilled (its prompt's
  KV computed, one row per request, repeated for its n candidates) and merged into the
  running KV cache, so its first token does not wait for a long batch to finish, and a
  finished row's KV is dropped at once (columns that only padding uses are cut off). The
  cache is left-padded with per-row positions and an attention mask, as `generate` does.
  `continuous=False` keeps the old static behaviour (a batch admits no one until all its
  rows end; finished rows are still computed) for the A/B in bench/serving.py.
- **Fused multi-LoRA** (assistant/multi_lora.py): each row goes through its own adapter in
  one gathered matmul per projection, however many adapters share the batch.
- **Per-row sampling** (assistant/sampling.py): own temperature, top_p, penalties and seed;
  a seeded row draws from its own generator, so its answer does not depend on the batch.
- **Prefix reuse**: the KV of a finished row is kept (LRU, bounded in tokens) and a later
  prompt of the same user on the same adapter that starts with the same tokens (the next
  turn of a chat) prefills only what is new. The chat template's own opening (its default
  system prompt, 23 of the 38 tokens of a one-line question) is public text: its KV is
  computed once per adapter and every prompt that starts with it prefills only the rest.

Under load a new request's first token waits almost entirely for free rows (bench/serving.py
reports the breakdown: time queued, in ms and in decode steps, then the prefill), so what
shortens it is a cheaper step: sampling finds each row's nucleus among its top candidates
rather than sorting the vocabulary (67 -> 8 ms CPU per step of 8 rows), and the shared
template head cut a one-line question's prefill from 290 to 203 ms CPU.

Prompts are rendered (chat template, oldest turns dropped to fit) by `submit` on the
caller's thread - `generate`/`stream` call it from a small render pool, off both the event
loop and the generation thread - so a huge history cannot stall others' tokens.

Measured by bench/serving.py (real base, 1 torch thread, 8 rows x 64 tokens, one run on a
2-core machine shared with other jobs, so per CPU second): the base batch made 22.6 tokens
per CPU second, 8 rows on 8 different adapters 23.0 (1.02x; PEFT's per-adapter loop gave
0.51x), 8 rows on one adapter 21.9 (0.97x), one row at a time 7.2. Continuous against
static batching under 16 simulated users: see README "Benchmarks".

Adapters are read from disk and checked by `submit` too; installing one into the fused
stacks, eviction, and anything else that touches the model (`call`,
`forget_user`), run on the generation thread between two decode steps. A request stays on
the adapter version it started with; a newer version of the same user waits until the older
one's rows have ended, then replaces it in memory.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin

from adapters.decoding import BASE, eos_ids
from assistant.multi_lora import MultiLora, Prepared
from assistant.sampling import RowSampling, RowSettings, row_seed
from assistant.steer import Steering, opening_ids
from feedback_store.errors import ModelError

T = TypeVar("T")


@dataclass(frozen=True)
class AdapterRef:
    """One user's adapter version on disk."""

    user_id: int
    version: int
    path: Path

    @property
    def name(self) -> str:
        return f"u{self.user_id}v{self.version}"


@dataclass
class GenRequest:
    messages: list[dict]            # chat history, oldest first, ending with a user turn
    n: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    adapter: AdapterRef | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None         # same seed and settings -> same answers (best effort)
    # Whose conversation this is (a user id). A finished answer's KV is reused only for the
    # same owner's later prompts, so prefix reuse never crosses users (not even as timing);
    # None = never reused.
    owner: int | None = None
    # Steering (assistant/steer.py; explore's style arms): the answer starts with `opening`,
    # which the model continues, and `closing` is appended where the answer would end.
    opening: str = ""
    closing: str = ""

    def row(self, candidate: int) -> RowSettings:
        """How candidate number `candidate` of this request is sampled."""
        seed = None if self.seed is None else row_seed(self.seed, candidate)
        return RowSettings(self.temperature, self.top_p, self.frequency_penalty,
                           self.presence_penalty, seed)


@dataclass
class Candidate:
    index: int
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_ms: float | None = None
    total_ms: float | None = None


@dataclass
class GenResult:
    candidates: list[Candidate]
    prompt_tokens: int
    adapter: AdapterRef | None
    # Where the first token's wait went: ms from submission until the request joined the
    # batch (its prompt rendered, then queued for free rows), and how many decode steps of
    # the running batch went by while it was queued (a measure of queueing that does not
    # depend on how fast this machine is, so rendering is left out of it). Its prefill came
    # after; None for results made elsewhere.
    queued_ms: float | None = None
    queued_steps: int | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of text newly generated for candidate `index`."""

    index: int
    text: str


class _Tracker:
    """One request's candidates: decodes new tokens, emits deltas, applies stop strings."""

    def __init__(self, engine: Engine, req: GenRequest, started: float,
                 emit: Callable[[Delta], None]) -> None:
        self.tok = engine.tokenizer
        self.eos = set(engine.eos_ids)
        self.req, self.started, self.emit = req, started, emit
        self.cands = [Candidate(index=i) for i in range(req.n)]
        self.steer = Steering(self.tok, req.opening, req.closing, req.max_tokens, self.eos)

    def step(self, cand: Candidate, token: int) -> int:
        """Take the row's next token (a closing's token instead, when steered) and return
        the token taken; may finish the candidate."""
        token = self.steer.take(cand.index, token, cand.tokens)
        elapsed = (time.perf_counter() - self.started) * 1000
        if cand.first_token_ms is None:
            cand.first_token_ms = elapsed
        if token in self.eos:
            self.finish(cand, "stop", elapsed)
            return token
        cand.tokens.append(token)
        text = self.tok.decode(cand.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):      # else a multi-byte character is incomplete
            text, stopped = _apply_stop(text, self.req.stop)
            if stopped:
                self._emit_upto(cand, self.steer.opening + text)
                cand.finish_reason, cand.total_ms = "stop", elapsed
                return token
            # Hold back a tail that may yet become a stop string, so it is never streamed.
            held = len(text) - _stop_prefix_len(text, self.req.stop)
            self._emit_upto(cand, self.steer.opening + text[:held])
        if len(cand.tokens) >= self.steer.budget:
            self.finish(cand, "length", elapsed)
        return token

    def _emit_upto(self, cand: Candidate, text: str) -> None:
        if len(text) > len(cand.text):
            self.emit(Delta(cand.index, text[len(cand.text):]))
            cand.text = text

    def finish(self, cand: Candidate, reason: str, elapsed: float | None = None) -> None:
        """End a candidate that did not hit a stop string: flush any held-back text."""
        if elapsed is None:
            elapsed = (time.perf_counter() - self.started) * 1000
        text = self.tok.decode(cand.tokens, skip_special_tokens=True).rstrip("\ufffd")
        self._emit_upto(cand, self.steer.opening + text)
        cand.finish_reason, cand.total_ms = reason, elapsed


@dataclass(eq=False)
class _Job:
    """A request waiting for (or in) the batch, with its prompt already rendered."""

    req: GenRequest
    emit: Callable[[Delta], None]
    cancel: threading.Event
    prompt: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)
    tracker: _Tracker = field(init=False)     # set by Engine.submit
    open_rows: int = 0
    prepared: Prepared | None = None     # its adapter, read from disk at submit if not loaded
    submitted_step: int = 0              # the engine's decode steps so far, when queued
    admitted: float | None = None        # when it joined the batch (perf_counter)
    admitted_step: int = 0


@dataclass(eq=False)
class _Row:
    """One candidate in the running batch."""

    job: _Job
    cand: Candidate
    slot: int                       # the adapter slot it is routed through (0 = base)
    adapter: str                    # the adapter's name, or BASE
    settings: RowSettings
    generator: torch.Generator | None
    length: int                     # tokens of this row in the KV cache (its next position)
    token: int = 0                  # the sampled token not yet in the cache
    done: bool = False


@dataclass
class _Prefix:
    """A finished row's KV, kept for a later prompt that starts with the same tokens."""

    owner: int
    tokens: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]     # per layer (1, heads, len, dim)


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the start of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-k:]):
                best = k
                break
    return best


def _apply_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Engine:
    """Owns the model; generates on its own thread; keeps an LRU of loaded adapters."""

    def __init__(self, model, tokenizer, base_id: str, *, context_tokens: int = 2048,
                 cache_size: int = 16, max_batch_rows: int = 8, continuous: bool = True,
                 prefix_cache_tokens: int = 8192, render_threads: int = 2) -> None:
        self.base_model = model
        self.model = model              # the plain base: adapters are hooks, active only in a batch
        self.tokenizer = tokenizer
        self.base_id = base_id
        self.context_tokens = context_tokens
        self.cache_size = cache_size
        self.max_batch_rows = max_batch_rows
        self.continuous = continuous
        self.prefix_cache_tokens = prefix_cache_tokens
        self.lora = MultiLora(model, capacity=cache_size)
        self.loaded: OrderedDict[str, AdapterRef] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "batches": 0, "rows": 0,
                      "prefix_hits": 0, "prefix_tokens": 0, "head_hits": 0, "steps": 0}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._render = ThreadPoolExecutor(render_threads, thread_name_prefix="render")
        self._pending: deque[_Job] = deque()
        self._pending_lock = threading.Lock()
        self._controls: deque[tuple[Callable[[], object], Future]] = deque()
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None        # (rows, cache length) 1 = real token
        self._prefixes: OrderedDict[tuple[str, int], _Prefix] = OrderedDict()
        self._prefix_ids = 0
        self._head = self._template_head()
        self._heads: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}   # adapter -> KV
        self._pinned: set[str] = set()
        self.device = next(model.parameters()).device
        self.eos_ids = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    # ---- prompt rendering -------------------------------------------------------------
    def render(self, messages: list[dict], max_new: int) -> list[int]:
        """Chat-template token ids, dropping the oldest turns to fit the context budget.

        A leading system message is kept; turns are dropped two at a time (one exchange)
        while more than two remain, then one; the last (user) turn is always kept, cut from
        its start if it alone is too long. Linear in the history: one render and one
        tokenization of the whole history locate every turn's tokens, which gives the number
        of turns to drop; a render of the kept turns then confirms it (a few tokens may
        differ at the cut), usually once.
        """
        budget = max(16, self.context_tokens - max_new)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        text = self._text(system + turns)
        ids = self._encode(text)
        if len(ids) <= budget or len(turns) <= 1:
            return ids[-budget:] if len(ids) > budget else ids
        drops = _drop_schedule(len(turns))
        sizes = self._turn_sizes(text, turns, len(ids))
        j = next((j for j, d in enumerate(drops)
                  if sizes is not None and len(ids) - sizes[d] <= budget), 1)
        kept = {}

        def fits(j: int) -> bool:
            kept[j] = self._template(system + turns[drops[j]:])
            return len(kept[j]) <= budget

        while j < len(drops) - 1 and not fits(j):
            j += 1
        while j > 1 and fits(j - 1):             # the estimate overshot: keep the most turns
            j -= 1
        ids = kept[j] if j in kept else self._template(system + turns[drops[j]:])
        return ids[-budget:] if len(ids) > budget else ids

    def _turn_sizes(self, text: str, turns: list[dict], total: int) -> list[int] | None:
        """sizes[d]: tokens of `text` taken by turns [0, d), from one tokenization with
        offsets (where each turn's content starts); None if a content is not found."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [start for start, _ in enc["offset_mapping"]]
        cursor, marks = 0, []
        for turn in turns:
            content = turn.get("content") or ""
            at = text.find(content, cursor) if isinstance(content, str) else -1
            if at < 0:
                return None
            marks.append(bisect.bisect_left(starts, at))
            cursor = at + len(content)
        marks.append(total)
        return [mark - marks[0] for mark in marks]

    def _text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _template(self, messages: list[dict]) -> list[int]:
        return self._encode(self._text(messages))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- adapters (generation thread) ---------------------------------------------------
    def _activate(self, ref: AdapterRef | None, prepared: Prepared | None = None) -> int:
        """Make sure the adapter is loaded (from `prepared`, its weights already read off
        this thread, when given); return the slot its rows are routed through."""
        if ref is None:
            return 0
        if ref.name in self.loaded:
            self.loaded.move_to_end(ref.name)
            self.stats["hits"] += 1
            return self.lora.slots[ref.name]
        self.stats["misses"] += 1
        in_use = {row.adapter for row in self._rows} | self._pinned
        self._evict_older_versions(ref, in_use)
        for name in list(self.loaded):
            if len(self.loaded) < self.cache_size:
                break
            if name not in in_use:
                self._unload(name)
        slot = self.lora.install(ref.name, prepared or self.lora.prepare(ref.name, ref.path))
        self.loaded[ref.name] = ref
        return slot

    def _unload(self, name: str) -> None:
        self.lora.unload(name)
        del self.loaded[name]
        self._drop_prefixes(name)
        self._heads.pop(name, None)
        self.stats["evictions"] += 1

    def _evict_older_versions(self, ref: AdapterRef, in_use: set[str]) -> None:
        """A promoted version replaces the user's older ones in memory."""
        for name, other in list(self.loaded.items()):
            if other.user_id == ref.user_id and other.version != ref.version \
                    and name not in in_use:
                self._unload(name)

    def forget_user(self, user_id: int) -> None:
        """Drop a deleted user's adapters and kept KV from memory; their running answers
        end at once as cancelled (runs on the generation thread, between two tokens)."""
        def drop() -> None:
            names = {n for n, ref in self.loaded.items() if ref.user_id == user_id}
            for row in self._rows:
                if (row.adapter in names or row.job.req.owner == user_id) and not row.done:
                    row.job.cancel.set()
                    row.job.tracker.finish(row.cand, "cancelled")
                    row.done = True
            self._compact_all()
            for name in names:
                self._unload(name)
            for key in [k for k, p in self._prefixes.items() if p.owner == user_id]:
                del self._prefixes[key]
        self._control(drop).result()

    def _compact_all(self) -> None:
        """Retire finished rows now, even in static mode."""
        continuous, self.continuous = self.continuous, True
        try:
            self._retire()
        finally:
            self.continuous = continuous

    # ---- submission -------------------------------------------------------------------
    def generate_sync(self, req: GenRequest, emit: Callable[[Delta], None] = lambda d: None,
                      cancel: threading.Event | None = None) -> GenResult:
        """Generate one request, waiting for its result (tests, benchmarks, the CLI)."""
        return self.submit(req, emit, cancel).result()

    def submit(self, req: GenRequest, emit: Callable[[Delta], None] = lambda d: None,
               cancel: threading.Event | None = None) -> Future:
        """Render the prompt (and read the adapter from disk if it is not loaded) on the
        calling thread and queue the request for the running batch; the Future resolves to
        its GenResult, or fails with ModelError if the adapter cannot be served."""
        job = _Job(req, emit, cancel or threading.Event())
        try:
            job.tracker = _Tracker(self, req, job.submitted, emit)
            job.prompt = (self.render(req.messages, req.max_tokens)
                          + opening_ids(self.tokenizer, req.opening))
            if req.adapter is not None and req.adapter.name not in self.loaded:
                job.prepared = self.lora.prepare(req.adapter.name, req.adapter.path)
        except Exception as exc:
            job.future.set_exception(exc)
            return job.future
        with self._pending_lock:
            # Steps are counted from here, not from the call: rendering runs beside the
            # decode loop, and the steps it overlaps depend on this machine's speed.
            job.submitted_step = self.stats["steps"]
            self._pending.append(job)
        # One loop task per job: a running loop takes every job that fits, so later tasks
        # may find nothing to do, but no job can be left waiting without a task behind it.
        self._thread.submit(self._serve)
        return job.future

    def _control(self, fn: Callable[[], T]) -> Future:
        """Run fn on the generation thread at the next token boundary (or at once if idle)."""
        future: Future = Future()
        with self._pending_lock:
            self._controls.append((fn, future))
        self._thread.submit(self._run_controls)
        return future

    def _run_controls(self) -> None:
        while True:
            with self._pending_lock:
                if not self._controls:
                    return
                fn, future = self._controls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    # ---- the decode loop (generation thread) ------------------------------------------
    def _serve(self) -> None:
        """Decode until no row is running and no job is waiting."""
        while True:
            self._run_controls()
            if self.continuous or not self._rows:
                self._admit()
            if not self._rows:
                with self._pending_lock:
                    if not self._pending:
                        return
                continue
            try:
                self._step()
            except Exception as exc:         # a broken forward fails its batch, not the server
                self._fail_all(exc)

    def _admit(self) -> None:
        jobs = self._take()
        rows: list[_Row] = []
        self._pinned = set()             # adapters of jobs joining now: not to be evicted
        for job in jobs:
            try:
                slot = self._activate(job.req.adapter, job.prepared)
                job.prepared = None
            except Exception as exc:        # this request's adapter only; the rest go on
                job.future.set_exception(exc)
                continue
            job.open_rows = job.req.n
            job.admitted, job.admitted_step = time.perf_counter(), self.stats["steps"]
            name = job.req.adapter.name if job.req.adapter else BASE
            self._pinned.add(name)
            for k, cand in enumerate(job.tracker.cands):
                settings = job.req.row(k)
                gen = None if settings.seed is None else \
                    torch.Generator().manual_seed(settings.seed)
                rows.append(_Row(job, cand, slot, name, settings, gen, len(job.prompt)))
        if not rows:
            return
        try:
            self._prefill(rows)
        except Exception as exc:
            for job in {id(r.job): r.job for r in rows}.values():
                job.future.set_exception(ModelError(f"generation failed: {exc}"))
            return
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self._retire()

    def _take(self) -> list[_Job]:
        """Waiting jobs that join the batch now, oldest first: up to max_batch_rows rows in
        all (a lone job always fits). Two versions of one user's adapter never share the
        batch (loading the newer evicts the older), nor do more adapters than the cache
        holds; a job that cannot join yet keeps its place in the queue."""
        rows = len(self._rows)
        versions = {r.job.req.adapter.user_id: r.job.req.adapter.version
                    for r in self._rows if r.job.req.adapter is not None}
        taken: list[_Job] = []
        cancelled: list[_Job] = []
        with self._pending_lock:
            waiting, self._pending = self._pending, deque()
            for job in waiting:
                ref = job.req.adapter
                fits = rows + job.req.n <= self.max_batch_rows or (rows == 0 and not taken)
                clash = ref is not None and (
                    versions.get(ref.user_id, ref.version) != ref.version
                    or (ref.user_id not in versions and len(versions) >= self.cache_size))
                if job.cancel.is_set():            # given up before it started
                    cancelled.append(job)
                    continue
                if not fits or clash:
                    self._pending.append(job)
                    continue
                taken.append(job)
                rows += job.req.n
                if ref is not None:
                    versions[ref.user_id] = ref.version
        for job in cancelled:
            for cand in job.tracker.cands:
                cand.finish_reason = "cancelled"
            self._resolve(job)
        return taken

    def _prefill(self, rows: list[_Row]) -> None:
        """Compute the new rows' prompt KV, merge it into the batch, sample their first token.

        One prefill row per request (its n candidates share the prompt: the KV is repeated);
        a prompt that extends a kept prefix prefills only its new tokens.
        """
        jobs = list({id(r.job): r.job for r in rows}.values())
        parts: list[_Prefilled] = []
        fresh: list[_Job] = []
        headed: list[_Job] = []
        for job in jobs:
            hit = self._prefix_lookup(job)
            if hit is None:
                (headed if self._starts_with_head(job) else fresh).append(job)
                continue
            parts.append(self._prefill_from_prefix(job, *hit))
        for group, prefill in ((headed, self._prefill_on_head), (fresh, self._prefill_fresh)):
            if group:
                parts.append(prefill(group))
        order = [j for j in jobs if j not in fresh and j not in headed] + headed + fresh
        k_all, v_all, mask = _cat_padded([(p.keys, p.values) for p in parts],
                                         [p.mask for p in parts])
        last = torch.cat([p.logits for p in parts])             # (jobs, V)
        expand = torch.tensor([i for i, job in enumerate(order) for _ in range(job.req.n)],
                              device=self.device)
        by_job = {id(job): [r for r in rows if r.job is job] for job in order}
        rows = [r for job in order for r in by_job[id(job)]]
        self._merge([k.index_select(0, expand) for k in k_all],
                    [v.index_select(0, expand) for v in v_all], mask.index_select(0, expand))
        self._rows.extend(rows)
        self._sample(rows, last.index_select(0, expand))

    def _prefill_fresh(self, jobs: list[_Job]) -> _Prefilled:
        """Left-padded prefill of whole prompts."""
        width = max(len(j.prompt) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt):] = torch.tensor(job.prompt)
            mask[i, width - len(job.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        slots = [self.lora.slots.get(j.req.adapter.name, 0) if j.req.adapter else 0
                 for j in jobs]
        cache = DynamicCache()
        with torch.inference_mode(), self.lora.route(slots):
            out = self.base_model(input_ids=ids.to(self.device),
                                  attention_mask=mask.to(self.device),
                                  position_ids=positions.to(self.device), past_key_values=cache,
                                  use_cache=True, logits_to_keep=1)
        return _Prefilled(*_kv(cache), mask.to(self.device), out.logits[:, -1].float())

    def _prefill_on_head(self, jobs: list[_Job]) -> _Prefilled:
        """Prefill prompts that open with the template's head on top of the head's KV under
        each job's adapter (computed once per adapter): only the rest of each prompt is new.
        Each row is [head][padding][rest]: the padding sits between the two and is masked."""
        h = len(self._head)
        heads = [self._head_kv(job.req.adapter) for job in jobs]
        cache = DynamicCache()
        for i in range(len(heads[0])):
            cache.update(torch.cat([kv[i][0] for kv in heads]),
                         torch.cat([kv[i][1] for kv in heads]), i)
        rests = [job.prompt[h:] for job in jobs]
        width = max(len(r) for r in rests)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        new = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, rest in enumerate(rests):
            ids[i, width - len(rest):] = torch.tensor(rest)
            new[i, width - len(rest):] = 1
        positions = h + (new.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones(len(jobs), h, dtype=torch.long), new], 1).to(self.device)
        with torch.inference_mode(), self.lora.route([self._slot(j.req.adapter) for j in jobs]):
            out = self.base_model(input_ids=ids.to(self.device), attention_mask=mask,
                                  position_ids=positions.to(self.device), past_key_values=cache,
                                  use_cache=True, logits_to_keep=1)
        self.stats["head_hits"] += len(jobs)
        return _Prefilled(*_kv(cache), mask, out.logits[:, -1].float())

    def _prefill_from_prefix(self, job: _Job, prefix: _Prefix, reuse: int) -> _Prefilled:
        """Prefill only prompt[reuse:] on top of a kept prefix's first `reuse` tokens."""
        cache = DynamicCache()
        for i, (k, v) in enumerate(prefix.kv):
            cache.update(k[:, :, :reuse], v[:, :, :reuse], i)
        rest = job.prompt[reuse:]
        slot = self.lora.slots.get(job.req.adapter.name, 0) if job.req.adapter else 0
        positions = torch.arange(reuse, len(job.prompt))[None]
        with torch.inference_mode(), self.lora.route([slot]):
            out = self.base_model(input_ids=torch.tensor([rest], device=self.device),
                                  position_ids=positions.to(self.device),
                                  attention_mask=torch.ones(1, len(job.prompt), dtype=torch.long,
                                                            device=self.device),
                                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.stats["prefix_hits"] += 1
        self.stats["prefix_tokens"] += reuse
        mask = torch.ones(1, len(job.prompt), dtype=torch.long, device=self.device)
        return _Prefilled(*_kv(cache), mask, out.logits[:, -1].float())

    def _merge(self, keys: list[torch.Tensor], values: list[torch.Tensor],
               mask: torch.Tensor) -> None:
        """Append rows (keys/values per layer (n, heads, len, dim), mask (n, len)) to the
        running batch, left-padding whichever side is shorter."""
        if self._cache is None or self._mask is None or not self._rows:
            self._cache = DynamicCache()
            for i, (k, v) in enumerate(zip(keys, values, strict=True)):
                self._cache.update(k, v, i)
            self._mask = mask
            return
        k_all, v_all, self._mask = _cat_padded([_kv(self._cache), (keys, values)],
                                               [self._mask, mask])
        _replace_kv(self._cache, k_all, v_all)

    def _step(self) -> None:
        """One token for every row of the batch."""
        rows = self._rows
        ids = torch.tensor([[r.token] for r in rows], device=self.device)
        positions = torch.tensor([[r.length] for r in rows], device=self.device)
        cache, mask = self._batch()
        self._mask = F.pad(mask, (0, 1), value=1)
        with torch.inference_mode(), self.lora.route([r.slot for r in rows]):
            out = self.base_model(input_ids=ids, attention_mask=self._mask,
                                  position_ids=positions, past_key_values=cache,
                                  use_cache=True)
        for r in rows:
            r.length += 1
        self.stats["steps"] += 1
        self._sample(rows, out.logits[:, -1].float())
        self._retire()

    def _hold_ends(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """logits (rows, V), a copy, with end of sequence masked for the rows whose steering
        holds it back (a forced opening not yet continued: assistant/steer.py)."""
        held = [i for i, r in enumerate(rows)
                if r.job.tracker.steer.holds_end(len(r.cand.tokens))]
        if held:
            logits[torch.tensor(held)[:, None], torch.tensor(self.eos_ids)] = float("-inf")
        return logits

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token from logits (rows, V) and hand it to its tracker."""
        live = [i for i, r in enumerate(rows) if not r.done]
        if not live:
            return
        sub = [rows[i] for i in live]
        sampler = RowSampling([r.settings for r in sub], 0,
                              generators=[r.generator for r in sub])
        tokens = sampler.choose([r.cand.tokens for r in sub], self._hold_ends(sub, logits[live]))
        for r, token in zip(sub, tokens, strict=True):
            r.token = r.job.tracker.step(r.cand, token)
            if r.cand.finish_reason is None and r.job.cancel.is_set():
                r.job.tracker.finish(r.cand, "cancelled")
            if r.cand.finish_reason is not None:
                r.done = True
        for job in {id(r.job): r.job for r in sub}.values():
            if job.cancel.is_set():
                for r in rows:
                    if r.job is job and not r.done:
                        job.tracker.finish(r.cand, "cancelled")
                        r.done = True

    def _retire(self) -> None:
        """Drop finished rows (static mode: once all are done), then resolve the requests
        whose rows have all ended."""
        finished = []
        for r in self._rows:
            if r.done and r.job.open_rows > 0 and all(
                    o.done for o in self._rows if o.job is r.job):
                r.job.open_rows = 0
                finished.append(r.job)
        if self.continuous or all(r.done for r in self._rows):
            self._compact()
        for job in finished:
            self._resolve(job)

    def _compact(self) -> None:
        """Remove finished rows from the batch and their KV from the cache; cut the columns
        that only padding uses any more."""
        done = [i for i, r in enumerate(self._rows) if r.done]
        if not done:
            return
        for i in done:
            self._keep_prefix(i)
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        cache, mask = self._batch()
        index = torch.tensor(keep, device=self.device)
        mask = mask.index_select(0, index)
        first = int((mask.sum(0) > 0).nonzero()[0])
        self._mask = mask[:, first:]
        keys, values = _kv(cache)
        _replace_kv(cache, [k.index_select(0, index)[:, :, first:] for k in keys],
                    [v.index_select(0, index)[:, :, first:] for v in values])

    def _resolve(self, job: _Job) -> None:
        for cand in job.tracker.cands:
            if cand.finish_reason is None:
                job.tracker.finish(cand, "length")
        if not job.future.done():
            queued = None if job.admitted is None else (job.admitted - job.submitted) * 1000
            steps = None if job.admitted is None else job.admitted_step - job.submitted_step
            job.future.set_result(GenResult(job.tracker.cands, len(job.prompt), job.req.adapter,
                                            queued, steps))

    def _fail_all(self, exc: Exception) -> None:
        error = ModelError(f"generation failed: {exc}")
        for job in {id(r.job): r.job for r in self._rows}.values():
            if not job.future.done():
                job.future.set_exception(error)
        self._rows, self._cache, self._mask = [], None, None

    def _batch(self) -> tuple[DynamicCache, torch.Tensor]:
        """The running batch's KV cache and its mask (rows, cache length): set while rows
        run, None together with them."""
        if self._cache is None or self._mask is None:
            raise ModelError("no running batch")
        return self._cache, self._mask

    # ---- prefix reuse -------------------------------------------------------------------
    def _keep_prefix(self, i: int) -> None:
        """Keep finished row i's KV (prompt and answer tokens in the cache) for reuse."""
        row = self._rows[i]
        if self.prefix_cache_tokens <= 0 or self._cache is None or self._mask is None \
                or row.job.req.owner is None:
            return
        tokens = row.job.prompt + row.cand.tokens
        length = min(row.length, len(tokens))
        if length < 2 or length > self.prefix_cache_tokens:
            return
        real = self._mask[i].nonzero()[:, 0]
        cols = real[:length]
        kv = [(k[i:i + 1, :, cols].clone(), v[i:i + 1, :, cols].clone())
              for k, v in zip(*_kv(self._cache), strict=True)]
        self._prefix_ids += 1
        self._prefixes[(row.adapter, self._prefix_ids)] = _Prefix(row.job.req.owner,
                                                                  tokens[:length], kv)
        total = sum(len(p.tokens) for p in self._prefixes.values())
        while total > self.prefix_cache_tokens:
            _, old = self._prefixes.popitem(last=False)
            total -= len(old.tokens)

    def _prefix_lookup(self, job: _Job) -> tuple[_Prefix, int] | None:
        """The kept prefix on the job's adapter sharing the most leading prompt tokens (at
        least MIN_PREFIX, and leaving one token to prefill), and how many it shares."""
        if self.prefix_cache_tokens <= 0 or not self._prefixes or job.req.owner is None:
            return None
        name = job.req.adapter.name if job.req.adapter else BASE
        best_key, best_len = None, MIN_PREFIX - 1
        for key, prefix in self._prefixes.items():
            if key[0] != name or prefix.owner != job.req.owner:
                continue
            shared = min(_common_prefix(prefix.tokens, job.prompt), len(job.prompt) - 1)
            if shared > best_len:
                best_key, best_len = key, shared
        if best_key is None:
            return None
        self._prefixes.move_to_end(best_key)
        return self._prefixes[best_key], best_len

    # ---- the template's head ------------------------------------------------------------
    def _template_head(self) -> list[int]:
        """The tokens every prompt without a system message of its own starts with (the
        chat template's default system prompt and the user turn's opening: 27 of the 38
        tokens of a one-line question for SmolLM2), or [] if that is too short to matter.
        They are public template text, never a user's, so their KV may be shared by every
        request on the same adapter whoever sends it."""
        try:
            one, two = (self._template([{"role": "user", "content": c}]) for c in ("a", "b"))
        except Exception:          # a tokenizer without a chat template: nothing to share
            return []
        head = one[:_common_prefix(one, two) - 1]      # the last may merge with the content
        return head if len(head) >= MIN_PREFIX else []

    def _starts_with_head(self, job: _Job) -> bool:
        h = len(self._head)
        return h > 0 and len(job.prompt) > h and job.prompt[:h] == self._head

    def _slot(self, ref: AdapterRef | None) -> int:
        return self.lora.slots.get(ref.name, 0) if ref else 0

    def _head_kv(self, ref: AdapterRef | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The head's KV under an adapter (per layer (1, heads, len, dim)), computed on
        first use and kept until the adapter is unloaded (the base's for ever)."""
        name = ref.name if ref else BASE
        if name not in self._heads:
            cache = DynamicCache()
            with torch.inference_mode(), self.lora.route([self._slot(ref)]):
                self.base_model(input_ids=torch.tensor([self._head], device=self.device),
                                past_key_values=cache, use_cache=True, logits_to_keep=1)
            self._heads[name] = list(zip(*_kv(cache), strict=True))
        return self._heads[name]

    def _drop_prefixes(self, name: str) -> None:
        for key in [k for k in self._prefixes if k[0] == name]:
            del self._prefixes[key]

    # ---- async API ----------------------------------------------------------------------
    async def _submit_async(self, req: GenRequest, emit: Callable[[Delta], None],
                            cancel: threading.Event) -> Future:
        """`submit` on the render pool: rendering never runs on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._render, lambda: self.submit(req, emit, cancel))

    async def generate(self, req: GenRequest) -> GenResult:
        future = await self._submit_async(req, lambda d: None, threading.Event())
        return await asyncio.wrap_future(future)

    async def stream(self, req: GenRequest,
                     on_abandon: Callable[[GenResult], Coroutine[Any, Any, None]] | None = None,
                     ) -> AsyncGenerator[Delta | GenResult, None]:
        """Yield Deltas as tokens arrive, then the GenResult. Closing the iterator early
        (a client that went away, a stop button) cancels generation at the next token;
        the partial result then goes to `on_abandon`, so nothing generated is lost."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        future = asyncio.wrap_future(await self._submit_async(req, emit, cancel))
        future.add_done_callback(lambda _: queue.put_nowait(None))
        finished = False
        try:
            while (item := await queue.get()) is not None:
                yield item
            result = await future
            finished = True
            yield result
        finally:
            cancel.set()
            if not finished and on_abandon is not None:
                future.add_done_callback(
                    lambda f: f.exception() or loop.create_task(on_abandon(f.result())))

    async def call(self, fn: Callable[..., T], *args) -> T:
        """Run fn on the generation thread between two decode steps (it owns the model)."""
        return await asyncio.wrap_future(self._control(lambda: fn(*args)))

    def close(self) -> None:
        self._render.shutdown(wait=True, cancel_futures=True)
        self._thread.shutdown(wait=True, cancel_futures=True)
        self.lora.close()

    def health(self) -> dict:
        return {"loaded": list(self.loaded), "capacity": self.cache_size,
                "max_batch_rows": self.max_batch_rows, "running_rows": len(self._rows),
                "continuous": self.continuous, **self.stats}


MIN_PREFIX = 16     # shorter shared prefixes are not worth a separate prefill


def _drop_schedule(n: int) -> list[int]:
    """How many leading turns each render attempt drops: 0, 2, 4, ... while more than two
    remain, then one more, down to the last turn."""
    drops = [0]
    while n - drops[-1] > 1:
        drops.append(drops[-1] + (2 if n - drops[-1] > 2 else 1))
    return drops


class _Prefilled(NamedTuple):
    """New rows' prompt KV per layer (rows, heads, len, dim), their mask (rows, len) and
    their last position's logits (rows, V)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    logits: torch.Tensor


def _attention_layers(cache: DynamicCache) -> list[CacheLayerMixin]:
    """The cache's layers, each holding keys and values (every layer of a decoder-only
    attention model such as SmolLM2; transformers also knows linear-attention layers)."""
    layers = [layer for layer in cache.layers if isinstance(layer, CacheLayerMixin)]
    if len(layers) != len(cache.layers):
        raise ModelError("the model's KV cache has layers without keys and values")
    return layers


def _kv(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values per layer, each (rows, heads, len, dim), of a filled cache."""
    keys, values = [], []
    for layer in _attention_layers(cache):
        if layer.keys is None or layer.values is None:
            raise ModelError("the KV cache has an empty layer")
        keys.append(layer.keys)
        values.append(layer.values)
    return keys, values


def _replace_kv(cache: DynamicCache, keys: list[torch.Tensor],
                values: list[torch.Tensor]) -> None:
    """Put new keys and values (per layer) in place of the cache's."""
    for layer, k, v in zip(_attention_layers(cache), keys, values, strict=True):
        layer.keys, layer.values = k, v


def _cat_padded(parts: list[tuple[list[torch.Tensor], list[torch.Tensor]]],
                masks: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                    torch.Tensor]:
    """Concatenate KV parts (per layer (n_i, heads, len_i, dim)) and masks (n_i, len_i) along
    the rows, left-padding each to the longest length (padding is masked out)."""
    width = max(m.shape[1] for m in masks)
    layers = len(parts[0][0])
    keys = [torch.cat([F.pad(p[0][i], (0, 0, width - m.shape[1], 0))
                       for p, m in zip(parts, masks, strict=True)]) for i in range(layers)]
    values = [torch.cat([F.pad(p[1][i], (0, 0, width - m.shape[1], 0))
                         for p, m in zip(parts, masks, strict=True)]) for i in range(layers)]
    mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in masks])
    return keys, values, mask
