"""RL training of a user's LoRA, the adapter registry and the evaluation gate (tiny model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adapters import decoding, gate, policy, registry
from adapters.records import GateMetrics, StepRecord
from feedback_store.errors import NotFound, TrainingError
from feedback_store.users import create_user, get_user
from tests.conftest import make_tiny_model

PROMPTS = [[{"role": "user", "content": "Say hi."}],
           [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me a long story about a cat and a dog."}],
           [{"role": "user", "content": "What is two plus two?"}]]
FAST = policy.PolicySettings(steps=3, group_size=4, prompts_per_step=2,
                             max_completion_tokens=12, learning_rate=1e-2)


@pytest.fixture(autouse=True)
def one_thread():
    """Training runs on one torch thread ([training] threads = 1); on a busy 2-core machine
    two threads also make the tiny model's small ops wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def count_e(prompts, completions):
    """A toy reward the random tiny model can move: how often the letter e appears."""
    return [float(c.count("e")) for c in completions]


def lora_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def randomize_lora(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_training_runs_and_changes_lora(tokenizer, tiny_model):
    base_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    seen = []
    model, records = policy.train_policy(tiny_model, tokenizer, PROMPTS, count_e, FAST,
                                         progress=seen.append)
    assert [r["step"] for r in records] == [1, 2, 3] and seen == records
    assert all(r.keys() == StepRecord.__annotations__.keys() for r in records)
    for r in records:
        assert math.isfinite(r["loss"]) and r["kl"] >= 0 and 1 <= r["completion_len"] <= 12
    # A fresh LoRA starts with B = 0; training must have moved it.
    assert any(v.abs().sum() > 0 for k, v in lora_state(model).items() if "lora_B" in k)
    # The caller's base is untouched and comes back plain after unload().
    plain = model.unload()
    assert not any("lora_" in k for k in plain.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in base_before.items())


def test_training_is_seeded(tokenizer):
    runs = [policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS, count_e,
                                FAST)[1] for _ in range(2)]
    assert [r["reward_mean"] for r in runs[0]] == [r["reward_mean"] for r in runs[1]]


def test_training_starts_from_existing_adapter(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=policy.LORA_TARGETS)
    src = get_peft_model(make_tiny_model(tokenizer), config)
    randomize_lora(src)
    src.save_pretrained(tmp_path / "v1")
    saved = lora_state(src)
    settings = policy.PolicySettings(steps=0)
    model, records = policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS,
                                         count_e, settings, init_adapter=tmp_path / "v1")
    assert records == []
    loaded = lora_state(model)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # And a step from there moves the weights only a little (Adam's first step ~ lr).
    small = policy.PolicySettings(steps=1, max_completion_tokens=8, learning_rate=1e-4)
    model, _ = policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS, count_e,
                                   small, init_adapter=tmp_path / "v1")
    after = lora_state(model)
    assert all((after[k] - saved[k]).abs().max() <= 2e-4 for k in saved)


def test_logprobs_match_generation_with_left_padding(tokenizer, tiny_model):
    from transformers import GenerationConfig

    model = policy.attach_lora(tiny_model, FAST)
    randomize_lora(model)
    ids, mask = decoding.left_pad(decoding.render_prompts(tokenizer, PROMPTS),
                                  tokenizer.pad_token_id)
    eos = decoding.eos_ids(tiny_model, tokenizer)
    config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=0,
                              top_p=1.0, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                              output_logits=True, return_dict_in_generate=True)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    tokens = out.sequences[:, ids.shape[1]:].clone()
    logits = torch.stack(out.logits, 1).float() / 0.7
    expected = logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)
    got = decoding.token_logprobs(model, ids, mask, tokens,
                                  decoding.completion_mask(tokens, eos), temperature=0.7)
    assert torch.allclose(got, expected, atol=1e-4)


