"""Contamination guard: is this a clean *base* model, or one that was instruction/chat tuned?

Stage 1 must bootstrap from a base model; a generator, critic or judge that was instruction-tuned would
leak another model's alignment into the data. The guard reads everything that names or describes a model
and refuses unless the evidence says "base". It never loads weights.

Entry points
  * ``inspect_model(path_or_id, hub_id=None, names=(), extra_files=()) -> GuardVerdict`` for a hub id, a
    local directory (plain or a Hugging Face cache snapshot), a GGUF file, or a path that does not exist
    here (judged by its name).
  * ``inspect_adapter(adapter_dir) -> GuardVerdict`` before loading a PEFT adapter on top of a base model:
    the adapter's ``base_model_name_or_path`` (and its card's ``base_model``) go through the same guard.
  * ``apply_guard(verdict, allow_instruction_tuned, override_reason)`` raises ``ModelGuardError`` for a
    refused verdict unless overridden with a written reason (recorded in provenance by the caller).

Signals gathered
  names      the hub id; every path component of the model location: the model directory's own name (or,
             when it is generic such as a commit hash, ``snapshots`` or ``checkpoint-500``, the nearest
             meaningful folder above it), the ``org/name`` repo id recovered from a ``models--org--name``
             component of a Hugging Face cache path (``.../snapshots/<hash>``, ``.../blobs``), config.json
             name fields (``_name_or_path``, ``name_or_path``, ``_model_name_or_path``, ``model_name``),
             the card's ``model_name`` / ``model-index`` names, and GGUF ``general.name`` /
             ``general.basename`` / ``general.finetune``. Folders further up are only noted.
  card       README.md front matter: ``base_model`` (+ ``base_model_relation`` and ``base_model:<rel>:<id>``
             tags), ``tags``, ``pipeline_tag``, ``datasets``.
  tokenizer  a chat template (tokenizer_config.json ``chat_template``, chat_template.jinja/.json, GGUF
             ``tokenizer.chat_template``), chat special tokens (``<|im_start|>``, ``<start_of_turn>``,
             ``[INST]``, ``<|start_header_id|>``, ``<|assistant|>`` ...), the tokenizer's eos token.
  eos        ``generation_config.json`` / ``config.json`` ``eos_token_id`` mapped to token text through the
             tokenizer files, or, without them, through the known turn-end ids of the family's vocabulary.
  adapter    ``adapter_config.json``: the directory is an adapter, and its base model is guarded too.

Strengths and the decision rule
  decisive (one refuses): an instruction marker in any name (whole tokens after splitting on punctuation,
    camel case and letter/digit boundaries, so ``Instruct``, ``SmolLM2-360M-Instruct``, ``gemma-2-2b-it``
    and ``OpenAssistant`` are caught while ``digit``, ``iterate`` and ``italian`` are not; ``instruct`` and
    ``chat`` are also caught glued, as in ``openchat_3.5`` and ``chatglm3``); a known instruction-tuned
    family (``data/guard/instruction_tuned_families.json``: ``vicuna``, ``hermes``, ``phi-4``, ``Qwen3``
    without ``-Base``...); card chat/instruct tags; card instruction/chat datasets; ``pipeline_tag:
    conversational``; a card ``base_model`` that is itself instruction-tuned, or a ``base_model`` together
    with an instruction tag (e.g. ``trl``); an end-of-turn eos (generation config, config or tokenizer);
    a GGUF ``general.finetune`` with a marker; an adapter directory (as a model to generate or judge with)
    or an adapter whose base model is refused.
  weak (a note alone): a chat template; chat special tokens in the tokenizer (many base tokenizers ship
    both: Qwen2.5, Gemma 3, Llama 3.x); a card ``base_model`` with nothing chat-like ("a fine-tune of X");
    a ``trl`` tag alone.
  base evidence: a base marker in a name (``base``, ``pt``, ``pretrained``) or a known base family (``gemma``,
    ``llama``, ``qwen2.5``, ``pythia``...).
  Rule: (1) any decisive signal refuses; when some name also says "base", the reasons add that the signals
  disagree (e.g. a directory called ``*-base`` inside ``models--org--x-instruct``). (2) With no decisive
  signal, two or more different weak signals and no base evidence refuse as conflicting: an unknown model
  with chat features is not accepted silently. (3) Otherwise the model is accepted and every weak, base and
  informational signal is kept in ``notes``. Every reason names the signal and where it was read.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

FAMILIES_FILE = Path(__file__).resolve().parents[2] / "data" / "guard" / "instruction_tuned_families.json"
FAMILIES_REF = "data/guard/instruction_tuned_families.json"

# Markers matched against whole tokens of a name split on punctuation only ("gemma-3-270m-it", "xgen-8k-inst"):
# short enough that a camel-case or digit split would invent them ("it5", "Rlx").
WHOLE_TOKEN_MARKERS = frozenset({"it", "rl", "inst"})
# Markers matched against sub-tokens (split on punctuation, camel case and letter/digit boundaries).
SUBTOKEN_MARKERS = frozenset(
    {
        "instruct",
        "instruction",
        "instructions",
        "instructed",
        "chat",
        "chatbot",
        "sft",
        "rlhf",
        "rlaif",
        "rlvr",
        "dpo",
        "orpo",
        "kto",
        "ppo",
        "simpo",
        "grpo",
        "assistant",
        "tulu",
        "dialog",
        "dialogue",
        "conversational",
        "thinking",
        "think",
        "reasoning",
        "reasoner",
        "abliterated",
        "uncensored",
    }
)
INSTRUCTION_NAME_TOKENS = WHOLE_TOKEN_MARKERS | SUBTOKEN_MARKERS
BASE_SUBTOKENS = frozenset({"base", "pretrained", "pretrain"})
BASE_WHOLE_TOKENS = frozenset({"pt"})
# Card tags that only count together with a card base_model (TRL trains SFT/DPO models, but not only those).
WEAK_TAGS = frozenset({"trl"})
# End-of-turn tokens: a base model stops on end-of-text, a chat model also at the end of its turn.
TURN_END_TOKEN = re.compile(
    r"end_of_turn|im_end|eot_id|eom_id|<\|eot\|>|<\|end\|>|end_turn|<\|assistant\|>|</turn>", re.IGNORECASE
)
CHAT_TOKEN = re.compile(
    r"im_start|im_end|start_of_turn|end_of_turn|\[/?INST\]|start_header_id|eot_id|<\|(assistant|user|system)\|>"
    r"|START_OF_TURN|CHATBOT_TOKEN|USER_TOKEN|[|｜](Assistant|User)[|｜]|<\|end\|>",
    re.IGNORECASE,
)
CONFIG_NAME_FIELDS = ("_name_or_path", "name_or_path", "_model_name_or_path", "model_name")
GENERIC_DIR = re.compile(
    r"(snapshots?|blobs|refs|main|master|model|models|hf|hf-model|huggingface|transformers|pytorch|safetensors"
    r"|weights|ckpt|checkpoints?|checkpoint-?\d+|global-?step-?\d+|step-?\d+|final|best|latest|export|exported"
    r"|merged|output|outputs|out|[0-9a-f]{7,64}|v?\d+(\.\d+)*)"
)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
MAX_GGUF_FILES = 4


class ModelGuardError(ValueError):
    """The model is not a clean base model (or not a causal LM); the message says how to override."""


@dataclass
class Signal:
    kind: str  # e.g. name-marker, known-family, card-tags, turn-end-eos, chat-template, base-marker
    strength: str  # decisive | weak | base | info
    source: str  # where it was read: the name's origin, or file and field
    detail: str

    def text(self) -> str:
        return f"{self.source}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "strength": self.strength, "source": self.source, "detail": self.detail}


@dataclass
class GuardVerdict:
    refused: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    override_reason: str | None = None
    signals: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "refused": self.refused,
            "reasons": self.reasons,
            "notes": self.notes,
            "override_reason": self.override_reason,
            "signals": self.signals,
        }


# --- the data file -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    id: str
    pattern: re.Pattern[str]
    instruction_tuned: bool
    reason: str
    base_when: re.Pattern[str] | None = None


@dataclass(frozen=True)
class GuardData:
    families: tuple[Family, ...]
    datasets: tuple[tuple[re.Pattern[str], str], ...]
    turn_end_ids: tuple[dict[str, Any], ...]


@functools.lru_cache(maxsize=4)
def load_guard_data(path: Path = FAMILIES_FILE) -> GuardData:
    """Parse and validate the families file; a broken file is an error, never a silently weaker guard."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"contamination guard data {path} is unreadable: {exc}") from exc
    try:
        families = []
        for entry in raw["families"]:
            missing = {"id", "pattern", "instruction_tuned", "reason"} - entry.keys()
            if missing:
                raise RuntimeError(f"{path}: family entry {entry.get('id')!r} lacks {sorted(missing)}")
            families.append(
                Family(
                    id=entry["id"],
                    pattern=re.compile(entry["pattern"]),
                    instruction_tuned=bool(entry["instruction_tuned"]),
                    reason=entry["reason"],
                    base_when=re.compile(entry["base_when"]) if entry.get("base_when") else None,
                )
            )
        datasets = tuple((re.compile(d["pattern"]), d["reason"]) for d in raw.get("instruction_datasets", []))
        turn_end_ids = tuple(raw.get("turn_end_token_ids", []))
    except (KeyError, TypeError, AttributeError, re.error) as exc:
        raise RuntimeError(f"contamination guard data {path} is malformed: {exc!r}") from exc
    return GuardData(tuple(families), datasets, turn_end_ids)


