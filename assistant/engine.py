"""The generation engine: one shared base model, many per-user LoRA adapters.

All generation runs on one dedicated thread. That makes adapter loading safe (PEFT's adapter
set is global state on the model) and keeps a request on the adapter version it started with
even if a newer one is promoted meanwhile.

Requests that arrive while a batch is generating are decoded together in the next batch:
every candidate of every waiting request is one row (left-padded prompts), each row routed
through its own adapter with PEFT's `adapter_names=` and sampled with its own temperature,
top_p, penalties and seed (assistant/sampling.py). Decoding one token for 8 rows costs about
2.7x one row on this CPU (it is bound by reading the weights, not by arithmetic): measured
with 1 torch thread, 1 row gave 13.3 tokens/s, 4 rows 31.8, 8 rows 39.2 in all, so a busy
server answers about 3x more tokens per second. Rows end independently (stop string, EOS,
their own max_tokens, cancel); the batch ends when every row has.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from adapters.policy import eos_ids, left_pad
from assistant.sampling import RowSampling, RowSettings, row_seed
from feedback_store.errors import ModelError

T = TypeVar("T")
BASE = "__base__"   # PEFT's name for "no adapter" in a mixed batch


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


@dataclass(frozen=True)
class Delta:
    """A piece of text newly generated for candidate `index`."""

    index: int
    text: str


class _Tracker(StoppingCriteria):
    """Per-step hook: decodes new tokens, emits deltas, applies stop strings and cancel.

    Called by `generate` after each step with input_ids of shape (n, prompt_len + step);
    returns a bool tensor (n,) marking rows that are done.
    """

    def __init__(self, engine: Engine, req: GenRequest, prompt_len: int, started: float,
                 emit: Callable[[Delta], None], cancel: threading.Event) -> None:
        self.tok = engine.tokenizer
        self.eos = set(engine.eos_ids)
        self.req, self.prompt_len, self.started = req, prompt_len, started
        self.emit, self.cancel = emit, cancel
        self.cands = [Candidate(index=i) for i in range(req.n)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for cand, token in zip(self.cands, last, strict=True):
            if cand.finish_reason is None:
                self._step(cand, token)
        if self.cancel.is_set():
            for cand in self.cands:
                cand.finish_reason = cand.finish_reason or "cancelled"
        done = [c.finish_reason is not None for c in self.cands]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _step(self, cand: Candidate, token: int) -> None:
        elapsed = (time.perf_counter() - self.started) * 1000
        if cand.first_token_ms is None:
            cand.first_token_ms = elapsed
        if token in self.eos:
            self.finish(cand, "stop", elapsed)
            return
        cand.tokens.append(token)
        text = self.tok.decode(cand.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):      # else a multi-byte character is incomplete
            text, stopped = _apply_stop(text, self.req.stop)
            if stopped:
                self._emit_upto(cand, text)
                cand.finish_reason, cand.total_ms = "stop", elapsed
                return
            # Hold back a tail that may yet become a stop string, so it is never streamed.
            self._emit_upto(cand, text[:len(text) - _stop_prefix_len(text, self.req.stop)])
        if len(cand.tokens) >= self.req.max_tokens:   # a batch runs to its longest request
            self.finish(cand, "length", elapsed)

    def _emit_upto(self, cand: Candidate, text: str) -> None:
        if len(text) > len(cand.text):
            self.emit(Delta(cand.index, text[len(cand.text):]))
            cand.text = text

    def finish(self, cand: Candidate, reason: str, elapsed: float) -> None:
        """End a candidate that did not hit a stop string: flush any held-back text."""
        text = self.tok.decode(cand.tokens, skip_special_tokens=True).rstrip("\ufffd")
        self._emit_upto(cand, text)
        cand.finish_reason, cand.total_ms = reason, elapsed


class _BatchTracker(StoppingCriteria):
    """Splits a batch's rows into the requests they belong to: rows [offset, offset + n)."""

    def __init__(self, trackers: list[_Tracker]) -> None:
        self.trackers = trackers

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw) -> torch.Tensor:
        done, row = [], 0
        for tracker in self.trackers:
            n = len(tracker.cands)
            done.append(tracker(input_ids[row:row + n], scores))
            row += n
        return torch.cat(done)


@dataclass
class _Job:
    """A request waiting for (or in) a batch."""

    req: GenRequest
    emit: Callable[[Delta], None]
    cancel: threading.Event
    submitted: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


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


