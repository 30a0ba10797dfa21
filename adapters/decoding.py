"""Decoding helpers shared by the engine, the GRPO loop (adapters/policy.py), the gate and DPO:
chat-template rendering, left padding, batched sampling, completion masks, per-token
log-probs, the bfloat16 generation copy, and scoring texts with a reward function.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers import GenerationConfig

from feedback_store.errors import TrainingError

RewardFn = Callable[[list[list[dict]], list[str]], list[float]]

BASE = "__base__"    # the name of "no adapter": in a routed PEFT batch, engine stats, logs
MAX_PROMPT_TOKENS = 512     # long histories are cut from their start (the last turn matters)


def render_prompts(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Chat-template token ids ending with the assistant header, at most MAX_PROMPT_TOKENS."""
    rows = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:])
    return rows


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a (B, P) id tensor and its (B, P) attention mask, so that every row's
    completion starts at the same column P."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def eos_ids(model, tokenizer) -> list[int]:
    config = getattr(model, "generation_config", None)
    ids = config.eos_token_id if config is not None else None
    ids = list(ids) if isinstance(ids, list) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def sample(model, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int,
           temperature: float, eos: list[int], pad_id: int,
           adapter_names: list[str] | None = None) -> torch.Tensor:
    """Completion ids (B, T), T <= max_new_tokens, for left-padded prompts (B, P).

    temperature > 0 samples from softmax(logits / temperature) with no top-k/top-p;
    temperature <= 0 decodes greedily. Rows that stopped early are filled with pad_id.
    """
    if temperature > 0:
        mode = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    else:
        mode = {"do_sample": False}
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad_id, **mode)
    routing = {"adapter_names": adapter_names} if adapter_names is not None else {}
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=config, **routing)
    # clone() outside inference mode: the ids are reused in a forward that records autograd.
    return out[:, ids.shape[1]:].clone().cpu()


def completion_mask(tokens: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """(B, T) 1.0 for tokens up to and including the first end-of-sequence, else 0.0.

    The EOS itself is kept: stopping is one of the policy's choices and gets credit for it.
    """
    is_eos = torch.isin(tokens, torch.tensor(eos, dtype=tokens.dtype)).long()
    seen_before = is_eos.cumsum(-1) - is_eos
    return (seen_before == 0).float()


def decode(tokenizer, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
            for row, m in zip(tokens, mask, strict=True)]


def autocast(model, enabled: bool):
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16) if enabled else nullcontext()


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion: torch.Tensor, comp_mask: torch.Tensor, *,
                   temperature: float = 1.0, bf16: bool = False) -> torch.Tensor:
    """(B, T) log-probs of the completion tokens under `model` (a PeftModel), in float32.

    One forward over [prompt | completion] (B, P+T). Position ids follow the attention mask
    as in `generate`, so left padding does not shift positions. The decoder runs under bf16
    autocast when asked; the output layer runs in fp32 on the T positions that predict the
    completion, which also spares the (P, 49k) logits of the prompt.
    """
    logits = completion_logits(model, prompt_ids, prompt_mask, completion, comp_mask,
                               bf16=bf16)
    if temperature > 0:
        logits = logits / temperature
    picked = logits.gather(-1, completion.to(logits.device).unsqueeze(-1)).squeeze(-1)
    return (picked - logits.logsumexp(-1)).cpu()


def completion_logits(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion: torch.Tensor, comp_mask: torch.Tensor, *,
                      bf16: bool = False) -> torch.Tensor:
    """(B, T, V) float32 logits of the positions that predict the completion tokens."""
    causal_lm = model.get_base_model()
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, completion], dim=1).to(device)
    attn = torch.cat([prompt_mask, comp_mask.long()], dim=1).to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    with autocast(model, bf16):
        hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=attn,
                                         position_ids=positions, use_cache=False)
    t = completion.shape[1]
    h = hidden.last_hidden_state[:, -t - 1:-1].float().contiguous()   # (B, T, H)
    return causal_lm.get_output_embeddings()(h).float()


def bf16_twin(model):
    """A frozen bfloat16 deep copy of `model`, for generation only."""
    twin = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    # On CPU a bf16 linear whose 3-D input is non-contiguous - generate's last-position
    # slice (B, 1, H) of the prefill is - takes a bmm path that copies the (V, H) weight once
    # per row: ~3 s per generate call for 16 rows. A contiguous input takes the fast path.
    twin.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: (args[0].contiguous(), *args[1:]))
    return twin


def score_texts(reward_fn: RewardFn, prompts: list[list[dict]], texts: list[str],
                where: str) -> list[float]:
    """One finite reward per text; a failing or malformed reward function is a TrainingError
    saying `where` (the RL step, the gate) it failed."""
    try:
        rewards = [float(r) for r in reward_fn(prompts, texts)]
    except Exception as exc:
        raise TrainingError(f"reward function failed in {where}: {exc}") from exc
    if len(rewards) != len(texts) or not all(math.isfinite(r) for r in rewards):
        raise TrainingError(f"reward function returned {len(rewards)} values for "
                            f"{len(texts)} completions in {where}, or non-finite ones")
    return rewards
