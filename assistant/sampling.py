"""Per-row sampling for a mixed batch: every row (one candidate of one request) has its own
temperature, top_p, repetition penalties and optional seed, so requests with different
settings can share a batch.

The processor turns each row's logits into the distribution that row wants and, for greedy
or seeded rows, leaves a single token for the sampler to pick. The engine's decode loop calls
`process` with each row's answer so far (rows join and leave the batch, so their answers
are ragged lists); `__call__` is the LogitsProcessor form over `generate`'s input_ids.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class RowSettings:
    """How one row is sampled (OpenAI's parameters and ranges)."""

    temperature: float = 0.7           # 0 = greedy
    top_p: float = 0.95
    frequency_penalty: float = 0.0     # subtracted once per earlier occurrence in the answer
    presence_penalty: float = 0.0      # subtracted once if the token occurs in the answer
    seed: int | None = None            # this row's seed (row_seed); None = torch's global RNG


def row_seed(seed: int, candidate: int) -> int:
    """A 63-bit seed for one candidate of a seeded request: candidates of one request differ,
    and (seed, candidate) pairs do not collide the way seed + candidate would."""
    return random.Random(f"{seed}:{candidate}").getrandbits(63)


class RowSampling(LogitsProcessor):
    """Penalties, temperature, nucleus (top-p) filtering, greedy rows and seeded draws,
    with a value per row.

    `prompt_len` is the padded prompt width: input_ids[:, prompt_len:] are the tokens
    generated so far, which is what the penalties count (the prompt is not penalized, as in
    OpenAI's definition). scores: (rows, vocab) next-token logits; returns the same shape.
    """

    def __init__(self, rows: list[RowSettings], prompt_len: int,
                 generators: list[torch.Generator | None] | None = None) -> None:
        temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32)
        self.greedy = temps <= 0
        self.temps = temps.clamp(min=1e-4)[:, None]                           # (rows, 1)
        self.top_ps = torch.tensor([r.top_p for r in rows], dtype=torch.float32)[:, None]
        self.freq = torch.tensor([r.frequency_penalty for r in rows])[:, None]  # (rows, 1)
        self.pres = torch.tensor([r.presence_penalty for r in rows])[:, None]
        self.penalize = bool(self.freq.any() or self.pres.any())
        self.prompt_len = prompt_len
        # A seeded row's generator lives as long as the row does: the engine passes the same
        # generators in again whenever the batch's composition changes.
        self.generators = generators if generators is not None else [
            None if r.seed is None else torch.Generator().manual_seed(r.seed) for r in rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        answers = input_ids[:, self.prompt_len:]
        return self._filter(self._penalties(answers, None, scores) if self.penalize else scores)

    def process(self, answers: list[list[int]], scores: torch.Tensor) -> torch.Tensor:
        """As __call__, with each row's answer so far as a list (rows of any length)."""
        if self.penalize:
            width = max(1, max(len(a) for a in answers))
            ids = torch.zeros(len(answers), width, dtype=torch.long)
            real = torch.zeros(len(answers), width, dtype=scores.dtype)
            for i, answer in enumerate(answers):
                ids[i, :len(answer)] = torch.tensor(answer, dtype=torch.long)
                real[i, :len(answer)] = 1
            scores = self._penalties(ids.to(scores.device), real.to(scores.device), scores)
        return self._filter(scores)

    def _filter(self, scores: torch.Tensor) -> torch.Tensor:
        scores = self._nucleus(scores / self.temps.to(scores.device))
        if self.greedy.any():
            best = _forced(scores, scores.argmax(-1, keepdim=True))
            scores = torch.where(self.greedy.to(scores.device)[:, None], best, scores)
        return self._seeded(scores)

    def _penalties(self, answer: torch.Tensor, real: torch.Tensor | None,
                   scores: torch.Tensor) -> torch.Tensor:
        # OpenAI: logits[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty
        # answer: (rows, generated), real: its 1/0 mask (None = all real); counts: (rows, vocab).
        weight = torch.ones_like(answer, dtype=scores.dtype) if real is None else real
        counts = torch.zeros_like(scores).scatter_add_(1, answer, weight)
        return scores - counts * self.freq.to(scores) - (counts > 0) * self.pres.to(scores)

    def _nucleus(self, scores: torch.Tensor) -> torch.Tensor:
        # As transformers' TopPLogitsWarper, with one p per row: drop the low tail whose
        # total probability is at most 1 - p, always keeping the most likely token.
        ordered, order = torch.sort(scores, descending=False)
        tail = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_ps.to(scores.device)
        tail[:, -1] = False
        return scores.masked_fill(tail.scatter(1, order, tail), -float("inf"))

    def _seeded(self, scores: torch.Tensor) -> torch.Tensor:
        # A seeded row draws its token from its own generator, one draw per step, so its
        # answer does not depend on which other requests share the batch.
        for row, gen in enumerate(self.generators):
            if gen is not None and not self.greedy[row]:
                probs = scores[row].softmax(-1).to("cpu")
                token = torch.multinomial(probs, 1, generator=gen).to(scores.device)
                scores[row] = _forced(scores[row:row + 1], token.view(1, 1))[0]
        return scores


def _forced(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Logits shaped like scores (rows, vocab) that allow only tokens[row] (rows, 1) per row."""
    return torch.full_like(scores, -float("inf")).scatter(1, tokens, 0.0)
