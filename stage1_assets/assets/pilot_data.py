"""`pilot_data`: a small batch of pairs that validates generation parameters against the QC thresholds.

Iterate on pilots, not on training runs: every materialization is a new iteration with its own
parameters (run config), kept in `data/pilot/<NNN>/` and in provenance; the session manifest scale
generation reuses is the latest iteration whose checks all passed. Concurrent runs get distinct
iterations; a run's files (manifest included) appear only with its provenance record, and a run
that fails marks its iteration failed (`run.json`), so no shard ever uses it.
"""

import contextlib
import json
import time

import dagster as dg
import polars as pl
from pydantic import Field

from ..config import PROFILE, GenerationConfig, QCConfig
from ..core import critic_controls, layout, pilot, prompts, stats
from ..core.critic import Critic, critic_fingerprint, discrimination, shuffled_control
from ..core.generation import Generator
from ..core.io import content_hash, read_jsonl
from ..core.pairs import GenerationParams, generate_instructions, respond_and_score
from ..core.qc import qc_summary
from ..core.report import markdown_table
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths
from .qc_checks import qc_check_results, qc_check_specs


class PilotConfig(GenerationConfig):
    count: int = Field(default=PROFILE.pilot_count, ge=2, le=100_000, description="Pilot pairs.")
    seed: int = Field(default=2024, description="Seed of this pilot iteration.")
    qc: QCConfig = QCConfig()


def _iterations_table(provenance: ProvenanceResource, current: tuple[dict, dict]) -> str:
    """This iteration (`current`: its params and metrics) and the nine before it, from provenance.

    Read before this run commits anything, and never fatal: while another process holds the
    database (a user's DuckDB session, say) the table shows this iteration alone and says why.
    """
    note = ""
    try:
        rows = provenance.store().query(
            """SELECT params_json, metrics_json FROM records
               WHERE asset_key = 'pilot_data' AND kind = 'materialization' ORDER BY recorded_at DESC LIMIT 9""",
            timeout_s=5.0,
        )
    except TimeoutError as exc:
        rows, note = [], f"\n\nEarlier iterations are not shown: {exc}"
    history = [current] + [(json.loads(r["params_json"]), json.loads(r["metrics_json"])) for r in rows]
    table = []
    for p, m in history:
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
                "critic quality": m.get("critic_pairwise_accuracy"),
                "passed": m.get("checks_passed"),
            }
        )
    return markdown_table(table, list(table[0]) if table else []) + note


