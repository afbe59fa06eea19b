"""The users' workflow against a real running instance: dagster-webserver + dagster-daemon on loopback.

Everything is driven through the GraphQL API the web UI uses: materialize the pilot, backfill every
shard through the run queue, run with strict QC thresholds and see the failed check block training,
dry-run the missing-shard schedule. Then headless Chromium loads the asset catalog and the failed
check's page. Screenshots land in `test-artifacts/`.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from stage1_assets.core.provenance import ProvenanceStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BIN = Path(sys.executable).parent
LOCATION = {"repositoryLocationName": "stage1", "repositoryName": "__repository__"}

LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = (
    "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"
)
DRY_RUN = """
mutation($selector: ScheduleSelector!, $ts: Float) { scheduleDryRun(selectorData: $selector, timestamp: $ts) {
  __typename ... on DryRunInstigationTick {
    evaluationResult { skipReason error { message cause { message } } runRequests { tags { key value } } } }
  ... on PythonError { message } } }"""
SCHEDULES = """
query($selector: RepositorySelector!) { schedulesOrError(repositorySelector: $selector) {
  ... on Schedules { results { name cronSchedule pipelineName } } } }"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Dagster:
    """A webserver and a daemon on loopback, sharing one temporary DAGSTER_HOME."""

    def __init__(self, home: Path, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DAGSTER_HOME": str(home), "STAGE1_DATA_DIR": str(data), "STAGE1_PROFILE": "local"}
        self.logs = home / "logs"
        self.logs.mkdir(parents=True)
        self.procs = [
            self._start("webserver", [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                                      "-p", str(self.port)]),
            self._start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
        ]  # fmt: skip

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), self.tail()
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise AssertionError("webserver did not come up\n" + self.tail())

    def gql(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = json.loads(resp.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def launch(self, assets: list[str], run_config: dict, partition: str | None = None) -> str:
        params = {"selector": {**LOCATION, "jobName": "__ASSET_JOB",
                               "assetSelection": [{"path": [a]} for a in assets]},
                  "runConfigData": run_config}  # fmt: skip
        if partition:
            params["executionMetadata"] = {"tags": [{"key": "dagster/partition", "value": partition}]}
        result = self.gql(LAUNCH_RUN, params=params)["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def wait_run(self, run_id: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.gql(RUN_STATUS, id=run_id)["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(2)
        raise AssertionError(f"run {run_id} did not finish\n" + self.tail())

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def dagster_ui(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    ui = Dagster(home, tmp_path / "data")
    try:
        ui.wait_ready()
        yield ui
    finally:
        ui.stop()
    assert all(p.poll() is not None for p in ui.procs), "servers must be stopped after the test"


def test_ui_workflow_pilot_backfill_failed_check_schedule(dagster_ui, tmp_path):
    started = time.monotonic()
    ui, data = dagster_ui, tmp_path / "data"

    pilot_run = ui.launch(["base_model", "test_instructions", "pilot_data"],
                          {"ops": {"test_instructions": {"config": {"count": 4}}}})  # fmt: skip
    assert ui.wait_run(pilot_run) == "SUCCESS", ui.tail()

    keys = ["shard-000", "shard-001", "shard-002"]
    shard_config = {"ops": {"scale_shards": {"config": {"count": 8}}}}
    assert ui.wait_run(ui.launch(["scale_shards"], shard_config, partition="shard-000")) == "SUCCESS", ui.tail()
    schedules = ui.gql(SCHEDULES, selector=LOCATION)["schedulesOrError"]["results"]
    assert [s["name"] for s in schedules] == ["missing_shards_schedule"]
    assert schedule_tick(ui) == ["shard-001", "shard-002"], "the schedule must target only the missing shards"

    backfill = ui.gql(LAUNCH_BACKFILL, params={
        "partitionNames": keys, "assetSelection": [{"path": ["scale_shards"]}],
        "runConfigData": shard_config,
    })["launchPartitionBackfill"]  # fmt: skip
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    deadline = time.monotonic() + 1500
    while (status := ui.gql(BACKFILL_STATUS, id=backfill["backfillId"])["partitionBackfillOrError"]["status"]) in (
        "REQUESTED", "IN_PROGRESS", None,
    ):  # fmt: skip
        assert time.monotonic() < deadline, ui.tail()
        time.sleep(3)
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
    with dg.DagsterInstance.from_config(ui.env["DAGSTER_HOME"]) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("scale_shards")) == set(keys)
    shard_windows = sorted(  # execution windows of every shard materialization
        (datetime.fromisoformat(str(r["recorded_at"])).timestamp() - r["wall_seconds"],
         datetime.fromisoformat(str(r["recorded_at"])).timestamp())
        for r in ProvenanceStore(data / "provenance.duckdb").query(
            "SELECT recorded_at, wall_seconds FROM records WHERE asset_key = 'scale_shards'")
    )  # fmt: skip
    assert len(shard_windows) == 4  # shard-000 twice: its own run, then reused by the backfill
    assert all(a[1] <= b[0] + 1.0 for a, b in zip(shard_windows, shard_windows[1:], strict=False)), (
        f"the gpu pool (limit 1) must run one shard at a time: {shard_windows}"
    )

    strict = {"ops": {"qc_summary": {"config": {"max_median_response_tokens": 1}}}}
    strict_run = ui.launch(["sft_dataset", "qc_summary", "adapter_checkpoint"], strict)
    assert ui.wait_run(strict_run) == "FAILURE"
    with dg.DagsterInstance.from_config(ui.env["DAGSTER_HOME"]) as instance:
        check = dg.AssetCheckKey(dg.AssetKey("qc_summary"), "median_response_tokens")
        [record] = instance.event_log_storage.get_asset_check_execution_history(check, limit=1)
        evaluation = record.event.dagster_event.event_specific_data
        assert record.status.value == "FAILED" and not evaluation.passed
        assert evaluation.metadata["threshold"].value == 1 and "| id |" in evaluation.metadata["flagged_examples"].value
        assert instance.get_latest_materialization_event(dg.AssetKey("adapter_checkpoint")) is None
        assert instance.get_latest_materialization_event(dg.AssetKey("qc_summary")) is not None

    assert schedule_tick(ui) is None, "with every shard materialized the schedule must skip"

    browser_smoke(ui)
    print(f"UI workflow test: {time.monotonic() - started:.0f}s")


def schedule_tick(ui: Dagster) -> list[str] | None:
    """Partitions a tick of the schedule would launch now (the UI's "Test schedule"), None if it skips."""
    tick = ui.gql(DRY_RUN, selector={**LOCATION, "scheduleName": "missing_shards_schedule"}, ts=time.time())
    result = tick["scheduleDryRun"]["evaluationResult"]
    assert result["error"] is None, result["error"]
    if result["skipReason"]:
        return None
    return [next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in result["runRequests"]]


def chromium_dom(url: str, screenshot: Path) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1400,900", "--virtual-time-budget=20000"]  # fmt: skip
    chromium = shutil.which("chromium")
    profile = screenshot.with_suffix(".profile")
    subprocess.run([chromium, *flags, f"--user-data-dir={profile}", f"--screenshot={screenshot}", url],
                   capture_output=True, timeout=180, check=False)  # fmt: skip
    dom = subprocess.run([chromium, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180, check=True).stdout  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    return dom


def browser_smoke(ui: Dagster) -> None:
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium must be installed in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    graph = chromium_dom(f"{ui.url}/assets", ARTIFACTS / "asset_catalog.png")
    for name in ("pilot_data", "scale_shards", "qc_summary", "adapter_checkpoint", "eval_report"):
        assert name in graph, f"{name} not rendered in the asset catalog"
    checks = chromium_dom(f"{ui.url}/assets/qc_summary?view=checks", ARTIFACTS / "failed_check.png")
    assert "median_response_tokens" in checks
    assert (ARTIFACTS / "asset_catalog.png").stat().st_size > 10_000