# --- names -------------------------------------------------------------------------------------------------

_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def name_tokens(name: str) -> set[str]:
    """Lower-case tokens of a name split on punctuation and spaces ("Qwen2.5-0.5B" -> {"qwen2", "5", "0", "5b"})."""
    return {t for t in re.split(r"[^0-9a-z]+", name.lower()) if t}


def name_subtokens(name: str) -> set[str]:
    """Tokens further split on camel case and letter/digit boundaries ("SmolLM2" -> {"smol", "lm", "2"})."""
    out: set[str] = set()
    for piece in re.split(r"[^0-9A-Za-z]+", name):
        out.update(t.lower() for t in _CAMEL.findall(piece))
    return out


def normalise_name(name: str) -> str:
    return re.sub(r"[_\s]+", "-", name.strip().lower())


def instruction_markers(name: str, *, whole_tokens: bool = True) -> list[str]:
    """Instruction-tuning markers in a name, each with the token it was found in when glued."""
    tokens = name_tokens(name)
    hits = set(name_subtokens(name) & SUBTOKEN_MARKERS)
    if whole_tokens:
        hits |= tokens & WHOLE_TOKEN_MARKERS
    for tok in tokens:
        if "instruct" in tok and not hits & {"instruct", "instruction", "instructions", "instructed"}:
            hits.add(f"instruct (in {tok!r})")
        glued_chat = tok.endswith("chat") or (
            tok.startswith("chat") and not tok.startswith(("chatt", "chate", "chath"))
        )
        if glued_chat and tok != "chat" and "chat" not in hits:
            hits.add(f"chat (in {tok!r})")
    return sorted(hits)


