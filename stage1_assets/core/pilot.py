"""Pilot iterations and their session manifests.

Each pilot materialization is an iteration under `data/pilot/<NNN>/` with its pairs, QC summary
and a session manifest (parameters, model fingerprint, prompt version, seed, pass/fail). Scale
generation reuses the parameters of the latest iteration whose checks all passed.

Iteration numbers are allocated atomically: a run takes the next number by creating its folder
(`mkdir` fails if another run took it first, and the run tries the next one), and marks it with
`run.json` (its run id and status). The manifest is written only in the run's final commit, with
its provenance; a run that fails marks its `run.json` failed, and a folder without a manifest is
never a session for shards, whatever happened to its run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import layout, liveness
from .artifacts import ContractError, Staging, check_fields, verify
from .config import CriticParams, InstructionSampling, QCThresholds, ResponseSampling
from .io import atomic_write_json, read_json
from .pairs import GenerationParams

log = logging.getLogger(__name__)

MANIFEST = "session_manifest.json"
RUN_FILE = "run.json"
PRODUCER = "pilot_data"
# what every manifest holds (shards rely on these) and what manifests of this code version hold besides
MANIFEST_FIELDS = {"iteration": str, "checks_passed": bool, "model_fingerprint": str, "generation": dict,
                   "pairs_sha256": str}  # fmt: skip
MANIFEST_OPTIONAL_FIELDS = {"run_id": str, "prompt_version": str, "critic_version": str, "qc_thresholds": dict,
                            "seed": int, "count": int, "test_set_sha256": str}  # fmt: skip
GENERATION_FIELDS = {"instruction": dict, "response": dict, "critic": dict, "batch_size": int}
GENERATION_MODELS = {"instruction": InstructionSampling, "response": ResponseSampling, "critic": CriticParams}


def generation_params(data: Mapping[str, Any], source: str | Path) -> GenerationParams:
    """The inverse of `GenerationParams.as_dict`: refuses a missing or mistyped key, naming `source` and the key."""
    check_fields(data, source, GENERATION_FIELDS)
    parts = {}
    for name, model in GENERATION_MODELS.items():
        try:
            parts[name] = model(**data[name])
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ContractError(f"{source}: generation.{name}: {problems}") from None
    return GenerationParams(parts["instruction"], parts["response"], parts["critic"], data["batch_size"])


@dataclass(frozen=True)
class SessionManifest:
    """A pilot iteration's session manifest (`pilot/<NNN>/session_manifest.json`): what shards reuse.

    The five fields without a default are what every manifest holds; the others are written by every
    pilot of this code (`to_dict` leaves out those that are None, so an older manifest round-trips).
    """

    iteration: str
    checks_passed: bool
    model_fingerprint: str
    generation: GenerationParams
    pairs_sha256: str
    run_id: str | None = None
    prompt_version: str | None = None
    critic_version: str | None = None
    qc_thresholds: dict[str, Any] | None = None
    seed: int | None = None
    count: int | None = None
    test_set_sha256: str | None = None

    # the order `pilot_data` has always written the keys in
    KEY_ORDER = ("iteration", "run_id", "model_fingerprint", "prompt_version", "generation", "critic_version",
                 "qc_thresholds", "seed", "count", "test_set_sha256", "pairs_sha256", "checks_passed")  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path = MANIFEST, what: str = "") -> SessionManifest:
        check_fields(data, source, MANIFEST_FIELDS, MANIFEST_OPTIONAL_FIELDS, what)
        values = {k: data[k] for k in (*MANIFEST_FIELDS, *MANIFEST_OPTIONAL_FIELDS) if k in data}
        return cls(**values | {"generation": generation_params(data["generation"], source)})

    def to_dict(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in self.KEY_ORDER}
        values["generation"] = self.generation.as_dict()
        return {k: v for k, v in values.items() if v is not None or k in MANIFEST_FIELDS}


class SessionRefused(RuntimeError):
    """No pilot iteration's session may be used by a shard (none passed, the one named failed, other model...)."""


def _numbers(pilot_dir: Path) -> list[int]:
    if not pilot_dir.exists():
        return []
    return [int(p.name) for p in pilot_dir.iterdir() if p.name.isdigit() and len(p.name) >= 3 and p.is_dir()]


def next_iteration(pilot_dir: Path) -> str:
    """The number after the highest existing iteration (not reserved: see `allocate_iteration`)."""
    return f"{max(_numbers(pilot_dir), default=0) + 1:03d}"


def allocate_iteration(pilot_dir: Path, run_id: str) -> str:
    """Reserve the next iteration number for `run_id`: concurrent runs always get distinct numbers."""
    pilot_dir.mkdir(parents=True, exist_ok=True)
    number = max(_numbers(pilot_dir), default=0) + 1
    while True:
        iteration = f"{number:03d}"
        try:
            os.mkdir(pilot_dir / iteration)  # atomic: exactly one run creates it
        except FileExistsError:
            number += 1
            continue
        atomic_write_json(pilot_dir / iteration / RUN_FILE, {
            "iteration": iteration, "run_id": run_id, "status": "running", "started_at": time.time(),
            "worker": liveness.identity(),
        })  # fmt: skip
        return iteration


