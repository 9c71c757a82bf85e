"""The Dockerfile (no Docker engine here): hadolint-clean, and built the way the issue requires, read from the
file itself so that a change that breaks a promise fails here rather than in a cluster."""

from __future__ import annotations

import re

import pytest
from deploy_util import ROOT, run

pytestmark = pytest.mark.tools

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> dict[str, list[str]]:
    """Instructions per stage (continuation lines joined, comments dropped), keyed by the stage name."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, flags=re.IGNORECASE)
        if match:
            current = match.group(2) or match.group(1)
            result[current] = [line]
        elif current:
            result[current].append(line)
    return result


def base(stage: str) -> str:
    return re.match(r"FROM\s+(\S+)", stages()[stage][0], flags=re.IGNORECASE).group(1)


def requirement_pin(file: str, package: str) -> str:
    for line in (ROOT / "requirements" / file).read_text().splitlines():
        match = re.match(rf"{re.escape(package)}==(\S+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned in requirements/{file}")


def test_hadolint_reports_nothing(hadolint):
    done = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_every_ignored_hadolint_rule_says_why():
    """An inline `# hadolint ignore=DLxxxx` must follow a comment line that gives the reason."""
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and "hadolint" not in before and len(before) > 10, (
                f"Dockerfile:{number + 1}: {line.strip()} needs a reason comment on the line above")


def test_both_targets_exist_and_run_as_a_numeric_non_root_user():
    found = stages()
    for target in ("operator", "trainer"):
        assert target in found, f"docker build --target {target} needs a stage named {target}"
        users = [line.split()[1] for line in found[target] if line.upper().startswith("USER ")]
        assert users, f"{target}: no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) > 0, f"{target}: USER {users[-1]} must be a numeric non-root uid"


def test_base_images_are_pinned_tags():
    for stage, instructions in stages().items():
        image = re.match(r"FROM\s+(\S+)", instructions[0], flags=re.IGNORECASE).group(1)
        if image in stages() and image != stage:
            continue  # built on an earlier stage
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"{stage}: FROM {image} is not pinned"
        assert "<" not in image and "placeholder" not in image.lower(), f"{stage}: FROM {image}"


def test_final_stages_only_copy_built_environments():
    """No compiler, pip or uv step runs in a final stage: they copy what a build stage installed."""
    found = stages()
    for target in ("operator", "trainer"):
        runs = " ".join(line for line in found[target] if line.upper().startswith("RUN "))
        for word in ("pip ", "uv ", "apt-get", "gcc", "build-essential", "make "):
            assert word not in runs, f"{target}: final stage runs {word.strip()!r}"
        copies = [line for line in found[target] if line.upper().startswith("COPY ")]
        assert copies and all("--from=" in line for line in copies), f"{target}: copies only from build stages"


def test_operator_image_is_python_311_slim_without_torch_or_tensorflow():
    assert re.match(r"python:3\.11\.\d+-slim", base("python-base"))
    assert base("operator") == "python-base"
    build = " ".join(stages()["operator-build"])
    assert "requirements/operator.txt" in build and "/src/operator" in build
    assert "trainer" not in build and "torch" not in build and "tensorflow" not in build


def test_trainer_image_has_cuda_torch_at_the_pinned_version_and_cpu_tensorflow():
    cuda_base = base("cuda-base")
    assert cuda_base.startswith("nvidia/cuda:13.0.") and "-runtime-" in cuda_base, cuda_base
    assert base("trainer") == "cuda-base"
    build = " ".join(stages()["trainer-build"])
    torch = requirement_pin("trainer.txt", "torch")
    # The CUDA 13.0 build of exactly the version the requirements pin, from PyTorch's cu130 index.
    assert "--index-url https://download.pytorch.org/whl/cu130" in build
    assert f"torch=={torch}+cu130" in build
    assert "-r /src/requirements/trainer.txt" in build
    assert requirement_pin("trainer.txt", "tensorflow-cpu")
    assert "tensorflow==" not in (ROOT / "requirements" / "trainer.txt").read_text()
    operator_python = re.match(r"python:(3\.11\.\d+)-", base("python-base")).group(1)
    assert f"uv python install {operator_python}" in build, "both images run the same Python 3.11"


def test_dockerignore_keeps_the_context_to_requirements_and_packages():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"requirements/operator.txt", "requirements/trainer.txt", "operator", "trainer"}
    copied = {m for line in DOCKERFILE.read_text().splitlines()
              for m in re.findall(r"^COPY\s+(?!--from)(\S+)", line)}
    for source in copied:
        assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
