"""Frozen base-model features for (conversation, answer) pairs (their caches: feature_cache.py).

A reward head (adapters/reward_head.py) is a linear scorer on these vectors, so they must
not move while a user's LoRA adapter trains: every adapter is disabled while they are
computed, and caches are keyed by the base's identity (base_id), never by an adapter.

Each item is rendered with the tokenizer's chat template as prompt + one assistant turn.
Answers to the same prompt share one forward pass over the prompt (its KV cache is
repeated for the answers): with ~150 prompt and ~50 answer tokens in HH-style data this
almost halves the cost of a chosen/rejected pair on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from feedback_store.errors import InvalidData, ModelError

Messages = list[dict]
Item = tuple[Messages, str]

# Which hidden states are pooled, as fractions of the depth (0 = embeddings, 1 = last
# layer after the final norm), so the same setting fits the tiny test model and the base.
# Layer 16 of SmolLM2-135M's 30 (0.53) probed best on held-out HH-harmless pairs among
# layers 8..30 and their combinations (~0.69 vs ~0.67 for the last layer on 256 pairs),
# and the forward stops there, which halves the cost. On simulated style personas
# (concise / structured, 20-60 pairs) layer 16 also beat 10, 24 and 30 (0.80 / 1.0 were
# 2-5 points worse), see the commit that set FEATURE_POOLS.
FEATURE_LAYERS: tuple[float, ...] = (0.53,)
# Pools per layer, by name (any of POOL_NAMES): mean over the answer tokens, mean over the
# whole sequence, the answer's last token and the mean over its line-break tokens. The
# last two came back when the dev files were measured whole (5 split seeds, same pairs,
# bench/reward_heads.py): HH-harmless 0.674 +- 0.005 against 0.647 +- 0.014 for the mean
# pools alone, relabeled HH within a point either way. With 20-60 pairs (style personas)
# they had cost 1-2 points; the shared prior carries those users. Same forward, so the
# extraction costs the same; the head's width doubles (fit 0.1-0.2 s at 1,000 events).
FEATURE_POOLS: tuple[str, ...] = ("answer_mean", "sequence_mean", "last", "newline_mean")
# "newline_mean": mean over the answer's tokens that hold a line break (the last token
# when there is none), where a model summarizes a line or list item it just wrote.
POOL_NAMES = ("answer_mean", "sequence_mean", "last", "newline_mean")
POOLS = len(FEATURE_POOLS)
# Token budget of one rendered item, and how much of it an answer may keep (None: a
# quarter of the budget, ANSWER_SHARE); the prompt is cut from the left. Answers keep up
# to 256 tokens: the recipe above was measured so (against 128 it was not compared side by
# side), and the line-break pool reads the whole answer, which 128 tokens cut for long ones.
FEATURE_MAX_TOKENS = 512
FEATURE_ANSWER_TOKENS: int | None = 256
ANSWER_SHARE = 4


@dataclass(frozen=True)
class Rendered:
    """One item as token ids: the prompt prefix (shared by its answers) and the answer."""

    prefix: tuple[int, ...]
    answer: tuple[int, ...]
    text: str           # the full rendered text (cache key material)
    newline: tuple[bool, ...] = ()   # per answer token: does it hold a line break


def _newline_flags(tokenizer, ids: Sequence[int]) -> tuple[bool, ...]:
    return tuple("\n" in tokenizer.decode([t]) for t in ids)


def render(tokenizer, prompt: Messages, answer: str, max_tokens: int = 512,
           answer_tokens: int | None = None) -> Rendered:
    """Chat-template prompt + answer; left-truncate the prompt, cap the answer.

    The answer keeps at most answer_tokens (default max_tokens // ANSWER_SHARE), the
    prompt the rest of max_tokens.
    The prompt's budget does not depend on the answer, so two answers to one prompt keep
    the same prefix and can share its forward pass.
    """
    if not isinstance(answer, str) or not isinstance(prompt, list):
        raise InvalidData("an item must be (list of messages, answer string)")
    head, full = template_text(tokenizer, prompt, answer)
    cut = len(head) if full.startswith(head) else _common_prefix(head, full)
    prefix = tokenizer(full[:cut], add_special_tokens=False)["input_ids"]
    tail = tokenizer(full[cut:], add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    answer_cap = answer_budget(max_tokens, answer_tokens)
    if len(tail) > answer_cap:           # keep the start and the closing token
        tail = tail[:answer_cap - 1] + tail[-1:]
    prefix = prefix[-(max_tokens - answer_cap):]
    return Rendered(prefix=tuple(prefix), answer=tuple(tail), text=full,
                    newline=_newline_flags(tokenizer, tail))


def answer_budget(max_tokens: int, answer_tokens: int | None = None) -> int:
    """Tokens an answer may keep: answer_tokens, or max_tokens // ANSWER_SHARE."""
    cap = max_tokens // ANSWER_SHARE if answer_tokens is None else answer_tokens
    if not 1 <= cap < max_tokens:
        raise InvalidData(f"answer budget {cap} must be in [1, {max_tokens})")
    return cap


def template_text(tokenizer, prompt: Messages, answer: str) -> tuple[str, str]:
    """(prompt with the assistant header, prompt + answer as an assistant turn) as text."""
    try:
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=False).rstrip()
    except Exception as exc:
        raise InvalidData(f"cannot render conversation with the chat template: {exc}") from exc
    return head, full


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def adapters_disabled(model):
    """Context in which a PeftModel runs as its frozen base (no-op for a plain model).

    Also for the plain model *inside* a PeftModel: get_peft_model injects LoRA layers into
    the caller's model in place, so during RL the job's `base.model` carries the policy's
    LoRA. Without this, reward features were computed through the policy being trained
    (measured on the tiny test model: features moved by up to 0.07), not the frozen base.
    """
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:          # peft is optional for a plain base
        return contextlib.nullcontext()
    if isinstance(model, PeftModel):
        return model.disable_adapter()
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return _layers_disabled(model, layers) if layers else contextlib.nullcontext()