def base_markers(name: str) -> list[str]:
    return sorted((name_subtokens(name) & BASE_SUBTOKENS) | (name_tokens(name) & BASE_WHOLE_TOKENS))


@dataclass
class NameFinding:
    name: str
    markers: list[str]
    instruct_families: list[Family]
    base_families: list[Family]
    base_markers: list[str]
    base_releases: list[Family]  # instruction-tuned families whose base_when matched

    @property
    def instruction_tuned(self) -> bool:
        return bool(self.markers or self.instruct_families)

    @property
    def says_base(self) -> bool:
        return bool(self.base_markers or self.base_families or self.base_releases)


def classify_name(name: str, data: GuardData | None = None) -> NameFinding:
    data = data or load_guard_data()
    norm = normalise_name(name)
    instruct, base, releases = [], [], []
    for fam in data.families:
        if not fam.pattern.search(norm):
            continue
        if not fam.instruction_tuned:
            base.append(fam)
        elif fam.base_when is not None and fam.base_when.search(norm):
            releases.append(fam)
        else:
            instruct.append(fam)
    return NameFinding(name, instruction_markers(name), instruct, base, base_markers(name), releases)


def hf_cache_repo_id(component: str) -> str | None:
    """`models--org--name` (a Hugging Face cache folder) -> `org/name`; None for anything else."""
    if not component.startswith("models--"):
        return None
    parts = component.split("--")[1:]
    if not parts or not all(parts):
        return None
    return parts[0] if len(parts) == 1 else parts[0] + "/" + "--".join(parts[1:])


def _is_generic_dir(component: str) -> bool:
    return bool(GENERIC_DIR.fullmatch(normalise_name(component)))


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.fullmatch(text)) and not text.startswith(".")


# --- small file readers ------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _added_tokens(tokenizer_json: Path) -> list[dict[str, Any]]:
    """The `added_tokens` list of a tokenizer.json, without parsing its (large) vocabulary when possible."""
    try:
        text = tokenizer_json.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    start = text.find('"added_tokens"')
    if start >= 0:
        bracket = text.find("[", start)
        try:
            tokens, _ = json.JSONDecoder().raw_decode(text, bracket)
            if isinstance(tokens, list):
                return [t for t in tokens if isinstance(t, dict)]
        except (json.JSONDecodeError, ValueError):
            pass
    try:
        return list(json.loads(text).get("added_tokens") or [])
    except (json.JSONDecodeError, AttributeError):
        return []