def test_bf16_sampler_tracks_the_policy(tokenizer, tiny_model):
    plain = policy._plain_bf16_twin(tiny_model)
    model = policy.attach_lora(tiny_model, FAST)
    sampler = policy._Sampler(plain, model)
    randomize_lora(model)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        before = (sampler.model(input_ids=ids).logits.float() - model(input_ids=ids).logits)
        sampler.sync()
        after = (sampler.model(input_ids=ids).logits.float() - model(input_ids=ids).logits)
    assert after.abs().max() < 0.05 < before.abs().max()


def test_bf16_sampler_refuses_lora_it_cannot_merge(tokenizer, tiny_model):
    """Only LoRA on Linear layers (all of LORA_TARGETS) merges into the sampler's weights;
    another kind is refused by name, not sampled from a copy that does not match it."""
    from peft import LoraConfig, get_peft_model

    plain = policy._plain_bf16_twin(tiny_model)
    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["embed_tokens"]))
    with pytest.raises(TrainingError, match="embed_tokens"):
        policy._Sampler(plain, model)


def test_advantages_and_completion_mask():
    adv = policy.group_advantages(torch.tensor([[1.0, 2.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0]]))
    assert torch.allclose(adv[0].mean(), torch.tensor(0.0)) and adv[0, 2] > 0 > adv[0, 0]
    assert torch.equal(adv[1], torch.zeros(4))
    mask = decoding.completion_mask(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]]), [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_bad_rewards_raise(tokenizer, tiny_model):
    with pytest.raises(TrainingError):
        policy.train_policy(tiny_model, tokenizer, PROMPTS, lambda p, c: [1.0], FAST)
    with pytest.raises(TrainingError):
        policy.train_policy(make_tiny_model(tokenizer), tokenizer, [], count_e, FAST)


# ---- registry ---------------------------------------------------------------------------
@pytest.fixture
def alice(db):
    return create_user(db, "alice")[0]


def trained(tokenizer):
    model = policy.attach_lora(make_tiny_model(tokenizer), FAST)
    randomize_lora(model)
    return model


def test_saved_version_loads_with_plain_peft(tokenizer, db, alice, tmp_path):
    from peft import PeftModel

    model = trained(tokenizer)
    meta = {"base_id": "tiny@0", "events_used": 12, "metrics": {"reward_gain": 0.1}}
    v1 = registry.save_version(db, tmp_path, alice, model, meta)
    folder = tmp_path / "alice" / str(v1)
    assert v1 == 1 and folder == tmp_path / "alice" / "1"
    saved_meta = json.loads((folder / "meta.json").read_text())
    assert saved_meta["version"] == 1 and saved_meta["parent_version"] is None
    assert saved_meta["user"]["name"] == "alice" and saved_meta["events_used"] == 12
    loaded = PeftModel.from_pretrained(make_tiny_model(tokenizer), str(folder))
    want, got = lora_state(model), lora_state(loaded)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    registry.promote(db, alice["id"], v1)
    v2 = registry.save_version(db, tmp_path, alice, model, {"base_id": "tiny@0"})
    versions = registry.list_versions(db, alice["id"])
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["parent_version"] == 1
    assert versions[0]["current"] and versions[0]["metrics"] == {"reward_gain": 0.1}
    assert (tmp_path / "alice" / str(v2) / "adapter_config.json").exists()


def test_crash_during_save_leaves_nothing(tokenizer, db, alice, tmp_path, monkeypatch):
    model = trained(tokenizer)

    def crash(path, **kwargs):
        open(f"{path}/adapter_model.safetensors", "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(TrainingError, match="disk full"):
        registry.save_version(db, tmp_path, alice, model, {})
    assert list((tmp_path / "alice").iterdir()) == []
    assert registry.list_versions(db, alice["id"]) == []


def test_failed_row_insert_removes_the_directory(tokenizer, db, alice, tmp_path,
                                                 monkeypatch):
    def fail(*args):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(registry, "_insert_row", fail)
    with pytest.raises(TrainingError):
        registry.save_version(db, tmp_path, alice, trained(tokenizer), {})
    assert list((tmp_path / "alice").iterdir()) == []


def test_rollback_validates(tokenizer, db, alice, tmp_path):
    bob = create_user(db, "bob")[0]
    model = trained(tokenizer)
    v1 = registry.save_version(db, tmp_path, alice, model, {})
    v2 = registry.save_version(db, tmp_path, alice, model, {})
    registry.promote(db, alice["id"], v2)
    registry.rollback(db, alice["id"], v1)
    assert get_user(db, alice["id"])["current_version"] == v1
    with pytest.raises(NotFound):
        registry.rollback(db, alice["id"], 7)
    with pytest.raises(NotFound):          # alice's version is not bob's
        registry.rollback(db, bob["id"], v1)


# ---- gate -------------------------------------------------------------------------------
def test_gate_decide_rules():
    settings = gate.GateSettings(promote_margin=0.1, kl_budget=0.5)
    base = {"reward_gain": 0.2, "candidate_kl": 0.1, "win_rate": 0.7, "baseline": "current"}
    assert gate.decide(base, settings)[0]
    assert not gate.decide({**base, "reward_gain": 0.05}, settings)[0]
    ok, reason = gate.decide({**base, "candidate_kl": 0.9}, settings)
    assert not ok and "KL" in reason
    assert not gate.decide({**base, "reward_gain": float("nan")}, settings)[0]
    ok, reason = gate.decide({**base, "reward_gain": 0.1}, settings)   # gain == margin
    assert not ok and "does not exceed the margin" in reason
    assert not gate.decide({**base, "reward_gain": 0.0},
                           gate.GateSettings(promote_margin=0.0))[0]  # an unchanged adapter


def test_gate_evaluate(tokenizer, tiny_model, tmp_path):
    model = policy.attach_lora(tiny_model, FAST)
    model.save_pretrained(tmp_path / "zero")          # B = 0: the base itself
    randomize_lora(model)
    settings = gate.GateSettings(max_completion_tokens=8)
    gate.load_adapter(model, tmp_path / "zero", "zero")
    vs_base = gate.evaluate(model, tokenizer, "default", None, PROMPTS, count_e, settings)
    assert vs_base["baseline"] == "base" and vs_base["n_prompts"] == 3
    assert vs_base.keys() == GateMetrics.__annotations__.keys()
    assert vs_base["candidate_kl"] > 0 and vs_base["baseline_kl"] == 0
    assert 0 <= vs_base["win_rate"] <= 1
    # A zero adapter answers exactly like the base: no KL, no gain, all ties.
    same = gate.evaluate(model, tokenizer, "zero", None, PROMPTS, count_e, settings)
    assert same["candidate_kl"] < 1e-6 and same["reward_gain"] == 0
    assert same["win_rate"] == 0.5
    vs_current = gate.evaluate(model, tokenizer, "default", "zero", PROMPTS, count_e, settings)
    assert vs_current["baseline"] == "current"
    assert vs_current["candidate_reward"] == vs_base["candidate_reward"]
    # Against the base as well, on the same prompts: the same figure as the base-gated run's.
    assert vs_base["win_rate_vs_base"] == vs_base["win_rate"]
    assert vs_current["win_rate_vs_base"] == vs_base["win_rate"]
    assert same["win_rate_vs_base"] == 0.5


def test_rl_stops_at_target_kl_and_keeps_the_weights_under_it(tokenizer):
    """The fresh LoRA (B = 0) has KL 0; after one update it is over a tiny target, so step 2
    stops RL and restores the weights from before that update."""
    model = make_tiny_model(tokenizer)
    settings = policy.PolicySettings(steps=3, group_size=4, prompts_per_step=2,
                                     max_completion_tokens=12, learning_rate=1e-2,
                                     target_kl=1e-6)
    model, records = policy.train_policy(model, tokenizer, PROMPTS, count_e, settings)
    assert [r["kl_stop"] for r in records] == [False, True]
    assert records[0]["kl"] <= 1e-6 < records[1]["kl"]
    assert all(v.abs().sum() == 0 for k, v in lora_state(model).items() if "lora_B" in k)




def _lora_b_max(model) -> float:
    return max(v.abs().max().item() for k, v in lora_state(model).items() if "lora_B" in k)


def test_a_warm_start_over_target_kl_is_scaled_back_and_rl_goes_on(tokenizer):
    """The warm start (B ~ 0.3) lands over the target; it is scaled back to
    backoff * target / kl of its change, and the next step measures that under the target."""
    settings = policy.PolicySettings(steps=2, group_size=4, prompts_per_step=2,
                                     max_completion_tokens=12, learning_rate=1e-4,
                                     target_kl=1e-3)
    model, records = policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS,
                                         count_e, settings, warm_start=randomize_lora)
    first, second = records
    kept = first["warm_start_kept"]
    assert first["kl"] > 1e-3 and kept == pytest.approx(0.7 * 1e-3 / first["kl"])
    assert 0 < kept < 1 and not first["warm_start_reverted"]
    assert 0 < second["kl"] <= 0.7e-3 and not second["kl_stop"]     # RL took its step
    assert second["warm_start_kept"] is None and not second["warm_start_reverted"]
    # B is the warm start's, scaled (plus one small step): not B = 0, not B ~ 0.3.
    assert _lora_b_max(model) == pytest.approx(kept * _b_after_warm_start(tokenizer),
                                               rel=0.05)


def _b_after_warm_start(tokenizer) -> float:
    """max |B| of the LoRA right after randomize_lora (what the scaled run started from)."""
    settings = policy.PolicySettings(steps=0, target_kl=0)
    model, _ = policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS, count_e,
                                   settings, warm_start=randomize_lora)
    return _lora_b_max(model)