@dg.asset(
    deps=["base_model", "test_instructions"],
    group_name="data",
    kinds={"jsonl", "parquet"},
    owners=["team:stage1"],
    tags={"stage": "pilot"},
    check_specs=[
        *qc_check_specs("pilot_data"),
        dg.AssetCheckSpec(
            "critic_quality",
            asset="pilot_data",
            blocking=True,
            description="On the held-out half of the labelled control set (good answers against wrong, restated, "
            "content-free, runaway, drift and truncated ones), the critic must rank the good answer above the bad "
            "one in at least 85% of comparisons and reject at least 90% of each of the restated, content-free and "
            "runaway answers (defaults; run config may change them). Shows the per-kind table and misranked pairs.",
        ),
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
    # whatever fails after the iteration is allocated marks it failed (`on_failure`, set up below)
    with contextlib.ExitStack() as on_failure:
        yield from _pilot_iteration(context, config, model, paths, provenance, on_failure)


def _pilot_iteration(
    context: dg.AssetExecutionContext,
    config: PilotConfig,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
    on_failure: contextlib.ExitStack,
):
    started = time.perf_counter()
    test_path = paths.fetch_verified(layout.TEST_SET, producer="test_instructions")
    test_rows = read_jsonl(test_path, required=("instruction",))
    lm = model.load()
    params = GenerationParams(config.instruction_sampling, config.response_sampling, config.critic, config.batch_size)
    generator = Generator(lm.model, lm.tokenizer)
    # every host's iterations count: numbering continues after the store's latest one (claims included)
    pilot_dir = paths.fetch_dir(layout.PILOT, pattern="*/*.json")
    iteration = pilot.allocate_iteration(pilot_dir, context.run_id)  # atomic: concurrent runs get distinct ones
    out_dir = paths.path(layout.PILOT, iteration)
    paths.publish(out_dir / pilot.RUN_FILE)
    context.log.info(f"pilot iteration {iteration} (data/pilot/{iteration}/)")

    @on_failure.push
    def _mark_failed(exc_type, exc, tb) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit):
            with contextlib.suppress(OSError):
                paths.publish(pilot.mark_failed(pilot_dir, iteration, context.run_id, exc))

    instructions, removed = generate_instructions(
        generator, config.count, config.seed, prompts.load_pool(prompts.TRAIN_POOL), params.instruction,
        params.batch_size, exclude=[r["instruction"] for r in test_rows],
    )  # fmt: skip
    ids = [f"pilot-{iteration}-{n:06d}" for n in range(len(instructions))]
    rows = respond_and_score(lm, instructions, ids, params, seed=config.seed + 1, generator=generator)
    critic = Critic(lm.model, lm.tokenizer, params.critic)
    pairs = [(r["instruction"], r["response"]) for r in rows]
    disc = discrimination(critic.score(pairs), critic.score(shuffled_control(pairs, config.seed)))
    disc_p = stats.sign_test(disc.real_above_shuffled, disc.pairs - disc.real_above_shuffled, "greater")
    disc_passed = disc.rank_agreement >= config.qc.min_critic_discrimination
    quality = critic_controls.critic_quality(
        critic, config.qc.min_critic_pairwise_accuracy, config.qc.min_critic_rejection,
        cache=critic_controls.cache_path(model.controls_cache_dir(), lm.info.fingerprint, params.critic),
    )  # fmt: skip
    summary = qc_summary(rows, config.qc)
    summary["critic_discrimination"] = {**disc.as_dict(), "sign_test_p": disc_p, "passed": disc_passed}
    summary["critic_quality"] = quality

    staging = on_failure.enter_context(paths.staging())  # nothing is visible before the commit below
    pairs_path = staging.write_jsonl(out_dir / layout.PILOT_PAIRS, rows)
    with staging.writing(out_dir / layout.PILOT_PARQUET) as tmp:
        pl.DataFrame(rows).write_parquet(tmp)
    staging.write_json(out_dir / layout.PILOT_QC, summary)
    pairs_hash = staging.hash(pairs_path)
    checks_passed = summary["passed"] and disc_passed and quality["passed"]
    manifest = {
        "iteration": iteration,
        "run_id": context.run_id,
        "model_fingerprint": lm.info.fingerprint,
        "prompt_version": prompts.prompt_version(),
        "generation": params.as_dict(),
        "critic_version": critic_fingerprint(),
        "qc_thresholds": config.qc.model_dump(),
        "seed": config.seed,
        "count": config.count,
        "test_set_sha256": content_hash(test_path),
        "pairs_sha256": pairs_hash,
        "checks_passed": checks_passed,
    }
    # the manifest and its sidecar last: shards on other hosts look for them, and the files must be there first
    staging.write_json(out_dir / pilot.MANIFEST, manifest)
    staging.manifest(out_dir / pilot.MANIFEST, "pilot_data", iteration=iteration, run_id=context.run_id)
    staging.write_json(out_dir / pilot.RUN_FILE, {"iteration": iteration, "run_id": context.run_id,
                                                  "status": "success", "finished_at": time.time()})  # fmt: skip
    metrics = {m: v["value"] for m, v in summary["metrics"].items()}
    metrics |= {"iteration": iteration, "checks_passed": checks_passed, "critic_rank_agreement": disc.rank_agreement,
                "critic_pairwise_accuracy": quality["pairwise_accuracy"], "removed_instructions": removed}  # fmt: skip
    record_params = params.as_dict() | {"seed": config.seed, "count": config.count, "qc": config.qc.model_dump()}
    iterations = _iterations_table(provenance, (record_params, metrics))  # before the commit: never fails it
    provenance.commit(
        context,
        started,
        staging,
        paths,
        inputs={"base_model": lm.info.fingerprint, "test_instructions": manifest["test_set_sha256"]},
        outputs={"pilot_pairs": pairs_path},
        model_fingerprint=lm.info.fingerprint,
        params=record_params,
        prompt_version=manifest["prompt_version"],
        row_count=len(rows),
        metrics=metrics,
        device=lm.info.device,
    )
    on_failure.pop_all()  # committed: the iteration stands, whatever happens next
    yield dg.MaterializeResult(
        metadata={
            "iteration": iteration,
            "row_count": len(rows),
            "accepted": sum(r["accepted"] for r in rows),
            "qc_passed": checks_passed,
            "qc_summary_path": dg.MetadataValue.path(paths.location(out_dir / layout.PILOT_QC)),
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
                markdown_table(rows[:8], ["id", "instruction", "response", "critic_score", "critic_rule", "accepted"])
            ),
            "iterations": dg.MetadataValue.md(iterations),
        },
        data_version=dg.DataVersion(pairs_hash[:16]),
    )
    yield from qc_check_results("pilot_data", summary)
    yield dg.AssetCheckResult(
        check_name="critic_quality",
        passed=quality["passed"],
        description="; ".join(quality["failures"]) or f"pairwise accuracy {quality['pairwise_accuracy']:.3f}",
        metadata={
            "pairwise_accuracy": quality["pairwise_accuracy"],
            "min_pairwise_accuracy": quality["min_pairwise_accuracy"],
            "min_rejection": quality["min_rejection"],
            "good_accepted": quality["good_accepted"],
            "control_requests": quality["items"],
            "per_kind": dg.MetadataValue.md(markdown_table(
                [{"bad kind": k, "good ranked above": v["good_above"], "rejected": v["rejected"]}
                 for k, v in quality["per_kind"].items()], ["bad kind", "good ranked above", "rejected"])),
            "misranked": dg.MetadataValue.md(markdown_table(
                quality["misranked"], ["item", "kind", "instruction", "bad_response", "bad_verdict", "good_verdict"])),
        },  # fmt: skip
    )
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
