"""The labelled critic control set, and how well a critic does on it.

`data/exemplars/critic_controls.jsonl` holds requests of the kinds the generator writes, each with
one good response and one response of each bad kind:
  wrong         fluent, on topic, false
  restated      echoes or paraphrases the request, adds nothing
  content_free  fits any request, says nothing ("There are many reasons.")
  runaway       answers, then starts a new prompt (labelled or not)
  drift         starts right, then wanders off
  truncated     stops mid-sentence
Half of the requests are for development (choosing signals and thresholds), half are held out
for the `critic_quality` check only. A critic is good when it ranks each good response above the
same request's bad ones and rejects the bad kinds a rule can recognise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import InputFileError, atomic_write_json, content_hash, read_jsonl, stable_hash
from .prompts import EXEMPLARS_DIR

CONTROLS = "critic_controls.jsonl"
BAD_KINDS = ("wrong", "restated", "content_free", "runaway", "drift", "truncated")
SPLITS = ("dev", "heldout")
RULE_KINDS = ("restated", "content_free", "runaway")  # bad kinds a text rule can recognise: each must be rejected
MAX_MISRANKED_SHOWN = 12


@dataclass(frozen=True)
class ControlItem:
    id: str
    split: str
    category: str
    instruction: str
    good: str
    bad: dict[str, str] = field(hash=False)

    def responses(self) -> dict[str, str]:
        return {"good": self.good, **self.bad}


def load(path: Path = EXEMPLARS_DIR / CONTROLS) -> tuple[ControlItem, ...]:
    rows = read_jsonl(path, required=("id", "split", "category", "instruction", "good", *BAD_KINDS))
    for line, row in enumerate(rows, start=1):
        if row["split"] not in SPLITS:
            raise InputFileError(f"{path}: row {line} ({row['id']}): split {row['split']!r} is not one of {SPLITS}")
    return tuple(
        ControlItem(r["id"], r["split"], r["category"], r["instruction"], r["good"], {k: r[k] for k in BAD_KINDS})
        for r in rows
    )


def control_pairs(items: Sequence[ControlItem]) -> list[dict[str, str]]:
    """Every (request, response) of `items`, good and bad, with its kind and item id."""
    return [
        {"item": item.id, "kind": kind, "instruction": item.instruction, "response": response}
        for item in items
        for kind, response in item.responses().items()
    ]


def quality_report(pairs: Sequence[dict[str, str]], verdicts: Sequence[Any]) -> dict[str, Any]:
    """Per bad kind: the share of items whose good response ranks above the bad one, and the share of bad
    responses rejected; overall pairwise accuracy; the good responses' acceptance; misranked examples.

    `verdicts[k]` judges `pairs[k]`: it has `accepted`, `rank_key` (higher is better) and `reason`."""
    good = {p["item"]: v for p, v in zip(pairs, verdicts, strict=True) if p["kind"] == "good"}
    per_kind: dict[str, dict[str, float]] = {}
    misranked = []
    for kind in BAD_KINDS:
        above, rejected = [], []
        for pair, verdict in zip(pairs, verdicts, strict=True):
            if pair["kind"] != kind:
                continue
            ranked_right = good[pair["item"]].rank_key > verdict.rank_key
            above.append(ranked_right)
            rejected.append(not verdict.accepted)
            if not ranked_right:
                misranked.append({"item": pair["item"], "kind": kind, "instruction": pair["instruction"],
                                  "bad_response": pair["response"], "bad_verdict": verdict.reason,
                                  "good_verdict": good[pair["item"]].reason})  # fmt: skip
        per_kind[kind] = {"good_above": _share(above), "rejected": _share(rejected), "pairs": len(above)}
    comparisons = sum(k["good_above"] * k["pairs"] for k in per_kind.values() if k["pairs"])
    total = sum(k["pairs"] for k in per_kind.values())
    return {
        "items": len(good),
        "pairwise_accuracy": comparisons / total if total else float("nan"),
        "good_accepted": _share([v.accepted for v in good.values()]),
        "per_kind": per_kind,
        "misranked": misranked[:MAX_MISRANKED_SHOWN],
        "misranked_count": len(misranked),
    }


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def cache_path(directory: Path, model_fingerprint: str, params: Any, split: str = "heldout") -> Path:
    """Where `controls_report` keeps its result for this model, critic (the parameters that change verdicts,
    and `critic_fingerprint`: its code and documents) and control set."""
    from .critic import critic_fingerprint

    key = {"model": model_fingerprint, "critic": params.model_dump(exclude={"batch_size"}),
           "version": critic_fingerprint(), "controls": content_hash(EXEMPLARS_DIR / CONTROLS),
           "split": split}  # fmt: skip
    return Path(directory) / f"controls-{stable_hash(key)[:16]}.json"


def controls_report(critic: Any, split: str = "heldout", cache: Path | None = None) -> dict[str, Any]:
    """`quality_report` of `critic` on one half of the control set. With `cache`, a file the caller names
    after everything the report depends on (model, critic parameters and version, the control set), an
    earlier report is reused: the scoring costs minutes on a CPU and gives the same numbers every time."""
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    pairs = control_pairs([item for item in load() if item.split == split])
    report = quality_report(pairs, critic.score([(p["instruction"], p["response"]) for p in pairs]))
    if cache is not None:
        atomic_write_json(cache, report)
    return report


def critic_quality(
    critic: Any, min_pairwise_accuracy: float, min_rejection: float, split: str = "heldout", cache: Path | None = None
) -> dict[str, Any]:
    """`controls_report` with the verdict of the critic_quality check: pairwise accuracy and the rejection of
    each rule-recognisable kind against their minimums."""
    report = controls_report(critic, split, cache)
    failures = []
    if not report["pairwise_accuracy"] >= min_pairwise_accuracy:
        failures.append(f"pairwise accuracy {report['pairwise_accuracy']:.3f} < {min_pairwise_accuracy}")
    for kind in RULE_KINDS:
        rejected = report["per_kind"][kind]["rejected"]
        if not rejected >= min_rejection:
            failures.append(f"{kind} rejected {rejected:.3f} < {min_rejection}")
    return report | {
        "split": split,
        "passed": not failures,
        "failures": failures,
        "min_pairwise_accuracy": min_pairwise_accuracy,
        "min_rejection": min_rejection,
    }