def read_card(path: Path) -> dict[str, Any]:
    """YAML front matter of a model card (README.md), {} when absent or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"\A\ufeff?---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", text, re.DOTALL)
    if not match:
        return {}
    try:
        import yaml

        meta = yaml.safe_load(match.group(1))
    except Exception:  # a malformed card must not break the guard; it just says nothing
        return {}
    return meta if isinstance(meta, dict) else {}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# GGUF metadata: only the key/value header is read (never tensor data). Value type ids come from gguf.
def _gguf_formats() -> dict[int, str]:
    from gguf import GGUFValueType as T

    return {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
            T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}  # fmt: skip


GGUF_KEEP = ("general.", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.tokens")


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """GGUF key/value metadata (general.*, chat template, eos id, token strings); tensors are not read."""
    from gguf import GGUFValueType

    formats = _gguf_formats()
    string_t, array_t = int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)

    def read_str(buf: Any, off: int, keep: bool) -> tuple[str | None, int]:
        (length,) = struct.unpack_from("<Q", buf, off)
        off += 8
        end = off + length
        if end > len(buf):
            raise ValueError("string runs past the end of the file")
        return (bytes(buf[off:end]).decode("utf-8", "replace") if keep else None), end

    def read_value(buf: Any, off: int, vtype: int, keep: bool) -> tuple[Any, int]:
        if vtype == string_t:
            return read_str(buf, off, keep)
        if vtype == array_t:
            item_type, count = struct.unpack_from("<IQ", buf, off)
            off += 12
            if item_type in formats and item_type != array_t:
                fmt = formats[item_type]
                size = struct.calcsize(fmt)
                if not keep:
                    return None, off + size * count
                return list(struct.unpack_from(f"<{count}{fmt[1:]}", buf, off)), off + size * count
            items: list[Any] = []
            if item_type == string_t:  # token lists: a tight loop, 262k strings for Gemma
                unpack, size = struct.unpack_from, len(buf)
                for _ in range(count):
                    (length,) = unpack("<Q", buf, off)
                    off += 8
                    if keep:
                        items.append(buf[off : off + length].decode("utf-8", "replace"))
                    off += length
                if off > size:
                    raise ValueError("string array runs past the end of the file")
                return (items if keep else None), off
            for _ in range(count):
                item, off = read_value(buf, off, item_type, keep)
                if keep:
                    items.append(item)
            return (items if keep else None), off
        if vtype not in formats:
            raise ValueError(f"unknown GGUF value type {vtype}")
        fmt = formats[vtype]
        return struct.unpack_from(fmt, buf, off)[0], off + struct.calcsize(fmt)

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        (version,) = struct.unpack_from("<I", buf, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        _, n_kv = struct.unpack_from("<QQ", buf, 8)
        off, out = 24, {}
        for _ in range(n_kv):
            key, off = read_str(buf, off, True)
            (vtype,) = struct.unpack_from("<I", buf, off)
            keep = bool(key) and key.startswith(GGUF_KEEP)
            value, off = read_value(buf, off + 4, vtype, keep)
            if keep:
                out[key] = value
        return out


# --- gathering ---------------------------------------------------------------------------------------------


class _Gatherer:
    def __init__(self, depth: int = 0) -> None:
        self.depth = depth  # how many references (adapter base, card base_model) were followed to get here
        self.data = load_guard_data()
        self.signals: list[Signal] = []
        self._seen: set[tuple[str, str, str]] = set()
        self._names_seen: set[tuple[str, str]] = set()
        self.self_names: list[str] = []

    def add(self, kind: str, strength: str, source: str, detail: str) -> None:
        key = (kind, source, detail)
        if key not in self._seen:
            self._seen.add(key)
            self.signals.append(Signal(kind, strength, source, detail))

    # names ----------------------------------------------------------------------------------------------
    def name(self, name: str, source: str) -> NameFinding | None:
        name = (name or "").strip()
        if not name or (name, source) in self._names_seen:
            return None
        self._names_seen.add((name, source))
        self.self_names.append(name)
        finding = classify_name(name, self.data)
        where = f"{source} {name!r}"
        if finding.markers:
            self.add("name-marker", "decisive", where, f"carries instruction-tuning marker(s) {finding.markers}")
        for fam in finding.instruct_families:
            self.add(
                "known-family",
                "decisive",
                where,
                f"matches known instruction-tuned family {fam.id!r} ({fam.reason}; {FAMILIES_REF})",
            )
        if not finding.instruction_tuned:
            for fam in finding.base_releases:
                self.add(
                    "known-family", "base", where, f"is the pretrained release of family {fam.id!r} ({fam.reason})"
                )
            for fam in finding.base_families:
                self.add("known-family", "base", where, f"matches known base family {fam.id!r}")
            if finding.base_markers:
                self.add("base-marker", "base", where, f"carries base-model marker(s) {finding.base_markers}")
        return finding

    def path_names(self, path: PurePath, label: str = "") -> None:
        """Names in a (possibly remote or nonexistent) path: the model's own name and any HF cache repo id."""
        prefix = f"{label} " if label else ""
        parts = [p for p in path.parts if p.strip("/\\") and not p.endswith(":\\")]
        if not parts:
            return
        for comp in parts:
            repo = hf_cache_repo_id(comp)
            if repo:
                self.name(repo, f"{prefix}HF cache repo id (from path component {comp!r})")
        is_file = path.suffix.lower() in (".gguf", ".safetensors", ".bin")
        last = len(parts) - 1
        own = last
        # a generic folder (commit hash, snapshots, checkpoint-500) does not name the model: look further up
        while own > 0 and last - own < 4 and _is_generic_dir(parts[own]) and not hf_cache_repo_id(parts[own]):
            own -= 1
        comp = PurePath(parts[own]).stem if own == last and is_file else parts[own]
        if not hf_cache_repo_id(comp) and not _is_generic_dir(comp):
            kind = ("file name" if is_file else "directory name") if own == last else "folder name"
            self.name(comp, f"{prefix}{kind}")
        for above in parts[:own]:
            hits = instruction_markers(above)
            if hits and not hf_cache_repo_id(above):
                self.add(
                    "path-above",
                    "info",
                    f"{prefix}folder {above!r} above the model",
                    f"carries marker(s) {hits} (noted only: a folder above the model is not its name)",
                )

    def name_or_path(self, value: str, source: str) -> None:
        value = str(value).strip()
        if not value:
            return
        if looks_like_hub_id(value) or not re.search(r"[\\/]", value):
            self.name(value, source)
        else:
            self.path_names(PurePath(value), source)

    # files ----------------------------------------------------------------------------------------------
    def local(self, path: Path) -> None:
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                self.path_names(path.absolute())
                if path.resolve() != path.absolute():
                    self.path_names(path.resolve())
                self.gguf(path)
                return
            path = path.parent
        adapter_cfg = path / "adapter_config.json"
        is_adapter = adapter_cfg.exists() or (path / "adapter_model.safetensors").exists()
        if is_adapter:
            self.adapter(path)
        for variant in dict.fromkeys([path.absolute(), path.resolve()]):
            self.path_names(variant)
        config = _read_json(path / "config.json")
        for key in CONFIG_NAME_FIELDS:
            if isinstance(config.get(key), str):
                self.name_or_path(config[key], f"config.json field {key}")
        adapter_base = _read_json(adapter_cfg).get("base_model_name_or_path") if is_adapter else None
        self.card(path / "README.md", is_adapter=is_adapter, adapter_base=adapter_base)
        vocab = self.tokenizer(path)
        self.eos_ids(path, config, vocab)
        for gguf_file in sorted(path.glob("*.gguf"))[:MAX_GGUF_FILES]:
            self.gguf(gguf_file)

    def adapter(self, path: Path) -> None:
        self.add(
            "adapter",
            "decisive",
            f"{path.name}/adapter_config.json",
            "this is a PEFT/LoRA adapter; adapters are trained outputs and may not generate or judge training data",
        )
        base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
        if isinstance(base, str) and base.strip():
            sub = _inspect_reference(base, self.depth + 1)
            for reason in sub.reasons:
                self.add(
                    "adapter-base",
                    "decisive",
                    f"adapter_config.json base_model_name_or_path {base!r}",
                    f"the base model is refused: {reason}",
                )

    def card(self, readme: Path, *, is_adapter: bool = False, adapter_base: Any = None) -> None:
        meta = read_card(readme)
        if meta:
            has_gguf = any(readme.parent.glob("*.gguf"))
            self.card_meta(
                meta, "README.md", is_adapter=is_adapter, adapter_base=adapter_base, files_quantized=has_gguf
            )

    def card_meta(
        self,
        meta: dict[str, Any],
        src: str,
        *,
        is_adapter: bool = False,
        adapter_base: Any = None,
        files_quantized: bool = False,
    ) -> None:
        for key in ("model_name", "model_id"):
            if isinstance(meta.get(key), str):
                self.name_or_path(meta[key], f"{src} {key}")
        for entry in _as_list(meta.get("model-index")):
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self.name_or_path(entry["name"], f"{src} model-index name")
        tags = [str(t) for t in _as_list(meta.get("tags"))]
        relation = str(meta.get("base_model_relation") or "").lower()
        bases = [str(b) for b in _as_list(meta.get("base_model")) if b]
        for tag in tags:
            m = re.fullmatch(r"base_model:(?:(\w+):)?(.+)", tag)
            if m:
                relation = relation or (m.group(1) or "").lower()
                if m.group(2) not in bases:
                    bases.append(m.group(2))
        strong_tags, weak_tags = [], []
        for tag in tags:
            if tag.startswith("base_model:"):
                continue
            norm = normalise_name(tag)
            if norm in WEAK_TAGS:
                weak_tags.append(tag)
            elif instruction_markers(tag, whole_tokens=False) or norm in ("alignment-handbook", "chatml"):
                strong_tags.append(tag)
            elif norm in ("pretrained", "base-model", "pretrain"):
                self.add("card-tags", "base", f"{src} tags", f"tag {tag!r} says pretrained")
        if strong_tags:
            self.add("card-tags", "decisive", f"{src} tags", f"chat/instruction tag(s) {strong_tags}")
        datasets = [str(d) for d in _as_list(meta.get("datasets"))]
        instr_data = [(d, why) for d in datasets for pat, why in self.data.datasets if pat.search(normalise_name(d))]
        instr_data = list({d: (d, why) for d, why in instr_data}.values())
        if instr_data:
            listed = ", ".join(f"{d!r} ({why})" for d, why in instr_data)
            self.add("card-datasets", "decisive", f"{src} datasets", f"trained on instruction/chat data: {listed}")
        if str(meta.get("pipeline_tag") or "").lower() == "conversational":
            self.add("card-pipeline-tag", "decisive", f"{src} pipeline_tag", "'conversational': a chat model")
        if is_adapter:  # an adapter's card: base_model is the model it adapts (adapter() checked its config's)
            for base in (b for b in bases if b != adapter_base):
                for reason in _inspect_reference(base, self.depth + 1).reasons:
                    self.add(
                        "adapter-base", "decisive", f"{src} base_model {base!r}", f"the base model is refused: {reason}"
                    )
            return
        quantized = (
            relation == "quantized"
            or files_quantized
            or "quantized_by" in meta
            or any(normalise_name(t) in ("gguf", "gptq", "awq", "exl2", "quantized") for t in tags)
        )
        own = {normalise_name(PurePath(n).name) for n in self.self_names}
        for base in bases:
            source = f"{src} base_model"
            if quantized or relation in ("merge",) or normalise_name(PurePath(base).name) in own:
                # a quantization or mirror of `base`: the same model, so `base` is one of its names
                self.name_or_path(base, f"{source} (same weights, {relation or 'quantized/mirror'})")
                continue
            sub = _inspect_reference(base, self.depth + 1)
            if sub.refused:
                self.add(
                    "card-base-model",
                    "decisive",
                    f"{source} {base!r}",
                    f"fine-tuned from a model the guard refuses: {sub.reasons[0]}",
                )
            elif strong_tags or instr_data or weak_tags:
                what = strong_tags + weak_tags + [d for d, _ in instr_data]
                self.add(
                    "card-base-model",
                    "decisive",
                    f"{source} {base!r}",
                    f"a fine-tune of {base!r} with chat/instruction tags or datasets {what}",
                )
            else:
                self.add(
                    "card-base-model",
                    "weak",
                    f"{source} {base!r}",
                    f"the card says this model is fine-tuned ({relation or 'relation not given'}) from {base!r}",
                )
        if weak_tags and not bases:
            self.add(
                "card-tags", "weak", f"{src} tags", f"tag(s) {weak_tags} (fine-tuning library) without a base_model"
            )

    def tokenizer(self, path: Path) -> dict[int, str]:
        tok_cfg = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        templates = []
        if tok_cfg.get("chat_template"):
            templates.append("tokenizer_config.json chat_template")
        for name in ("chat_template.jinja", "chat_template.json"):
            if (path / name).exists():
                templates.append(name)
        if (path / "additional_chat_templates").is_dir():
            templates.append("additional_chat_templates/")
        if templates:
            self.add(
                "chat-template",
                "weak",
                ", ".join(templates),
                "the tokenizer carries a chat template (not decisive alone: many base tokenizers do)",
            )
        vocab: dict[int, str] = {}
        specials: dict[str, str] = {}
        for idx, spec in (tok_cfg.get("added_tokens_decoder") or {}).items():
            if isinstance(spec, dict) and str(idx).isdigit():
                vocab[int(idx)] = str(spec.get("content", ""))
                specials[vocab[int(idx)]] = "tokenizer_config.json added_tokens_decoder"
        for spec in _added_tokens(path / "tokenizer.json") if (path / "tokenizer.json").exists() else []:
            if isinstance(spec.get("id"), int):
                vocab[spec["id"]] = str(spec.get("content", ""))
                specials.setdefault(vocab[spec["id"]], "tokenizer.json added_tokens")
        for source_name, cfg in (("tokenizer_config.json", tok_cfg), ("special_tokens_map.json", special_map)):
            for key in ("additional_special_tokens", "extra_special_tokens"):
                value = cfg.get(key)
                items = value.values() if isinstance(value, dict) else _as_list(value)
                for item in items:
                    text = item.get("content") if isinstance(item, dict) else item
                    if isinstance(text, str):
                        specials.setdefault(text, f"{source_name} {key}")
            eos = cfg.get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str) and TURN_END_TOKEN.search(eos):
                self.add(
                    "turn-end-eos",
                    "decisive",
                    f"{source_name} eos_token",
                    f"{eos!r} is an end-of-turn token: a chat model",
                )
        chat = sorted({t for t in specials if CHAT_TOKEN.search(t)})
        if chat:
            where = sorted({specials[t] for t in chat})
            self.add(
                "chat-tokens",
                "weak",
                ", ".join(where),
                f"chat special tokens {chat[:6]}{' ...' if len(chat) > 6 else ''} (not decisive alone: "
                "base vocabularies often reserve them)",
            )
        return vocab

    def eos_ids(self, path: Path, config: dict[str, Any], vocab: dict[int, str]) -> None:
        model_types = {str(config.get("model_type") or "")}
        text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        model_types.add(str(text_cfg.get("model_type") or ""))
        vocab_size = config.get("vocab_size") or text_cfg.get("vocab_size")
        known: dict[int, tuple[str, str]] = {}
        for entry in self.data.turn_end_ids:
            if not model_types & set(entry.get("model_types", [])):
                continue
            sizes = entry.get("vocab_sizes") or []
            if sizes and vocab_size not in sizes:
                continue
            for idx, text in entry["ids"].items():
                known[int(idx)] = (text, entry.get("reason", ""))
        for file_name, cfg in (("generation_config.json", _read_json(path / "generation_config.json")),
                               ("config.json", config)):  # fmt: skip
            ids = [i for i in _as_list(cfg.get("eos_token_id")) if isinstance(i, int)]
            texts, turn_ends = [], []
            for i in ids:
                text = vocab.get(i) or (known[i][0] if i in known else str(i))
                texts.append(text)
                if TURN_END_TOKEN.search(text):
                    turn_ends.append(f"{i} {text}" + (f" ({known[i][1]})" if i not in vocab and i in known else ""))
            if turn_ends:
                self.add(
                    "turn-end-eos",
                    "decisive",
                    f"{file_name} eos_token_id {ids}",
                    f"stops on end-of-turn token(s) {turn_ends}: a chat model",
                )

    def gguf(self, path: Path) -> None:
        src = path.name
        try:
            meta = read_gguf_metadata(path)
        except Exception as exc:  # unreadable metadata: say so, decide on the rest
            self.add("gguf", "info", src, f"GGUF metadata unreadable ({exc})")
            return
        for key in ("general.name", "general.basename", "general.source.huggingface.repository", "general.repo_url"):
            value = meta.get(key)
            if isinstance(value, str) and value.strip():
                self.name_or_path(value.rsplit("huggingface.co/", 1)[-1], f"{src} {key}")
        finetune = meta.get("general.finetune")
        if isinstance(finetune, str) and finetune.strip():
            hits = instruction_markers(finetune)
            if hits:
                self.add(
                    "gguf-finetune",
                    "decisive",
                    f"{src} general.finetune",
                    f"{finetune!r} marks a chat/instruction fine-tune ({hits})",
                )
            elif base_markers(finetune):
                self.add("base-marker", "base", f"{src} general.finetune", f"{finetune!r} says base")
        card: dict[str, Any] = {"tags": [t for t in _as_list(meta.get("general.tags")) if isinstance(t, str)]}
        datasets = [d for d in _as_list(meta.get("general.datasets")) if isinstance(d, str)]
        datasets += [
            v for k, v in meta.items() if re.fullmatch(r"general\.dataset\.\d+\.name", k) and isinstance(v, str)
        ]
        card["datasets"] = datasets
        # general.base_model.<i>.repo_url names the base better than its display name; keep one per base model
        by_index: dict[str, str] = {}
        for key, value in meta.items():
            m = re.fullmatch(r"general\.base_model\.(\d+)\.(repo_url|name)", key)
            if m and isinstance(value, str) and (m.group(2) == "repo_url" or m.group(1) not in by_index):
                by_index[m.group(1)] = value.rsplit("huggingface.co/", 1)[-1]
        card["base_model"] = list(by_index.values())
        self.card_meta(card, f"{src} metadata")
        if meta.get("tokenizer.chat_template"):
            self.add(
                "chat-template",
                "weak",
                f"{src} tokenizer.chat_template",
                "the GGUF carries a chat template (not decisive alone: many base models do)",
            )
        tokens = meta.get("tokenizer.ggml.tokens") or []
        chat = sorted({t for t in tokens if isinstance(t, str) and t[:1] in "<[" and CHAT_TOKEN.search(t)})
        if chat:
            self.add(
                "chat-tokens",
                "weak",
                f"{src} tokenizer.ggml.tokens",
                f"chat special tokens {chat[:6]}{' ...' if len(chat) > 6 else ''} (not decisive alone)",
            )
        eos = meta.get("tokenizer.ggml.eos_token_id")
        if isinstance(eos, int) and 0 <= eos < len(tokens) and TURN_END_TOKEN.search(str(tokens[eos])):
            self.add(
                "turn-end-eos",
                "decisive",
                f"{src} tokenizer.ggml.eos_token_id {eos}",
                f"{tokens[eos]!r} is an end-of-turn token: a chat model",
            )

    # decision -------------------------------------------------------------------------------------------
    def verdict(self) -> GuardVerdict:
        decisive = [s for s in self.signals if s.strength == "decisive"]
        weak = [s for s in self.signals if s.strength == "weak"]
        base = [s for s in self.signals if s.strength == "base"]
        reasons = [s.text() for s in decisive]
        if decisive and base:
            reasons.append(
                "signals disagree: " + "; ".join(s.text() for s in base) + " (refused: a decisive instruction-tuning "
                "signal outweighs a base-looking name)"
            )
        weak_kinds = list(dict.fromkeys(s.kind for s in weak))
        if not decisive and len(weak_kinds) >= 2 and not base:
            reasons.extend(s.text() for s in weak)
            reasons.append(
                f"conflicting signals: {len(weak_kinds)} different weak signals ({', '.join(weak_kinds)}) and no name "
                "says base (no base marker, no known base family); an unknown model with chat features is not "
                "accepted silently"
            )
        notes = [s.text() for s in self.signals if s.strength != "decisive" and s.text() not in reasons]
        if not reasons and not base:
            notes.append(
                "no known family and no base marker in any name; accepted because no instruction-tuning "
                "signal was found"
            )
        return GuardVerdict(
            refused=bool(reasons), reasons=reasons, notes=notes, signals=[s.as_dict() for s in self.signals]
        )


