"""The offline bundle for air-gapped hosts: build a small one, install it batch by batch into a fresh
virtualenv, verify the sums, and resume after a lost chunk."""

import importlib.util
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "offline_bundle.py"
# two small pure-Python wheels from the registry (the build side needs one, as it would in real use)
REQUIREMENTS = ["six==1.16.0", "toposort==1.10"]


def run(python, *args):
    return subprocess.run([str(python), str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    requirements = [a for r in REQUIREMENTS for a in ("--requirement", r)]
    # 6 KiB chunks and 10 KiB batches: six's 11 KiB wheel spans two batches
    built = run(sys.executable, "build", "--out", str(out), "--chunk-mib", "0.006", "--batch-mib", "0.01",
                *requirements)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    return out


@pytest.fixture
def fresh_python(tmp_path):
    venv.create(tmp_path / "venv", with_pip=True)
    return tmp_path / "venv" / "bin" / "python"


def test_build_writes_checksummed_chunks_in_batches(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = sorted(f["name"].split("-")[0] for f in manifest["files"])
    assert names == ["six", "toposort"]
    six = next(f for f in manifest["files"] if f["name"].startswith("six"))
    assert len(six["chunks"]) >= 2 and len({c["batch"] for c in six["chunks"]}) >= 2
    for batch in range(1, manifest["batches"] + 1):
        assert (bundle / f"batch-{batch:02d}" / "manifest.json").exists()
        assert sum(p.stat().st_size for p in (bundle / f"batch-{batch:02d}").glob("*.part*")) <= 0.01 * 2**20


def test_install_batch_by_batch_names_a_missing_chunk_and_resumes(bundle, fresh_python, tmp_path):
    stage, target = tmp_path / "stage", tmp_path / "site"
    batches = sorted(bundle.glob("batch-*"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    six = next(f for f in manifest["files"] if f["name"].startswith("six"))
    first, second = six["chunks"][0]["batch"], six["chunks"][1]["batch"]
    late = run(fresh_python, "install", "--incoming", str(bundle / f"batch-{second:02d}"), "--stage", str(stage),
               "--target", str(target))  # fmt: skip
    assert late.returncode == 1
    assert f"is missing while a later one has arrived: send batch {first} again" in late.stdout
    for batch in batches:  # the rest arrives, in order; each call installs what is complete
        done = run(fresh_python, "install", "--incoming", str(batch), "--stage", str(stage), "--target", str(target))
    assert done.returncode == 0 and "complete: export PYTHONPATH" in done.stdout, done.stdout + done.stderr
    imported = subprocess.run([str(fresh_python), "-c", "import six, toposort; print(six.__version__)"],
                              env={"PYTHONPATH": str(target)}, capture_output=True, text=True)  # fmt: skip
    assert imported.stdout.strip() == "1.16.0"
    again = run(fresh_python, "install", "--stage", str(stage), "--target", str(target))
    assert "installed now: 0; installed in all: 2 of 2" in again.stdout  # nothing is installed twice


def test_a_corrupt_chunk_is_refused_and_named(bundle, fresh_python, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for path in bundle.glob("batch-*/*"):
        (incoming / path.name).write_bytes(path.read_bytes())
    victim = sorted(incoming.glob("six-*.part*"))[0]
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    result = run(fresh_python, "install", "--incoming", str(incoming), "--stage", str(tmp_path / "stage"),
                 "--target", str(tmp_path / "site"))  # fmt: skip
    assert result.returncode == 1
    assert f"{victim.name} (batch 1): sha256 does not match the manifest" in result.stdout
    assert "installed in all: 1 of 2" in result.stdout  # toposort is whole and goes in


@pytest.fixture(scope="module")
def bundle_module():
    spec = importlib.util.spec_from_file_location("offline_bundle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_host_package_at_a_version_the_pipeline_refuses_is_carried(bundle_module, tmp_path):
    """transformers 5.17 on the GPU image converts the embedded tokenizer wrongly: it must travel."""
    host = tmp_path / "host.txt"
    host.write_text("# image\ntransformers==5.17.0\nsix==1.16.0\nTokenizers == 0.23.2\ntoposort\n")
    have = bundle_module.host_packages(host)
    assert have == {"transformers": "5.17.0", "six": "1.16.0", "tokenizers": "0.23.2", "toposort": None}
    wanted = ["transformers>=5.24", "six>=1.16", "tokenizers<0.24", "toposort>=9"]
    assert bundle_module.host_falls_short(wanted, have) == {"transformers"}


def test_the_gpu_host_file_makes_the_default_build_carry_transformers(bundle_module):
    have = bundle_module.host_packages(REPO / "scripts" / "hosts" / "nvidia-h200.txt")
    assert "transformers" in bundle_module.host_falls_short(list(bundle_module.DEFAULT_REQUIREMENTS), have)