def mark_failed(pilot_dir: Path, iteration: str, run_id: str, error: BaseException | str) -> Path:
    """Record that `run_id` failed in `iteration` (its folder never gets a manifest, so no shard uses it)."""
    return atomic_write_json(pilot_dir / iteration / RUN_FILE, {
        "iteration": iteration, "run_id": run_id, "status": "failed", "failed_at": time.time(),
        "error": f"{type(error).__name__}: {error}"[:2000] if isinstance(error, BaseException) else str(error),
    })  # fmt: skip


def read_manifest(path: Path, check: bool = True) -> SessionManifest:
    """One session manifest; with `check`, first verified against its sidecar (the pilot's commit wrote both)."""
    if check:
        verify(path, PRODUCER)
    what = f"; re-materialize {PRODUCER} (or delete {path.parent})"
    return SessionManifest.from_dict(read_json(path, what=what), path, what)


def manifests(pilot_dir: Path, check: bool = False) -> list[SessionManifest]:
    """All iterations' manifests, oldest first (`check`: each verified against its sidecar, or an error)."""
    if not pilot_dir.exists():
        return []
    return [read_manifest(path, check) for path in sorted(pilot_dir.glob(f"[0-9][0-9][0-9]/{MANIFEST}"))]


def latest_passing_manifest(pilot_dir: Path, check: bool = False) -> SessionManifest | None:
    passing = [m for m in manifests(pilot_dir, check) if m.checks_passed]
    return passing[-1] if passing else None


def session_for_shards(
    pilot_dir: Path, iteration: str | None, fingerprint: str, critic_version: str
) -> SessionManifest:
    """The session manifest a shard must reuse: the latest that passed, or iteration `iteration` if it passed.

    The chosen manifest is checked against its sidecar (what the pilot's commit wrote): one edited or cut
    short since is refused, naming the file and both hashes. A pilot of another model, or scored by another
    critic (`critic_version`: this code's), is refused too (`SessionRefused`, saying what to do).
    """
    if iteration is None:
        chosen = latest_passing_manifest(pilot_dir)
        if chosen is None:
            raise SessionRefused(
                f"no pilot iteration under {pilot_dir} passed its QC checks; materialize pilot_data "
                "(adjusting its run config) until one passes, then run the shards"
            )
    else:
        found = [m for m in manifests(pilot_dir) if m.iteration == iteration]
        if not found:
            raise SessionRefused(f"pilot iteration {iteration!r} does not exist under {pilot_dir}")
        chosen = found[0]
        if not chosen.checks_passed:
            raise SessionRefused(f"pilot iteration {iteration} failed its QC checks; shards refuse its parameters")
    manifest = read_manifest(pilot_dir / chosen.iteration / MANIFEST, check=True)
    if manifest.critic_version != critic_version:
        raise SessionRefused(
            f"pilot iteration {manifest.iteration} was scored by critic {manifest.critic_version!r}, but "
            f"this code's critic is {critic_version!r}: shards must score as their pilot did; re-run the pilot first"
        )
    if manifest.model_fingerprint != fingerprint:
        raise SessionRefused(
            f"pilot iteration {manifest.iteration} was generated with model {manifest.model_fingerprint[:16]}…, "
            f"but the current base model is {fingerprint[:16]}…; re-run the pilot on this model first"
        )
    return manifest


@dataclass
class PilotResult:
    """What one pilot iteration made: its pairs, QC summary (critic checks included) and session manifest."""

    iteration: str
    out_dir: Path
    rows: list[dict[str, Any]]
    removed_instructions: dict[str, int]
    summary: Any  # a `qc.PilotQCSummary`
    manifest: SessionManifest
    pairs_path: Path
    record_params: dict[str, Any] = field(default_factory=dict)

    @property
    def pairs_hash(self) -> str:
        return self.manifest.pairs_sha256

    @property
    def checks_passed(self) -> bool:
        return self.manifest.checks_passed

    def metrics(self) -> dict[str, Any]:
        """What provenance records of the iteration (and the iterations table compares)."""
        s = self.summary
        return {m: v.value for m, v in s.metrics.items()} | {
            "iteration": self.iteration, "checks_passed": self.checks_passed,
            "critic_rank_agreement": s.critic_discrimination["rank_agreement"],
            "critic_pairwise_accuracy": s.critic_quality["pairwise_accuracy"],
            "removed_instructions": self.removed_instructions,
        }  # fmt: skip


