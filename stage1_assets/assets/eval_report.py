"""`eval_report`: base vs base + adapter on verifiable instructions, reference answers and the test set."""

import dagster as dg
from pydantic import Field

from ..config import PROFILE, CriticConfig, ResponseSamplingConfig
from ..core import adapter, critic_controls, layout, pilot, plots, prompts
from ..core.config import CriticParams, ResponseSampling
from ..core.critic import critic_fingerprint
from ..core.evaluation import EvalItems, EvalParams, evaluate, headline, markdown_report, verdict_line
from ..core.instruction_following import DEFAULT_SUITE, load_suite, select_subset
from ..core.io import content_hash
from ..core.reference_qa import DEFAULT_QUESTIONS, load_questions
from ..core.reference_qa import select_subset as select_questions
from ..core.report import markdown_table
from ..core.training import ADAPTER_FILES
from ..materialize import Step, stage1_asset
from ..resources import BaseModelResource, ProvenanceResource, Stage1Paths
from .qc_checks import control_set_tables


class EvalConfig(dg.Config):
    sampling: ResponseSamplingConfig = ResponseSamplingConfig()
    batch_size: int = Field(default=PROFILE.generation_batch_size, ge=1, le=4096)
    seed: int = Field(default=7, description="Decoding seed, the same for both systems.")
    instruction_following_prompts: int | None = Field(
        default=PROFILE.eval_if_prompts, ge=1, description="Verifiable-instruction prompts (a stratified subset; "
        "null: the whole suite)."
    )  # fmt: skip
    reference_questions: int | None = Field(
        default=PROFILE.eval_qa_questions, ge=1, description="Reference questions (a stratified subset; null: all)."
    )
    subset_seed: int = Field(default=0, description="Seed of the stratified subsets.")
    reference_max_new_tokens: int = Field(
        default=32, ge=1, le=2048, description="Token cap for reference answers (graded on their first sentence)."
    )
    judge: CriticConfig = CriticConfig(batch_size=PROFILE.critic_batch_size)
    tie_margin: float = Field(default=0.1, ge=0.0, le=100.0, description="Judge score differences below this tie.")
    min_judge_pairwise_accuracy: float = Field(
        default=0.85, ge=0.5, le=1.0, description="The judge must rank good above bad this often on the held-out "
        "control set, or its check warns."
    )  # fmt: skip


def _training_critic(paths: Stage1Paths) -> CriticParams | None:
    """The critic of the pilot the shards reuse by default: the filter the training data went through."""
    manifest = pilot.latest_passing_manifest(paths.fetch_dir(layout.PILOT, pattern=f"*/{pilot.MANIFEST}"))
    return manifest.generation.critic if manifest else None