def test_a_scaled_back_warm_start_still_over_target_kl_is_undone(tokenizer):
    """A backoff that keeps too much (20 x target / kl of the change) still measures over the
    target on step 2: the warm start is undone and RL goes on from the fresh LoRA."""
    settings = policy.PolicySettings(steps=3, group_size=4, prompts_per_step=2,
                                     max_completion_tokens=12, learning_rate=1e-4,
                                     target_kl=1e-3, warm_start_backoff=20)
    model, records = policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS,
                                         count_e, settings, warm_start=randomize_lora)
    assert records[0]["warm_start_kept"] and not records[0]["warm_start_reverted"]
    assert records[1]["kl"] > 1e-3 and records[1]["warm_start_reverted"]
    assert records[1]["warm_start_kept"] == 0.0
    assert len(records) == 3 and records[2]["kl"] == 0 and not records[2]["kl_stop"]
    assert _lora_b_max(model) < 1e-3           # B = 0 plus one small step: the base


def test_with_no_backoff_a_warm_start_over_target_kl_is_undone_at_once(tokenizer):
    settings = policy.PolicySettings(steps=2, group_size=4, prompts_per_step=2,
                                     max_completion_tokens=12, learning_rate=1e-4,
                                     target_kl=1e-3, warm_start_backoff=0)
    model, records = policy.train_policy(make_tiny_model(tokenizer), tokenizer, PROMPTS,
                                         count_e, settings, warm_start=randomize_lora)
    assert records[0]["warm_start_reverted"] and records[0]["kl"] > 1e-3
    assert len(records) == 2 and not records[1]["warm_start_reverted"]
    assert records[1]["kl"] == 0 and not records[1]["kl_stop"]     # B = 0 again: the base
    assert _lora_b_max(model) < 1e-3


def test_the_run_log_says_what_the_leash_did_to_the_warm_start():
    from assistant.worker import _warm_start_note

    scaled = _warm_start_note({"warm_start_kept": 0.19, "warm_start_reverted": False})
    assert "scaled back to 0.19 of its change" in scaled
    assert "undone" in _warm_start_note({"warm_start_kept": 0.0, "warm_start_reverted": True})
    assert _warm_start_note({"warm_start_kept": None, "warm_start_reverted": False}) == ""