def run_pilot(
    lm: Any,
    pilot_dir: Path,
    run_id: str,
    params: GenerationParams,
    count: int,
    seed: int,
    qc: QCThresholds,
    test_instructions: Sequence[str],
    test_set_sha256: str,
    controls_cache_dir: Path,
    on_change: Callable[[Path], object] = lambda path: None,
    log: Any = log,
    commit: Callable[[PilotResult, Staging], None] | None = None,
) -> PilotResult:
    """One pilot iteration, like `shards.run_shard`: allocate the next iteration under `pilot_dir`, generate
    `count` pairs (instructions excluding `test_instructions`), score them, run the QC and critic checks, and
    write pairs, QC summary, session manifest and `run.json` into `pilot_dir/<NNN>/`.

    The files are staged; `commit(result, staging)` publishes them (the asset records provenance in the
    same step; by default they are renamed into place). `on_change(path)` is called after a file is written
    outside the commit (the iteration's claim, its failure mark), for an artifact store to mirror it.
    Whatever fails after the iteration is allocated marks it failed (`run.json`), so no shard uses it.
    """
    import polars as pl

    from . import critic_controls, prompts, stats
    from .critic import Critic, critic_fingerprint, discrimination, shuffled_control
    from .generation import Generator
    from .pairs import generate_instructions, respond_and_score
    from .qc import PilotQCSummary, qc_summary

    finish = commit or (lambda result, staging: [on_change(t) for t in staging.commit_locally()])
    # every host's iterations count: numbering continues after the latest one (claims included)
    iteration = allocate_iteration(pilot_dir, run_id)  # atomic: concurrent runs get distinct ones
    out_dir = pilot_dir / iteration
    on_change(out_dir / RUN_FILE)
    log.info(f"pilot iteration {iteration} (data/pilot/{iteration}/)")
    try:
        generator = Generator(lm.model, lm.tokenizer)
        instructions, removed = generate_instructions(
            generator, count, seed, prompts.load_pool(prompts.TRAIN_POOL), params.instruction, params.batch_size,
            exclude=list(test_instructions),
        )  # fmt: skip
        ids = [f"pilot-{iteration}-{n:06d}" for n in range(len(instructions))]
        rows = respond_and_score(lm, instructions, ids, params, seed=seed + 1, generator=generator)
        critic = Critic(lm.model, lm.tokenizer, params.critic)
        pairs = [(r["instruction"], r["response"]) for r in rows]
        disc = discrimination(critic.score(pairs), critic.score(shuffled_control(pairs, seed)))
        disc_p = stats.sign_test(disc.real_above_shuffled, disc.pairs - disc.real_above_shuffled, "greater")
        disc_passed = disc.rank_agreement >= qc.min_critic_discrimination
        quality = critic_controls.critic_quality(
            critic, qc.min_critic_pairwise_accuracy, qc.min_critic_rejection,
            cache=critic_controls.cache_path(controls_cache_dir, lm.info.fingerprint, params.critic),
        )  # fmt: skip
        summary = PilotQCSummary.from_dict(qc_summary(rows, qc) | {
            "critic_discrimination": {**disc.as_dict(), "sign_test_p": disc_p, "passed": disc_passed},
            "critic_quality": quality,
        }, f"{out_dir / layout.PILOT_QC} (being written)")  # fmt: skip
        with Staging() as staging:  # nothing is visible before the commit
            pairs_path = staging.write_jsonl(out_dir / layout.PILOT_PAIRS, rows)
            with staging.writing(out_dir / layout.PILOT_PARQUET) as tmp:
                pl.DataFrame(rows).write_parquet(tmp)
            staging.write_json(out_dir / layout.PILOT_QC, summary.to_dict())
            manifest = SessionManifest(
                iteration=iteration, run_id=run_id, model_fingerprint=lm.info.fingerprint,
                prompt_version=prompts.prompt_version(), generation=params, critic_version=critic_fingerprint(),
                qc_thresholds=qc.model_dump(), seed=seed, count=count, test_set_sha256=test_set_sha256,
                pairs_sha256=staging.hash(pairs_path),
                checks_passed=summary.passed and disc_passed and quality["passed"],
            )  # fmt: skip
            # the manifest and its sidecar last: shards on other hosts look for them, and the files must be there first
            staging.write_json(out_dir / MANIFEST, manifest.to_dict())
            staging.manifest(out_dir / MANIFEST, PRODUCER, iteration=iteration, run_id=run_id)
            staging.write_json(out_dir / RUN_FILE, {"iteration": iteration, "run_id": run_id, "status": "success",
                                                    "finished_at": time.time()})  # fmt: skip
            record_params = params.as_dict() | {"seed": seed, "count": count, "qc": qc.model_dump()}
            result = PilotResult(iteration, out_dir, rows, removed, summary, manifest, pairs_path, record_params)
            finish(result, staging)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            on_change(mark_failed(pilot_dir, iteration, run_id, exc))
        raise
    return result


def iterations_table(history: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per pilot iteration, from the (params, metrics) provenance recorded for it, newest first."""
    return [
        {
            "iteration": m.get("iteration"),
            "T instr/resp": f"{p['instruction']['temperature']}/{p['response']['temperature']}",
            "top_p": p["response"]["top_p"],
            "max tokens": p["response"]["max_new_tokens"],
            "runaway": m.get("runaway_rate"),
            "token limit": m.get("token_limit_rate"),
            "median tok": m.get("median_response_tokens"),
            "leaks": m.get("delimiter_leakage"),
            "accept": m.get("pair_acceptance"),
            "critic rank": m.get("critic_rank_agreement"),
            "critic quality": m.get("critic_pairwise_accuracy"),
            "passed": m.get("checks_passed"),
        }
        for p, m in history
    ]
