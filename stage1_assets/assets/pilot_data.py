"""`pilot_data`: a small batch of pairs that validates generation parameters against the QC thresholds.

Iterate on pilots, not on training runs: every materialization is a new iteration with its own
parameters (run config), kept in `data/pilot/<NNN>/` and in provenance; the session manifest scale
generation reuses is the latest iteration whose checks all passed.
"""

import json
import time

import dagster as dg
import polars as pl
from pydantic import Field

from ..config import PROFILE, GenerationConfig, QCConfig
from ..core import pilot, prompts
from ..core.critic import Critic, discrimination, shuffled_control
from ..core.generation import Generator
from ..core.io import atomic_path, atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_file
from ..core.pairs import GenerationParams, generate_instructions, respond_and_score
from ..core.qc import qc_summary
from ..core.report import markdown_table
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths
from .qc_checks import qc_check_results, qc_check_specs


class PilotConfig(GenerationConfig):
    count: int = Field(default=PROFILE.pilot_count, ge=2, le=100_000, description="Pilot pairs.")
    seed: int = Field(default=2024, description="Seed of this pilot iteration.")
    qc: QCConfig = QCConfig()


def _iterations_table(provenance: ProvenanceResource) -> str:
    rows = provenance.store().query(
        """SELECT params_json, metrics_json FROM records
           WHERE asset_key = 'pilot_data' AND kind = 'materialization' ORDER BY recorded_at DESC LIMIT 10"""
    )
    table = []
    for r in rows:
        p, m = json.loads(r["params_json"]), json.loads(r["metrics_json"])
        table.append(
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
                "passed": m.get("checks_passed"),
            }
        )
    return markdown_table(table, list(table[0]) if table else [])


