"""`pilot_data`: a small batch of pairs that validates generation parameters against the QC thresholds.

Iterate on pilots, not on training runs: every materialization is a new iteration with its own
parameters (run config), kept in `data/pilot/<NNN>/` and in provenance; the session manifest scale
generation reuses is the latest iteration whose checks all passed. Concurrent runs get distinct
iterations; a run's files (manifest included) appear only with its provenance record, and a run
that fails marks its iteration failed (`run.json`), so no shard ever uses it.
"""

import dagster as dg
from pydantic import Field

from ..config import PROFILE, GenerationConfig, QCConfig
from ..core import layout, pilot
from ..core.artifacts import Staging
from ..core.io import content_hash
from ..core.pairs import GenerationParams
from ..core.report import markdown_table
from ..materialize import Step, materialize_result, stage1_asset
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths
from .qc_checks import control_set_tables, qc_check_results, qc_check_specs


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
        earlier = provenance.store().recent_materializations("pilot_data", limit=9, timeout_s=5.0)
    except TimeoutError as exc:
        earlier, note = [], f"\n\nEarlier iterations are not shown: {exc}"
    table = pilot.iterations_table([current, *earlier])
    return markdown_table(table, list(table[0]) if table else []) + note


@stage1_asset(
    stage="pilot",
    group="data",
    kinds={"jsonl", "parquet"},
    deps=["base_model", "test_instructions"],
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
    step = Step(context, paths, provenance)
    test_path, test_rows = paths.test_set()
    lm = model.load()
    params = GenerationParams(config.instruction_sampling, config.response_sampling, config.critic, config.batch_size)
    shown = {}

    def commit(result: pilot.PilotResult, staging: Staging) -> None:
        """The iteration's files become visible together with its provenance record."""
        metrics = result.metrics()
        shown["iterations"] = _iterations_table(provenance, (result.record_params, metrics))  # never fails it
        step.commit(
            staging, model=lm.info, inputs={"base_model": lm.info.fingerprint,
            "test_instructions": result.manifest.test_set_sha256}, outputs={"pilot_pairs": result.pairs_path},
            params=result.record_params, prompt_version=result.manifest.prompt_version, row_count=len(result.rows),
            metrics=metrics,
        )  # fmt: skip

    # every host's iterations count: numbering continues after the store's latest one (claims included)
    result = pilot.run_pilot(
        lm, paths.fetch_dir(layout.PILOT, pattern="*/*.json"), context.run_id, params, config.count, config.seed,
        config.qc, [r["instruction"] for r in test_rows], content_hash(test_path), model.controls_cache_dir(),
        on_change=paths.publish, log=context.log, commit=commit,
    )  # fmt: skip
    rows, summary = result.rows, result.summary
    quality, disc = summary.critic_quality, summary.critic_discrimination
    yield materialize_result(
        result.pairs_hash,
        {
            "iteration": result.iteration,
            "row_count": len(rows),
            "accepted": sum(r["accepted"] for r in rows),
            "qc_passed": result.checks_passed,
            "qc_summary_path": dg.MetadataValue.path(paths.location(result.out_dir / layout.PILOT_QC)),
            "pairs_path": dg.MetadataValue.path(paths.location(result.pairs_path)),
            "content_hash": result.pairs_hash,
            "qc": dg.MetadataValue.md(
                markdown_table(
                    [
                        {
                            "metric": k,
                            "value": v.value,
                            "rule": v.rule,
                            "passed": v.passed,
                            "flagged": v.flagged_count,
                        }
                        for k, v in summary.metrics.items()
                    ],
                    ["metric", "value", "rule", "passed", "flagged"],
                )
            ),  # fmt: skip
            "preview": dg.MetadataValue.md(
                markdown_table(rows[:8], ["id", "instruction", "response", "critic_score", "critic_rule", "accepted"])
            ),
            "iterations": dg.MetadataValue.md(shown["iterations"]),
        },
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
            **control_set_tables(quality, "good ranked above"),
        },
    )
    yield dg.AssetCheckResult(
        check_name="critic_discrimination",
        passed=disc["passed"],
        metadata={
            "rank_agreement": disc["rank_agreement"],
            "threshold": config.qc.min_critic_discrimination,
            **{k: disc[k] for k in ("sign_test_p", "real_acceptance", "shuffled_acceptance")},
            **{k: disc[k] for k in ("real_mean_score", "shuffled_mean_score")},
        },
    )
