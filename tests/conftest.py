"""Shared fixtures: a tiny random Llama with the real tokenizer, temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real base model's cache, prepared once by `make test` (assistant prepare).
CACHE_DIR = Path(os.environ.get("ASSISTANT_TEST_CACHE", ROOT / "data" / "cache"))


@pytest.fixture(scope="session")
def tokenizer():
    from adapters.base_model import load_tokenizer

    return load_tokenizer("", CACHE_DIR)


def make_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer random Llama over the real tokenizer's vocabulary (about 3 M parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@pytest.fixture
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "assistant.db"


@pytest.fixture
def db(db_path):
    from feedback_store.db import open_db

    database = open_db(db_path)
    yield database
    database.close()
