"""`eval_report`: base vs base+adapter on every held-out instruction, judged by the clean base model."""

import time
from pathlib import PurePosixPath

import dagster as dg
from pydantic import Field

from ..config import PROFILE, ResponseSamplingConfig
from ..core import plots, prompts
from ..core.evaluation import JUDGE_VERSION, EvalParams, evaluate, markdown_report
from ..core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl, sha256_file
from ..k8s import GPU_TAGS
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths


class EvalConfig(dg.Config):
    sampling: ResponseSamplingConfig = ResponseSamplingConfig()
    batch_size: int = Field(default=PROFILE.generation_batch_size, ge=1, le=4096)
    seed: int = Field(default=7, description="Decoding seed, the same for both systems.")
    tie_margin: float = Field(default=0.1, ge=0.0, le=10.0, description="PMI differences below this are ties.")
    min_judge_control_accuracy: float = Field(default=0.75, ge=0.5, le=1.0)
    min_judge_consistency: float = Field(default=0.9, ge=0.0, le=1.0)


def _latest_adapter_dir(context: dg.AssetExecutionContext) -> str:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("adapter_checkpoint"))
    if event is None or event.asset_materialization is None:
        raise dg.Failure("adapter_checkpoint has never been materialized")
    return event.asset_materialization.metadata["adapter_dir"].value


@dg.asset(
    deps=["adapter_checkpoint", "test_instructions"],
    pool="gpu",
    group_name="evaluation",
    kinds={"pytorch", "markdown"},
    owners=["team:stage1"],
    tags={"stage": "evaluation"},
    op_tags=GPU_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "judge_trustworthy",
            asset="eval_report",
            description="Warns when the judge picks the real response over a shuffled one in fewer than 75% of "
            "control pairs, or agrees with itself across presentation orders in fewer than 90%.",
        ),
        dg.AssetCheckSpec(
            "covers_test_set",
            asset="eval_report",
            description="The report must cover every held-out test instruction (no pair missing).",
        ),
    ],
    description=(
        "Paired evaluation (`data/eval_report.json` / `.md`): every held-out instruction answered by the base model "
        "and by base+adapter with the same template, decoding and seed; judged by the clean base model's PMI "
        "(validated on a real-vs-shuffled control); win/tie/loss, win rate with a bootstrap 95% CI, sign test, "
        "judge consistency, length control and QC of both systems."
    ),
)
def eval_report(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    model: BaseModelResource,
    paths: Stage1Paths,
    provenance: ProvenanceResource,
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    test_path = paths.fetch("test_instructions.jsonl")
    test_rows = read_jsonl(test_path, required=("instruction",))
    # the adapter's folder name is its spec hash; its files come from the store when there is one
    adapter_dir = paths.fetch_dir("adapters", PurePosixPath(_latest_adapter_dir(context)).name)
    lm = model.load()
    fresh_base = AutoModelForCausalLM.from_pretrained(lm.info.path, dtype=lm.model.dtype).to(lm.info.device)
    adapted = PeftModel.from_pretrained(fresh_base, str(adapter_dir)).eval()
    params = EvalParams(config.sampling, config.batch_size, config.seed, config.tie_margin)
    report = evaluate(lm.model, adapted, lm.tokenizer, test_rows, params)
    report |= {"adapter_dir": paths.location(adapter_dir), "base_model": lm.info.fingerprint,
               "test_set_sha256": sha256_file(test_path), "prompt_version": prompts.prompt_version()}  # fmt: skip
    png = plots.histogram(
        {"SFT": [p["sft_score"] for p in report["pairs"]], "base": [p["base_score"] for p in report["pairs"]]},
        "judge score (PMI, nats/token)",
        bin_width=0.25,
    )
    atomic_write_bytes(paths.path("eval_scores.png"), png)
    markdown = markdown_report(report, plots.markdown_image(png, "judge scores"))
    json_path = atomic_write_json(paths.path("eval_report.json"), report)
    atomic_write_text(paths.path("eval_report.md"), markdown)
    paths.publish(paths.path("eval_scores.png"), paths.path("eval_report.md"), json_path)
    report_hash = sha256_file(json_path)
    adapter_hash = sha256_file(adapter_dir / "adapter_model.safetensors")
    headline = {k: report[k] for k in ("n", "wins", "ties", "losses", "win_rate", "win_rate_ci95", "sign_test_p",
                                       "judge_position_consistency", "judge_control_accuracy")}  # fmt: skip
    provenance.record(
        context,
        started,
        inputs={
            "base_model": lm.info.fingerprint,
            "adapter": adapter_hash,
            "test_instructions": report["test_set_sha256"],
        },
        outputs={"eval_report": (paths.location(json_path), report_hash)},
        model_fingerprint=lm.info.fingerprint,
        params=config.model_dump() | {"judge": JUDGE_VERSION},
        prompt_version=report["prompt_version"],
        row_count=report["n"],
        metrics=headline,
        device=lm.info.device,
    )
    lo, hi = report["win_rate_ci95"]
    yield dg.MaterializeResult(
        metadata={
            "win_rate": report["win_rate"],
            "win_rate_ci95": f"[{lo:.3f}, {hi:.3f}]",
            "wins_ties_losses": f"{report['wins']} / {report['ties']} / {report['losses']}",
            "sign_test_p": report["sign_test_p"],
            "judge_control_accuracy": report["judge_control_accuracy"],
            "judge_position_consistency": report["judge_position_consistency"],
            "n": report["n"],
            "report": dg.MetadataValue.md(markdown),
            "path": dg.MetadataValue.path(paths.location(paths.path("eval_report.md"))),
        },
        data_version=dg.DataVersion(report_hash[:16]),
    )
    trusted = (
        report["judge_control_accuracy"] >= config.min_judge_control_accuracy
        and report["judge_position_consistency"] >= config.min_judge_consistency
    )
    yield dg.AssetCheckResult(
        check_name="judge_trustworthy",
        passed=trusted,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "control_accuracy": report["judge_control_accuracy"],
            "position_consistency": report["judge_position_consistency"],
            "min_control_accuracy": config.min_judge_control_accuracy,
            "min_consistency": config.min_judge_consistency,
        },  # fmt: skip
    )
    covered = {p["id"] for p in report["pairs"]}
    missing = [r["id"] for r in test_rows if r["id"] not in covered]
    yield dg.AssetCheckResult(
        check_name="covers_test_set",
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"covered": len(covered), "test_set": len(test_rows), "missing": dg.MetadataValue.json(missing[:50])},
    )