MAX_REFERENCE_DEPTH = 3


def _inspect_reference(ref: str, depth: int) -> GuardVerdict:
    """Guard a model named by another file (an adapter's base, a card's base_model): local if it exists here."""
    candidate = Path(ref).expanduser()
    if depth <= MAX_REFERENCE_DEPTH and not looks_like_hub_id(ref) and candidate.exists():
        return _inspect(ref, depth=depth)
    return _inspect(ref, depth=depth, files=False)


def inspect_model(
    path_or_id: str | os.PathLike[str],
    *,
    hub_id: str | None = None,
    names: Iterable[str] = (),
    extra_files: Iterable[str | os.PathLike[str]] = (),
) -> GuardVerdict:
    """Guard a model: a hub id, a local directory or GGUF file, or a path that does not exist here.

    `hub_id`: the hub id a local snapshot was downloaded from. `names`: other names the caller knows the
    model by (e.g. the embedded model's name). `extra_files`: more files describing the same model (e.g. the
    GGUF the embedded model was converted from). Nothing here loads weights.
    """
    return _inspect(path_or_id, hub_id=hub_id, names=names, extra_files=extra_files)


def _inspect(
    path_or_id: str | os.PathLike[str],
    *,
    hub_id: str | None = None,
    names: Iterable[str] = (),
    extra_files: Iterable[str | os.PathLike[str]] = (),
    depth: int = 0,
    files: bool = True,
) -> GuardVerdict:
    g = _Gatherer(depth)
    if hub_id:
        g.name(hub_id, "hub id")
    for name in names:
        g.name(name, "model name")
    target = os.fspath(path_or_id)
    candidate = Path(target).expanduser()
    if files and target and candidate.exists():
        g.local(candidate)
    elif looks_like_hub_id(target):
        g.name(target, "hub id")
        g.add("scope", "info", f"hub id {target!r}", "no local files: judged by the name alone")
    else:
        g.path_names(PurePath(target))
        g.add("scope", "info", f"path {target!r}", "not read here: judged by its name alone")
    for extra in extra_files:
        if Path(extra).exists():
            g.local(Path(extra))
    return g.verdict()


