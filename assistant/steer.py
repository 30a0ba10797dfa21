"""Steered answers: a forced opening and a closing cue, per request (GenRequest.opening,
GenRequest.closing), for the engine's rows.

- **Opening** (an answer prefix): the prompt is the chat template up to the assistant turn's
  start plus the opening's tokens, so the model continues the opening (its KV is computed in
  the prefill with the rest of the prompt, in parallel: no decode step). The answer text is
  the opening plus the continuation. Trailing whitespace is left out of the prompt: a
  byte-level BPE writes a space as the start of the next word ("Ġthe"), so a prompt ending in
  a lone space token is one the model has rarely seen; the continuation brings the space.
- **Closing**: when a row would end (it samples end of sequence, or ends a sentence within
  its last CLOSING_RESERVE tokens, or has just room left for the cue and a few words), the
  cue's tokens are fed to it instead, one per decode step (as
  if sampled), and the row goes on to write the rest of the closing, up to its budget.
  Forcing tokens through the decode loop needs no other change to the batch: a row's next
  token is only ever "the token not yet in the cache".

The opening's tokens count toward max_tokens, so a steered answer is no longer than the
others it is compared with. An opening that reads as a whole reply ("Certainly.") is often
ended at once (5 of 29 formal-arm answers were the opening alone, measured on SmolLM2-135M),
so the end of sequence is held back for the first OPENING_MIN_CONTINUATION tokens.
"""

from __future__ import annotations

from assistant.arms import CLOSING_RESERVE


def opening_ids(tokenizer, opening: str) -> list[int]:
    """The opening's tokens as they go at the end of the prompt ([] for no opening)."""
    text = opening.rstrip()
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


class Steering:
    """One request's opening and closing, and each candidate's progress through its closing."""

    def __init__(self, tokenizer, opening: str, closing: str, max_tokens: int,
                 eos: set[int]) -> None:
        self.opening = opening.rstrip()
        opened = len(opening_ids(tokenizer, opening))
        self.closing_ids = (tokenizer(closing, add_special_tokens=False)["input_ids"]
                            if closing else [])
        self.budget = max(1, max_tokens - opened)       # tokens the row may still write
        # Where an answer that has not ended gets its closing: at the first end of a sentence
        # from CLOSING_RESERVE before the end of the budget (never in the first half: a short
        # budget still says something), at the latest with CLOSING_TAIL tokens left after the
        # cue (a closing cut into a sentence reads as a glitch; one with no words after it too).
        self.close_at = max(self.budget - CLOSING_RESERVE, self.budget // 2)
        self.close_by = max(self.close_at, self.budget - len(self.closing_ids) - CLOSING_TAIL)
        self.tok, self.eos = tokenizer, eos
        self._forced: dict[int, list[int]] = {}         # candidate -> closing tokens to come

    def holds_end(self, written: int) -> bool:
        """Whether an answer that has written `written` tokens after its opening may not end
        yet (the engine masks end of sequence for it): an opening must be continued."""
        return bool(self.opening) and written < min(OPENING_MIN_CONTINUATION, self.budget)

    def take(self, index: int, token: int, written: list[int]) -> int:
        """The token candidate `index` takes next, having written the tokens `written`: the
        next token of its closing if one is under way, the closing's first token if the answer
        would end now, else the sampled `token`."""
        queue = self._forced.get(index)
        if queue:
            return queue.pop(0)
        if self.closing_ids and index not in self._forced and self.closes(token, written):
            self._forced[index] = self.closing_ids[1:]
            return self.closing_ids[0]
        return token

    def closes(self, token: int, written: list[int]) -> bool:
        """Whether an answer that has written `written` and sampled `token` gets its closing
        now."""
        n = len(written)
        if token in self.eos or n >= self.close_by:
            return True
        return n >= self.close_at and self.tok.decode(written[-1:]).rstrip(" ")[-1:] in SENTENCE_END


SENTENCE_END = (".", "!", "?", "\n")
CLOSING_TAIL = 8      # tokens at least left for the model's words after a forced closing
# Tokens an opening's continuation has before it may end: a short clause, enough that the
# answer says something past the opening; a model that wants to stop writes a sentence.
OPENING_MIN_CONTINUATION = 8
