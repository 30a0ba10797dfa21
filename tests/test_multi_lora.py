"""Fused multi-LoRA decoding against PEFT, the reference: same logits for a batch mixing base
rows and adapters of different ranks, scalings (rsLoRA, alpha_pattern) and target modules."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from assistant.multi_lora import MultiLora
from feedback_store.errors import ModelError
from tests.conftest import make_tiny_model

# Float32 on both paths; they differ only in the order of additions (and where the scaling
# multiplies), which moves logits of size ~1-10 by ~1e-6.
ATOL = 1e-4

ADAPTERS = {   # name: LoRA settings; ranks 2, 4, 8 and 16, pads to 16 in the fused stacks
    "a": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "b": dict(r=16, lora_alpha=16, use_rslora=True,
              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                              "down_proj"]),
    "c": dict(r=2, lora_alpha=32, target_modules=["o_proj", "down_proj"]),
    "d": dict(r=8, lora_alpha=16, target_modules=["q_proj", "up_proj"],
              alpha_pattern={"up_proj": 4}),
}


def save_adapter(tokenizer, path, seed: int, **settings) -> None:
    """A PEFT LoRA with random A and B (B is zero at PEFT's init, which would test nothing)."""
    model = get_peft_model(make_tiny_model(tokenizer), LoraConfig(**settings))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def adapter_dirs(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for seed, (name, settings) in enumerate(ADAPTERS.items()):
        save_adapter(tokenizer, root / name, seed, **settings)
    return root


def batch(tokenizer, rows: int):
    texts = [f"row {i}: " + f"tell me something about the number {i}. " * (1 + i % 3)
             for i in range(rows)]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return enc["input_ids"], enc["attention_mask"], positions


def test_fused_logits_equal_peft_for_a_mixed_batch(tokenizer, adapter_dirs):
    routing = ["__base__", "a", "b", "__base__", "c", "d", "b", "a"]
    ids, mask, positions = batch(tokenizer, len(routing))

    reference = PeftModel.from_pretrained(make_tiny_model(tokenizer), adapter_dirs / "a",
                                          adapter_name="a")
    for name in "bcd":
        reference.load_adapter(adapter_dirs / name, adapter_name=name)
    with torch.inference_mode():
        want = reference(input_ids=ids, attention_mask=mask, position_ids=positions,
                         adapter_names=routing).logits

    model = make_tiny_model(tokenizer)
    fused = MultiLora(model, capacity=4)
    slots = {"__base__": 0} | {name: fused.load(name, adapter_dirs / name) for name in "abcd"}
    with torch.inference_mode(), fused.route([slots[n] for n in routing]):
        got = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    base = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits

    assert torch.allclose(got, want, atol=ATOL, rtol=0)
    # the adapters really change the logits, and outside route() the model is the base
    for row, name in enumerate(routing):
        assert torch.equal(got[row], base[row]) == (name == "__base__")


def test_one_decode_step_on_a_kv_cache_equals_peft(tokenizer, adapter_dirs):
    """The decoding shape: one new position per row (input (rows, 1, in))."""
    routing = ["d", "__base__", "c"]
    ids, mask, positions = batch(tokenizer, 3)
    step = torch.tensor([[11], [12], [13]])
    step_pos = positions[:, -1:] + 1
    step_mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)

    def run(model, **route):
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        use_cache=True, **route)
            return model(input_ids=step, attention_mask=step_mask, position_ids=step_pos,
                         past_key_values=out.past_key_values, **route).logits

    reference = PeftModel.from_pretrained(make_tiny_model(tokenizer), adapter_dirs / "c",
                                          adapter_name="c")
    reference.load_adapter(adapter_dirs / "d", adapter_name="d")
    want = run(reference, adapter_names=routing)
    model = make_tiny_model(tokenizer)
    fused = MultiLora(model, capacity=2)
    slots = {"__base__": 0, "c": fused.load("c", adapter_dirs / "c"),
             "d": fused.load("d", adapter_dirs / "d")}
    with fused.route([slots[n] for n in routing]):
        got = run(model)
    assert torch.allclose(got, want, atol=ATOL, rtol=0)


def test_unload_frees_the_slot_and_a_new_adapter_reuses_it(tokenizer, adapter_dirs):
    ids, mask, positions = batch(tokenizer, 1)
    model = make_tiny_model(tokenizer)
    fused = MultiLora(model, capacity=1)

    def logits(name: str):
        slot = fused.load(name, adapter_dirs / name)
        with torch.inference_mode(), fused.route([slot]):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        fused.unload(name)
        return slot, out

    slot_b, after_b = logits("b")
    slot_c, after_c = logits("c")          # c targets fewer modules: b's must be cleared
    assert slot_b == slot_c == 1
    alone = make_tiny_model(tokenizer)
    only_c = MultiLora(alone, capacity=1)
    with torch.inference_mode(), only_c.route([only_c.load("c", adapter_dirs / "c")]):
        want = alone(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.allclose(after_c, want, atol=1e-6, rtol=0)
    fused.close()
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(plain, make_tiny_model(tokenizer)(
        input_ids=ids, attention_mask=mask, position_ids=positions).logits)


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "DoRA"),
    ({"peft_type": "IA3"}, "not LoRA"),
    ({"r": 3}, "does not match"),
])
def test_adapters_the_fused_path_cannot_serve_are_refused(tokenizer, adapter_dirs, tmp_path,
                                                          change, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapter_dirs / "a", bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, **change}))
    fused = MultiLora(make_tiny_model(tokenizer))
    with pytest.raises(ModelError, match=message):
        fused.load("bad", bad)
    assert fused.slots == {}


def test_an_adapter_for_another_base_is_refused(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "other")
    with pytest.raises(ModelError, match="does not fit the base"):
        MultiLora(make_tiny_model(tokenizer)).load("other", tmp_path / "other")


def test_a_corrupt_adapter_file_is_a_model_error_without_paths(tokenizer, adapter_dirs,
                                                                tmp_path):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(adapter_dirs / "a", bad)
    (bad / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="could not read adapter corrupt") as info:
        MultiLora(make_tiny_model(tokenizer)).load("corrupt", bad)
    assert str(tmp_path) not in str(info.value)