@stage1_asset(
    stage="evaluation",
    group="evaluation",
    kinds={"pytorch", "markdown"},
    gpu=True,
    deps=["adapter_checkpoint", "test_instructions"],
    check_specs=[
        dg.AssetCheckSpec(
            "judge_trustworthy",
            asset="eval_report",
            description="Warns when the likelihood judge ranks the good response above a bad one in fewer than 85% "
            "of comparisons on the held-out half of the labelled critic control set.",
        ),
        dg.AssetCheckSpec(
            "covers_items",
            asset="eval_report",
            description="Every selected verifiable-instruction prompt, reference question and held-out test "
            "instruction is answered and scored for both systems.",
        ),
    ],
    description=(
        "Paired evaluation (`data/eval_report.json` / `.md`) of base + adapter against the base model, same template, "
        "decoding and seed. Headline: verifiable instructions (strict / loose) and reference answers, each with "
        "Wilson intervals and an exact McNemar test of the paired difference. Secondary: the base model's "
        "likelihood judge on the held-out test instructions, with its trust on the labelled control set."
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

    step = Step(context, paths, provenance)
    test_path, test_rows = paths.test_set()
    suite, questions = load_suite(), load_questions()
    items = EvalItems(
        select_subset(suite, config.instruction_following_prompts or len(suite), config.subset_seed),
        select_questions(questions, config.reference_questions or len(questions), config.subset_seed),
        test_rows,
    )
    # the latest adapter, as adapter_checkpoint recorded it; its files come from the store when there is one
    record = adapter.AdapterRecord.read(paths.fetch_verified(*layout.LATEST_ADAPTER, producer=adapter.PRODUCER))
    adapter_dir = paths.fetch_dir(layout.ADAPTERS, record.spec_hash)
    record.check(adapter_dir, content_hash(adapter_dir, ADAPTER_FILES))
    lm = model.load()
    adapter_guard = model.guard_adapter(adapter_dir)
    fresh_base = AutoModelForCausalLM.from_pretrained(lm.info.path, dtype=lm.model.dtype).to(lm.info.device)
    # merged into its own copy of the base weights, the adapter generates as fast as the base model
    adapted = PeftModel.from_pretrained(fresh_base, str(adapter_dir)).merge_and_unload().eval()
    params = EvalParams(
        ResponseSampling(**config.sampling.model_dump()), config.batch_size, config.seed, config.tie_margin,
        judge=CriticParams(**config.judge.model_dump()), training_critic=_training_critic(paths),
        reference_max_new_tokens=config.reference_max_new_tokens,
        trust_cache=critic_controls.cache_path(model.controls_cache_dir(), lm.info.fingerprint, config.judge),
    )  # fmt: skip
    report = evaluate(lm.model, adapted, lm.tokenizer, items, params)
    input_hashes = {
        "base_model": lm.info.fingerprint,
        "adapter": record.adapter_sha256,
        "test_instructions": content_hash(test_path),
        "instruction_following_suite": content_hash(DEFAULT_SUITE),
        "reference_questions": content_hash(DEFAULT_QUESTIONS),
        "critic_controls": content_hash(critic_controls.EXEMPLARS_DIR / critic_controls.CONTROLS),
    }
    report |= {"adapter_dir": paths.location(adapter_dir), "base_model": lm.info.fingerprint, "inputs": input_hashes,
               "prompt_version": prompts.prompt_version(), "judge_version": critic_fingerprint()}  # fmt: skip
    jd = report["judge"]
    png = plots.histogram(
        {"adapter": [r["sft_tokens"] for r in jd["rows"]], "base": [r["base_tokens"] for r in jd["rows"]]},
        "response tokens (held-out test instructions)",
    )
    markdown = markdown_report(report, plots.markdown_image(png, "response lengths"))
    json_path = paths.path(layout.EVAL_JSON)
    iff, qa = report["instruction_following"], report["reference_qa"]
    summary = {
        "if_n": iff["n"], "if_sft": iff["sft"]["pass_rate"], "if_base": iff["base"]["pass_rate"],
        "if_mcnemar_p": iff["mcnemar_p"], "qa_n": qa["n"], "qa_sft": qa["sft"]["accuracy"],
        "qa_base": qa["base"]["accuracy"], "qa_mcnemar_p": qa["mcnemar_p"],
        "judge_wins": jd["wins"], "judge_losses": jd["losses"], "judge_trust": jd["trust"]["pairwise_accuracy"],
    }  # fmt: skip
    with paths.staging() as staging:  # visible only together with the provenance record
        staging.write_bytes(paths.path(layout.EVAL_PLOT), png)
        staging.write_text(paths.path(layout.EVAL_MARKDOWN), markdown)
        staging.write_json(json_path, report)
        metadata = {
            "headline": dg.MetadataValue.md(
                markdown_table(headline(report), ["measure", "adapter", "base", "difference (McNemar)"])
            ),
            "instruction_following": verdict_line("strict", iff, "pass_rate"),
            "reference_answers": verdict_line("accuracy", qa, "accuracy"),
            "if_sft_pass_rate": iff["sft"]["pass_rate"],
            "if_base_pass_rate": iff["base"]["pass_rate"],
            "if_mcnemar_p": iff["mcnemar_p"],
            "qa_sft_accuracy": qa["sft"]["accuracy"],
            "qa_base_accuracy": qa["base"]["accuracy"],
            "qa_mcnemar_p": qa["mcnemar_p"],
            "judge_is_training_filter": jd["is_training_filter"],
            "judge_trust": jd["trust"]["pairwise_accuracy"],
            "report": dg.MetadataValue.md(markdown),
            "path": dg.MetadataValue.path(paths.location(paths.path(layout.EVAL_MARKDOWN))),
        }
        result = step.materialized(
            staging, staging.hash(json_path), metadata, model=lm.info, inputs=input_hashes,
            outputs={"eval_report": json_path}, prompt_version=report["prompt_version"],
            params=config.model_dump() | {"judge_version": critic_fingerprint(), "adapter_guard": adapter_guard},
            row_count=iff["n"] + qa["n"] + jd["n"], metrics=summary,
        )  # fmt: skip
    yield result
    trust = jd["trust"]
    yield dg.AssetCheckResult(
        check_name="judge_trustworthy",
        passed=bool(trust["pairwise_accuracy"] >= config.min_judge_pairwise_accuracy),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"pairwise accuracy {trust['pairwise_accuracy']:.3f} on {trust['items']} held-out control "
        f"requests; passes at >= {config.min_judge_pairwise_accuracy}",
        metadata={
            "pairwise_accuracy": trust["pairwise_accuracy"],
            "threshold": config.min_judge_pairwise_accuracy,
            "is_training_filter": jd["is_training_filter"],
            **control_set_tables(trust, "good_above"),
        },
    )
    expected = {"instruction_following": len(items.instruction_following), "reference_qa": len(items.reference_qa),
                "judge": len(items.test_rows)}  # fmt: skip
    scored = {name: len(report[name]["rows"]) for name in expected}
    yield dg.AssetCheckResult(
        check_name="covers_items",
        passed=scored == expected and all(expected.values()),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"expected": dg.MetadataValue.json(expected), "scored": dg.MetadataValue.json(scored)},
    )