@dg.asset(
    deps=["base_model", "test_instructions"],
    group_name="data",
    kinds={"jsonl", "parquet"},
    owners=["team:stage1"],
    tags={"stage": "pilot"},
    check_specs=[
        *qc_check_specs("pilot_data"),
        dg.AssetCheckSpec(
            "critic_discrimination",
            asset="pilot_data",
            blocking=True,
            description="On a shuffled-response control, the critic must score the real pair above its "
            "shuffled twin in at least 75% of pairs (chance is 50%).",
        ),
    ],
    description=(
        "Pilot pairs (instruction → response → critic verdict) with their QC summary and a session "
        "manifest (parameters, model fingerprint, prompt version, seed) that scale generation reuses. "
        "Each materialization is a pilot iteration under `data/pilot/<NNN>/`."
    ),
)
def pilot_data(
    context: dg.AssetExecutionContext,
    config: PilotConfig,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
):
    started = time.perf_counter()
    test_path = paths.fetch("test_instructions.jsonl")
    test_rows = read_jsonl(test_path, required=("instruction",))
    lm = model.load()
    params = GenerationParams(config.instruction_sampling, config.response_sampling, config.critic, config.batch_size)
    generator = Generator(lm.model, lm.tokenizer)
    # every host's iterations count: numbering continues after the store's latest one
    iteration = pilot.next_iteration(paths.fetch_dir("pilot", pattern=f"*/{pilot.MANIFEST}"))
    out_dir = paths.path("pilot", iteration)

    instructions, removed = generate_instructions(
        generator, config.count, config.seed, prompts.load_pool(prompts.TRAIN_POOL), params.instruction,
        params.batch_size, exclude=[r["instruction"] for r in test_rows],
    )  # fmt: skip
    ids = [f"pilot-{iteration}-{n:06d}" for n in range(len(instructions))]
    rows = respond_and_score(lm, instructions, ids, params, seed=config.seed + 1, generator=generator)
    critic = Critic(lm.model, lm.tokenizer, prompts.load_pool(prompts.QA_SHOTS))
    control = critic.score(
        shuffled_control([(r["instruction"], r["response"]) for r in rows], config.seed),
        config.critic.confidence_threshold,
        config.critic.batch_size,
    )
    disc = discrimination(
        [r["critic_score"] for r in rows], [c.score for c in control], config.critic.confidence_threshold
    )
    disc_p = pilot.sign_test_p_value(disc.real_above_shuffled, disc.pairs)
    disc_passed = disc.rank_agreement >= config.qc.min_critic_discrimination
    summary = qc_summary(rows, config.qc)
    summary["critic_discrimination"] = {**disc.as_dict(), "sign_test_p": disc_p, "passed": disc_passed}

    pairs_path = atomic_write_jsonl(out_dir / "pairs.jsonl", rows)
    with atomic_path(out_dir / "pairs.parquet") as tmp:
        pl.DataFrame(rows).write_parquet(tmp)
    atomic_write_json(out_dir / "qc_summary.json", summary)
    pairs_hash = sha256_file(pairs_path)
    checks_passed = summary["passed"] and disc_passed
    manifest = {
        "iteration": iteration,
        "run_id": context.run_id,
        "model_fingerprint": lm.info.fingerprint,
        "prompt_version": prompts.prompt_version(),
        "generation": params.as_dict(),
        "qc_thresholds": config.qc.model_dump(),
        "seed": config.seed,
        "count": config.count,
        "test_set_sha256": sha256_file(test_path),
        "pairs_sha256": pairs_hash,
        "checks_passed": checks_passed,
    }
    atomic_write_json(out_dir / pilot.MANIFEST, manifest)
    # the manifest last: shards on other hosts look for it, and its files must be there first
    paths.publish(pairs_path, out_dir / "pairs.parquet", out_dir / "qc_summary.json", out_dir / pilot.MANIFEST)
    metrics = {m: v["value"] for m, v in summary["metrics"].items()}
    metrics |= {"iteration": iteration, "checks_passed": checks_passed, "critic_rank_agreement": disc.rank_agreement,
                "removed_instructions": removed}  # fmt: skip
    provenance.record(
        context,
        started,
        inputs={"base_model": lm.info.fingerprint, "test_instructions": manifest["test_set_sha256"]},
        outputs={"pilot_pairs": (paths.location(pairs_path), pairs_hash)},
        model_fingerprint=lm.info.fingerprint,
        params=params.as_dict() | {"seed": config.seed, "count": config.count, "qc": config.qc.model_dump()},
        prompt_version=manifest["prompt_version"],
        row_count=len(rows),
        metrics=metrics,
        device=lm.info.device,
    )
    yield dg.MaterializeResult(
        metadata={
            "iteration": iteration,
            "row_count": len(rows),
            "accepted": sum(r["accepted"] for r in rows),
            "qc_passed": checks_passed,
            "qc_summary_path": dg.MetadataValue.path(paths.location(out_dir / "qc_summary.json")),
            "pairs_path": dg.MetadataValue.path(paths.location(pairs_path)),
            "content_hash": pairs_hash,
            "qc": dg.MetadataValue.md(
                markdown_table(
                    [
                        {
                            "metric": k,
                            "value": v["value"],
                            "rule": v["rule"],
                            "passed": v["passed"],
                            "flagged": v["flagged_count"],
                        }
                        for k, v in summary["metrics"].items()
                    ],
                    ["metric", "value", "rule", "passed", "flagged"],
                )
            ),  # fmt: skip
            "preview": dg.MetadataValue.md(
                markdown_table(rows[:8], ["id", "instruction", "response", "finish_reason", "critic_score", "accepted"])
            ),
            "iterations": dg.MetadataValue.md(_iterations_table(provenance)),
        },
        data_version=dg.DataVersion(pairs_hash[:16]),
    )
    yield from qc_check_results("pilot_data", summary)
    yield dg.AssetCheckResult(
        check_name="critic_discrimination",
        passed=disc_passed,
        metadata={
            "rank_agreement": disc.rank_agreement,
            "threshold": config.qc.min_critic_discrimination,
            "sign_test_p": disc_p,
            "real_acceptance": disc.real_acceptance,
            "shuffled_acceptance": disc.shuffled_acceptance,
            "real_mean_score": disc.real_mean_score,
            "shuffled_mean_score": disc.shuffled_mean_score,
        },
    )