class Engine:
    """Owns the model; generates on its own thread; keeps an LRU of loaded adapters."""

    def __init__(self, model, tokenizer, base_id: str, *, context_tokens: int = 2048,
                 cache_size: int = 16, max_batch_rows: int = 8) -> None:
        self.base_model = model
        self.model = model              # becomes a PeftModel once an adapter is loaded
        self.tokenizer = tokenizer
        self.base_id = base_id
        self.context_tokens = context_tokens
        self.cache_size = cache_size
        self.loaded: OrderedDict[str, AdapterRef] = OrderedDict()
        self.max_batch_rows = max_batch_rows
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "batches": 0, "rows": 0}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._pending: deque[_Job] = deque()
        self._pending_lock = threading.Lock()
        self.eos_ids = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    # ---- prompt rendering -------------------------------------------------------------
    def render(self, messages: list[dict], max_new: int) -> list[int]:
        """Chat-template token ids, dropping the oldest turns to fit the context budget.

        A leading system message is kept; the last (user) turn is always kept, cut from
        its start if it alone is too long.
        """
        budget = max(16, self.context_tokens - max_new)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        while True:
            ids = self._template(system + turns)
            if len(ids) <= budget or len(turns) <= 1:
                return ids[-budget:] if len(ids) > budget else ids
            turns = turns[2:] if len(turns) > 2 else turns[1:]

    def _template(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- adapters ---------------------------------------------------------------------
    def _activate(self, ref: AdapterRef | None) -> str:
        """Make sure the adapter is loaded; return the name to route the batch through."""
        if ref is None:
            return BASE
        if ref.name in self.loaded:
            self.loaded.move_to_end(ref.name)
            self.stats["hits"] += 1
            return ref.name
        self.stats["misses"] += 1
        self._load(ref)
        self._evict_older_versions(ref)
        while len(self.loaded) > self.cache_size:
            self._unload(next(iter(self.loaded)))
        return ref.name

    def _load(self, ref: AdapterRef) -> None:
        from peft import PeftModel

        if not (ref.path / "adapter_config.json").exists():
            raise ModelError(f"adapter {ref.name} has no adapter_config.json at {ref.path}")
        try:
            if self.model is self.base_model:
                self.model = PeftModel.from_pretrained(self.base_model, str(ref.path),
                                                       adapter_name=ref.name)
            else:
                self.model.load_adapter(str(ref.path), adapter_name=ref.name)
        except Exception as exc:
            raise ModelError(f"could not load adapter {ref.name}: {exc}") from exc
        self.model.eval()
        self.loaded[ref.name] = ref

    def _unload(self, name: str) -> None:
        if len(self.loaded) > 1:
            self.model.delete_adapter(name)
        else:
            # PEFT cannot delete its last adapter: remove the LoRA layers altogether.
            self.model = self.model.unload()
            self.model = self.base_model
        del self.loaded[name]
        self.stats["evictions"] += 1

    def _evict_older_versions(self, ref: AdapterRef) -> None:
        """A promoted version replaces the user's older ones in memory."""
        for name, other in list(self.loaded.items()):
            if other.user_id == ref.user_id and other.version != ref.version:
                self._unload(name)

    def forget_user(self, user_id: int) -> None:
        """Drop a deleted user's adapters from memory (runs on the generation thread)."""
        def drop() -> None:
            for name, other in list(self.loaded.items()):
                if other.user_id == user_id:
                    self._unload(name)
        self._thread.submit(drop).result()

    # ---- generation -------------------------------------------------------------------
    def generate_sync(self, req: GenRequest, emit: Callable[[Delta], None] = lambda d: None,
                      cancel: threading.Event | None = None) -> GenResult:
        """Generate one request on the calling thread (tests, benchmarks, the CLI)."""
        job = _Job(req, emit, cancel or threading.Event())
        return self._run_batch([job], [self._activate(req.adapter)])[0]

    def submit(self, req: GenRequest, emit: Callable[[Delta], None] = lambda d: None,
               cancel: threading.Event | None = None) -> Future:
        """Queue a request for the next batch; the Future resolves to its GenResult."""
        job = _Job(req, emit, cancel or threading.Event())
        with self._pending_lock:
            self._pending.append(job)
        # One drain task per job: each takes every waiting job that fits, so later tasks may
        # find nothing to do, but no job can be left waiting without a task behind it.
        self._thread.submit(self._drain)
        return job.future

    def _drain(self) -> None:
        ready, names = [], []
        for job in self._take():
            try:
                names.append(self._activate(job.req.adapter))
                ready.append(job)
            except Exception as exc:        # this request's adapter only; the rest go on
                job.future.set_exception(exc)
        if not ready:
            return
        try:
            results = self._run_batch(ready, names)
        except Exception as exc:
            for job in ready:
                job.future.set_exception(exc)
            return
        for job, result in zip(ready, results, strict=True):
            job.future.set_result(result)

    def _take(self) -> list[_Job]:
        """Waiting jobs for one batch, oldest first, up to max_batch_rows rows (at least one
        job). Two versions of one user's adapter never share a batch (loading the newer
        evicts the older), nor do more adapters than the cache holds."""
        batch: list[_Job] = []
        rows, versions = 0, {}
        with self._pending_lock:
            waiting, self._pending = self._pending, deque()
            for job in waiting:
                ref = job.req.adapter
                fits = rows + job.req.n <= self.max_batch_rows
                clash = ref is not None and (
                    versions.get(ref.user_id, ref.version) != ref.version
                    or (ref.user_id not in versions and len(versions) >= self.cache_size))
                if batch and (not fits or clash):
                    self._pending.append(job)
                    continue
                batch.append(job)
                rows += job.req.n
                if ref is not None:
                    versions[ref.user_id] = ref.version
        return batch

    def _run_batch(self, jobs: list[_Job], names: list[str]) -> list[GenResult]:
        """Decode every candidate of `jobs` as one left-padded batch; names[i] is the loaded
        adapter (or BASE) that routes jobs[i]'s rows."""
        prompts = [self.render(job.req.messages, job.req.max_tokens) for job in jobs]
        trackers = [_Tracker(self, job.req, len(ids), job.submitted, job.emit, job.cancel)
                    for job, ids in zip(jobs, prompts, strict=True)]
        rows = [(ids, name, job.req.row(k))
                for job, ids, name in zip(jobs, prompts, names, strict=True)
                for k in range(job.req.n)]
        input_ids, mask = (t.to(self.base_model.device)
                           for t in left_pad([ids for ids, _, _ in rows], self.pad_id))
        sampling = RowSampling([r for _, _, r in rows], input_ids.shape[1])
        sample = any(r.temperature > 0 for _, _, r in rows)
        kwargs = {"adapter_names": [name for _, name, _ in rows]} \
            if self.model is not self.base_model else {}
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids, attention_mask=mask,
                max_new_tokens=max(job.req.max_tokens for job in jobs),
                stopping_criteria=StoppingCriteriaList([_BatchTracker(trackers)]),
                logits_processor=LogitsProcessorList([sampling])
                if sample or sampling.penalize else None,
                pad_token_id=self.pad_id, eos_token_id=list(self.eos_ids), do_sample=sample,
                temperature=1.0, top_p=1.0, top_k=0, **kwargs)   # sampling does the filtering
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        return [self._result(job, tracker, len(ids))
                for job, tracker, ids in zip(jobs, trackers, prompts, strict=True)]

    @staticmethod
    def _result(job: _Job, tracker: _Tracker, prompt_tokens: int) -> GenResult:
        total = (time.perf_counter() - job.submitted) * 1000
        for cand in tracker.cands:
            if cand.finish_reason in (None, "cancelled"):
                tracker.finish(cand, cand.finish_reason or "length", total)
        return GenResult(tracker.cands, prompt_tokens, job.req.adapter)

    async def generate(self, req: GenRequest) -> GenResult:
        return await asyncio.wrap_future(self.submit(req))

    async def stream(self, req: GenRequest,
                     on_abandon: Callable[[GenResult], Awaitable[None]] | None = None,
                     ) -> AsyncIterator[Delta | GenResult]:
        """Yield Deltas as tokens arrive, then the GenResult. Closing the iterator early
        (a client that went away, a stop button) cancels generation at the next token;
        the partial result then goes to `on_abandon`, so nothing generated is lost."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        future = asyncio.wrap_future(self.submit(req, emit, cancel))
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
        """Run fn on the generation thread (it owns the model; no generation runs meanwhile)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args))

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def health(self) -> dict:
        return {"loaded": list(self.loaded), "capacity": self.cache_size,
                "max_batch_rows": self.max_batch_rows, **self.stats}