@contextlib.contextmanager
def _layers_disabled(model, layers: list):
    """Turn injected adapter layers off, then restore their state and requires_grad flags
    (PEFT's enable_adapters also flips requires_grad)."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    was_disabled = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, disabled in zip(layers, was_disabled, strict=True):
            layer.enable_adapters(not disabled)
        for p, flag in grads:
            p.requires_grad_(flag)


def _group_by_prefix(rendered: list[Rendered]) -> list[list[int]]:
    """Indices grouped by identical prefix, groups ordered by total length (less padding)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rendered):
        groups.setdefault(r.prefix, []).append(i)
    return sorted(groups.values(), key=lambda g: len(rendered[g[0]].prefix))


def layer_indices(model, layers: Sequence[float]) -> list[int]:
    """Depth fractions -> indices into hidden_states (0..n_layers); 0.53 -> 16 of 30."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    depth = config.num_hidden_layers
    return [min(depth, max(0, round(f * depth))) for f in layers]


def _forward_group(model, prefix: Sequence[int], answers: list[Rendered],
                   layers: Sequence[int], batch_size: int, pools: Sequence[str]):
    """Pooled features (k, len(layers) * POOLS * H) for k answers to one prompt."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    p = len(prefix)
    cache = DynamicCache()
    pre = _hidden(model, layers, input_ids=torch.tensor([list(prefix)], device=device),
                  past_key_values=cache, use_cache=True)
    # Per layer: sum over prefix tokens, (H,); the prefix is identical for every answer.
    pre_sums = [h[0].sum(0) for h in pre]
    out = []
    for start in range(0, len(answers), batch_size):
        chunk = answers[start:start + batch_size]
        repeated = _repeat_cache(cache, len(chunk), copy=start + batch_size < len(answers))
        out.append(_forward_answers(model, repeated, p, chunk, pre_sums, layers, device,
                                    pools))
    return torch.cat(out)


class _StopForward(Exception):
    """Raised by a hook once the deepest wanted layer has run: later layers are skipped."""


