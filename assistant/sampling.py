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
import torch.nn.functional as F
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
        return self._filter(self._penalized(answers, scores))

    def choose(self, answers: list[list[int]], scores: torch.Tensor) -> list[int]:
        """Each row's next token (the engine's decode loop): the token `process` would leave
        or draw, without building a filtered (rows, vocab) tensor - the nucleus is found among
        the top candidates and sampled from there (see `_supports`)."""
        scores = self._penalized(answers, scores) / self.temps.to(scores.device)
        tokens = scores.argmax(-1).tolist()              # greedy rows
        hot = [i for i in range(len(tokens)) if not self.greedy[i]]
        for i, (ids, vals) in zip(hot, self._supports(scores, hot), strict=True):
            tokens[i] = self._draw(i, ids, vals, scores.shape[-1])
        return tokens

    def _penalized(self, answers: list[list[int]], scores: torch.Tensor) -> torch.Tensor:
        if not self.penalize:
            return scores
        width = max(1, max(len(a) for a in answers))
        ids = torch.zeros(len(answers), width, dtype=torch.long)
        real = torch.zeros(len(answers), width, dtype=scores.dtype)
        for i, answer in enumerate(answers):
            ids[i, :len(answer)] = torch.tensor(answer, dtype=torch.long)
            real[i, :len(answer)] = 1
        return self._penalties(ids.to(scores.device), real.to(scores.device), scores)

    def _filter(self, scores: torch.Tensor) -> torch.Tensor:
        """Full (rows, vocab) scores: -inf outside each row's nucleus; a greedy or seeded
        row keeps only the token it picks."""
        scores = scores / self.temps.to(scores.device)
        out = torch.full_like(scores, -float("inf"))
        best = scores.argmax(-1)
        hot = [i for i in range(len(scores)) if not self.greedy[i]]
        for i in range(len(scores)):
            if self.greedy[i]:
                out[i, best[i]] = 0.0
        for i, (ids, vals) in zip(hot, self._supports(scores, hot), strict=True):
            if self.generators[i] is not None:
                out[i, self._draw(i, ids, vals, scores.shape[-1])] = 0.0
            else:
                out[i, ids] = vals
        return out

    def _draw(self, row: int, ids: torch.Tensor, vals: torch.Tensor, vocab: int) -> int:
        """A token of one row's nucleus (ids, scaled scores), drawn in proportion to
        exp(vals) by inverting its distribution at one uniform number: from the row's own
        generator if it is seeded (one number per step, so the answer does not depend on
        which other requests share the batch), else from torch's global RNG. The tokens are
        laid out in id order, not by score, so that logits that differ in their last bits
        (another batch shape) move the cumulative sums only a little and almost never
        change the pick - as with multinomial's per-token draws over the whole vocabulary."""
        if len(ids) == 1:
            return int(ids[0])
        order = None if len(ids) == vocab else ids.argsort()     # all: ids are in order
        probs = (vals if order is None else vals[order]).to("cpu", torch.float64).softmax(-1)
        cdf = probs.cumsum(0)
        u = torch.rand(1, dtype=torch.float64, generator=self.generators[row]) * cdf[-1]
        j = min(int(torch.searchsorted(cdf, u, right=True)), len(cdf) - 1)
        return int(ids[j if order is None else order[j]])

    def _penalties(self, answer: torch.Tensor, real: torch.Tensor | None,
                   scores: torch.Tensor) -> torch.Tensor:
        # OpenAI: logits[t] -= count[t] * frequency_penalty + (count[t] > 0) * presence_penalty
        # answer: (rows, generated), real: its 1/0 mask (None = all real); counts: (rows, vocab).
        weight = torch.ones_like(answer, dtype=scores.dtype) if real is None else real
        counts = torch.zeros_like(scores).scatter_add_(1, answer, weight)
        return scores - counts * self.freq.to(scores) - (counts > 0) * self.pres.to(scores)

    def _supports(self, scores: torch.Tensor, rows: list[int],
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each listed row's nucleus as (token ids, scaled scores), most likely first.

        As transformers' TopPLogitsWarper, with one p per row: a token is kept when the
        tokens more likely than it hold less than p of the probability (the most likely
        one is always kept). Sorting the whole vocabulary (49,152 tokens for SmolLM2) cost
        about 35 ms per step of 8 rows, a sixth of the step; the nucleus is almost always
        among the top NUCLEUS_CANDIDATES, so those are taken with topk (under 2 ms), and only
        a row whose nucleus may reach past them looks at 16 times as many, and so on up to
        the whole vocabulary. Which path a row takes depends on its own scores alone, so its
        tokens do not depend on the batch. scores: (rows, vocab).
        """
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        vocab = scores.shape[-1]
        todo = []
        for i in rows:
            if float(self.top_ps[i]) >= 1.0:             # no filtering: the whole vocabulary
                out[i] = (torch.arange(vocab, device=scores.device), scores[i])
            else:
                todo.append(i)
        k = min(NUCLEUS_CANDIDATES, vocab)
        while todo:
            sub = scores[todo]
            vals, ids = sub.topk(k, dim=-1)                                  # (n, k)
            probs = (vals - sub.logsumexp(-1, keepdim=True)).exp()
            above = F.pad(probs.cumsum(-1)[:, :-1], (1, 0))    # mass of the likelier tokens
            keep = above < self.top_ps[todo].to(scores.device)
            keep[:, 0] = True
            sizes = keep.sum(-1).tolist()
            wider = []
            for j, i in enumerate(todo):
                if sizes[j] == k and k < vocab:              # the nucleus may go on: sort all
                    wider.append(i)
                else:
                    out[i] = (ids[j, :sizes[j]], vals[j, :sizes[j]])
            todo, k = wider, min(k * 16, vocab)
        return [out[i] for i in rows]


# Candidates first examined for a row's nucleus (then 16x as many, up to the vocabulary): at
# the served temperatures the nucleus is usually a few to a few dozen tokens.
NUCLEUS_CANDIDATES = 256
