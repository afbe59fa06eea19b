"""Shared fixtures: the real embedded model (loaded once per session) and a tiny random model.

The tiny model is a real Gemma 3 architecture with random weights and the embedded tokenizer:
it exercises mechanics fast. Anything that asserts model *behaviour* uses the real model.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stage1_assets.core import model_loader
from stage1_assets.resources import DEFAULT_MODELS_DIR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    path, _ = model_loader.materialize_embedded(Path(DEFAULT_MODELS_DIR))
    return path


@pytest.fixture(scope="session")
def real_model() -> model_loader.LoadedModel:
    return model_loader.load_model(models_dir=Path(DEFAULT_MODELS_DIR), device="cpu")


def make_tiny_model_dir(target: Path, embedded_dir: Path, name_or_path: str = "tiny-base") -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(embedded_dir)
    config.update(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16, "layer_types": ["sliding_attention", "full_attention"]}
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.config._name_or_path = name_or_path
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        shutil.copy(embedded_dir / name, target / name)
    shutil.copy(embedded_dir / "generation_config.json", target / "generation_config.json")
    return target


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The tiny model in this process on one thread: it gains nothing from more, and on shared cores extra
    threads spin (a tenfold slowdown on a loaded 2-core machine). The CLI runs get OMP_NUM_THREADS=1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-base", embedded_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> model_loader.LoadedModel:
    return model_loader.load_model(source=str(tiny_model_dir), device="cpu")


# --- real servers on loopback for the multi-host tests (README: Beyond one machine) -----------------
# PostgreSQL comes from Debian's `postgresql` package and moto's S3 server from PyPI (moto[server]);
# .ci/run installs both. Where they are missing the tests are skipped, except in CI, where that fails.


def _missing(what: str) -> None:
    message = f"{what} is not installed (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0] or ""
            raise RuntimeError(f"{what} did not start on 127.0.0.1:{port}: {out[-2000:]}")
        time.sleep(0.1)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db_name: str

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": self.db_name}  # fmt: skip


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a free loopback port, password authentication over TCP."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    bin_dir = found[-1].parent if found else (Path(p).parent if (p := shutil.which("initdb")) else None)
    if bin_dir is None:
        _missing("the PostgreSQL server (Debian package postgresql)")
    # initdb refuses to run as root: as root, the cluster belongs to the `postgres` user of the package
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="stage1-pg-"))
    password = secrets.token_hex(16)
    (base / "pwfile").write_text(password + "\n")
    (base / "sock").mkdir()
    if as_root:
        for path in (base, base / "pwfile", base / "sock"):
            shutil.chown(path, "postgres", "postgres")
    data, port = base / "data", _free_port()
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                    "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={base / 'pwfile'}"],
                   check=True, capture_output=True, text=True, timeout=120)  # fmt: skip
    options = f"-p {port} -k {base / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
                    "-o", options, "start"], check=True, capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dagster"],
                       check=True, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PGPASSWORD": password})  # fmt: skip
        yield PostgresServer("127.0.0.1", port, "postgres", password, "dagster")
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """What any S3 client (s3fs, boto3) needs to talk to this server instead of AWS."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server in its own process on a free loopback port."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        _missing("moto[server] / s3fs (the dev extra of pyproject.toml)")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for_port(port, proc, "moto's S3 server")
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3 server, with this process's S3 clients pointed at it."""
    import s3fs

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    name = f"stage1-{secrets.token_hex(4)}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name