def inspect_model_dir(path: Path, name: str) -> GuardVerdict:
    """Backward-compatible form: guard the model in `path`, also known as `name`."""
    return inspect_model(path, names=[name] if name and name != Path(path).name else [])


def inspect_adapter(adapter_dir: str | os.PathLike[str]) -> GuardVerdict:
    """Guard the base model of a PEFT adapter before loading the adapter on top of it.

    Reads `adapter_config.json` `base_model_name_or_path` (and the adapter card's `base_model`) and runs the
    same guard on it: a local path that exists here is inspected with its files, anything else by its name
    (a path from another host, a hub id). Refused when the base model is refused, or when the directory is not
    an adapter or does not say which model it adapts. Being an adapter is not itself a reason here.
    """
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = _read_json(cfg_path)
    if not cfg:
        return GuardVerdict(refused=True, reasons=[f"{cfg_path}: missing or unreadable; not a PEFT adapter directory"])
    base = cfg.get("base_model_name_or_path")
    card_bases = [str(b) for b in _as_list(read_card(adapter_dir / "README.md").get("base_model")) if b]
    refs = list(dict.fromkeys(([base] if isinstance(base, str) and base.strip() else []) + card_bases))
    if not refs:
        return GuardVerdict(
            refused=True,
            reasons=[f"{cfg_path}: base_model_name_or_path is empty, so the adapter's base model cannot be checked"],
        )
    reasons, notes, signals = [], [], []
    for ref in refs:
        source = "adapter_config.json base_model_name_or_path" if ref == base else "README.md base_model"
        sub = _inspect_reference(ref, 1)
        reasons += [f"{source} {ref!r}: {r}" for r in sub.reasons]
        notes += [f"{source} {ref!r}: {n}" for n in sub.notes]
        signals += [dict(s, source=f"{source} {ref!r} -> {s['source']}") for s in sub.signals]
    return GuardVerdict(refused=bool(reasons), reasons=reasons, notes=notes, signals=signals)


def apply_guard(verdict: GuardVerdict, allow_instruction_tuned: bool, override_reason: str | None) -> None:
    """Raise ModelGuardError for a refused verdict, unless overridden with a non-empty written reason."""
    if not verdict.refused:
        return
    if allow_instruction_tuned:
        if not (override_reason or "").strip():
            raise ModelGuardError(
                "allow_instruction_tuned=true needs a non-empty override_reason (it is recorded in provenance)"
            )
        verdict.override_reason = override_reason
        verdict.notes.append("guard overridden: " + str(override_reason))
        return
    numbered = "; ".join(f"({i}) {r}" for i, r in enumerate(verdict.reasons, 1))
    raise ModelGuardError(
        "refusing a model that is not a clean base model (contamination guard): "
        + numbered
        + ". Generating or judging with an instruction-tuned model leaks its alignment into the data. "
        "If this is legitimate (e.g. a base model with a misleading name), set "
        "allow_instruction_tuned=true and override_reason='...' on the base_model resource."
    )