def _decoder_parts(model):
    """(embeddings, decoder layers, final norm) of a Llama-style model, or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    parts = tuple(getattr(inner, name, None) for name in ("embed_tokens", "layers", "norm"))
    return None if any(x is None for x in parts) else parts


def _hidden(model, indices: Sequence[int], **inputs) -> list:
    """Hidden states [(B, T, H)] at the given indices (as in output_hidden_states).

    Hooks capture them and stop the forward after the deepest one: with the middle layer
    this halves the cost. Models of another layout run whole with output_hidden_states.
    """
    parts = _decoder_parts(model)
    if parts is None:
        out = model(**inputs, output_hidden_states=True, logits_to_keep=1)
        return [out.hidden_states[i] for i in indices]
    embed, blocks, norm = parts
    depth, deepest, store = len(blocks), max(indices), {}

    def hook_for(i: int):
        def hook(_module, _args, output):
            store[i] = output[0] if isinstance(output, tuple) else output
            if i == deepest and i < depth:
                raise _StopForward
        return hook

    modules = {i: embed if i == 0 else norm if i == depth else blocks[i - 1] for i in indices}
    handles = [m.register_forward_hook(hook_for(i)) for i, m in modules.items()]
    try:
        # logits_to_keep=1: the 49k-word output projection is not needed here.
        model(**inputs, logits_to_keep=1)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return [store[i] for i in indices]


def _repeat_cache(cache, k: int, copy: bool):
    """The prefix KV cache repeated for k answers (copied when it is reused afterwards)."""
    import copy as copy_mod

    cache = copy_mod.deepcopy(cache) if copy else cache
    cache.batch_repeat_interleave(k)
    return cache


def _forward_answers(model, cache, p: int, answers: list[Rendered], pre_sums, layers,
                     device, pools: Sequence[str]):
    import torch

    k, width = len(answers), max(len(a.answer) for a in answers)
    ids = torch.zeros((k, width), dtype=torch.long, device=device)
    amask = torch.zeros((k, width), dtype=torch.bool, device=device)
    nl = torch.zeros((k, width), dtype=torch.bool, device=device)
    for i, r in enumerate(answers):   # right padding: real tokens never see the pads
        a = r.answer
        ids[i, :len(a)] = torch.tensor(a)
        amask[i, :len(a)] = True
        if any(r.newline):
            nl[i, :len(a)] = torch.tensor(r.newline)
        else:                          # no line break: the last token stands in
            nl[i, len(a) - 1] = True
    attn = torch.cat([torch.ones((k, p), dtype=torch.long, device=device), amask.long()], 1)
    pos = torch.arange(p, p + width, device=device).expand(k, width)
    hidden = _hidden(model, layers, input_ids=ids, attention_mask=attn, position_ids=pos,
                     past_key_values=cache, use_cache=True)
    lengths = amask.sum(1)                                        # (k,)
    m = amask.unsqueeze(-1).float()                               # (k, W, 1)
    feats = []
    for h, pre_sum in zip(hidden, pre_sums, strict=True):        # h: (k, W, H)
        ans_sum = (h * m).sum(1)                                  # (k, H)
        mean_answer = ans_sum / lengths.unsqueeze(1)
        mean_all = (ans_sum + pre_sum) / (lengths + p).unsqueeze(1)
        last = h[torch.arange(k), lengths - 1]                    # (k, H)
        n = nl.unsqueeze(-1).float()
        newline = (h * n).sum(1) / n.sum(1)                       # (k, H)
        pooled = {"answer_mean": mean_answer, "sequence_mean": mean_all, "last": last,
                  "newline_mean": newline}
        feats += [pooled[name] for name in pools]
    return torch.cat(feats, 1)


def compute_features(model, tokenizer, items: list[Item], batch_size: int = 8,
                     max_tokens: int | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     layers: Sequence[float] | None = None,
                     pools: Sequence[str] | None = None,
                     answer_tokens: int | None = None) -> np.ndarray:
    """Features (N, len(layers) * len(pools) * hidden) float32 from the frozen base, in item
    order; layout: for each layer, for each pool, H values. Defaults: FEATURE_LAYERS and
    FEATURE_POOLS (read at call time)."""
    import torch

    layers = FEATURE_LAYERS if layers is None else tuple(layers)
    pools = FEATURE_POOLS if pools is None else tuple(pools)
    if max_tokens is None:
        max_tokens, answer_tokens = FEATURE_MAX_TOKENS, FEATURE_ANSWER_TOKENS
    unknown = [p for p in pools if p not in POOL_NAMES]
    if unknown:
        raise InvalidData(f"unknown feature pools {unknown}; known: {list(POOL_NAMES)}")
    rendered = [render(tokenizer, p, a, max_tokens, answer_tokens) for p, a in items]
    indices = layer_indices(model, layers)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    result = np.zeros((len(items), len(indices) * len(pools) * config.hidden_size),
                      np.float32)
    done = 0
    try:
        with torch.inference_mode(), adapters_disabled(model):
            for group in _group_by_prefix(rendered):
                feats = _forward_group(model, rendered[group[0]].prefix,
                                       [rendered[i] for i in group], indices, batch_size,
                                       pools)
                result[group] = feats.float().cpu().numpy()
                done += len(group)
                if progress:
                    progress(done, len(items))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ModelError(f"feature extraction failed: {exc}") from exc
    return result


def feature_spec(layers: Sequence[float] | None = None, max_tokens: int | None = None,
                 pools: Sequence[str] | None = None, answer_tokens: int | None = None) -> str:
    """What changes the vectors besides the base and the text (defaults: the current
    recipe, FEATURE_* read at call time)."""
    layers = FEATURE_LAYERS if layers is None else layers
    pools = FEATURE_POOLS if pools is None else pools
    if max_tokens is None:
        max_tokens, answer_tokens = FEATURE_MAX_TOKENS, FEATURE_ANSWER_TOKENS
    spec = f"v2:layers={','.join(map(str, layers))}:pools={','.join(pools)}:max={max_tokens}"
    return spec if answer_tokens is None else f"{spec}:answer={answer_tokens}"


def recipe_columns(hidden: int, layers: Sequence[float], pools: Sequence[str],
                   sub_layers: Sequence[float], sub_pools: Sequence[str]) -> np.ndarray:
    """Column indices of a (sub_layers x sub_pools) recipe inside features computed with
    (layers x pools): a richer extraction serves every smaller recipe without a forward."""
    cols = []
    for layer in sub_layers:
        for pool in sub_pools:
            block = list(layers).index(layer) * len(pools) + list(pools).index(pool)
            cols.append(np.arange(block * hidden, (block + 1) * hidden))
    return np.concatenate(cols)
