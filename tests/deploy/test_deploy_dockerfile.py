"""The Dockerfile (no Docker engine here): hadolint-clean, and built the way the issue requires, read from the
file itself so that a change that breaks a promise fails here rather than in a cluster."""

from __future__ import annotations

import re
import shlex

import pytest
from deploy_util import ROOT, load_yaml_docs, one, run

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
    # `base`, not `runtime`: the cu130 torch wheel brings the CUDA libraries as nvidia-* pip packages.
    assert cuda_base.startswith("nvidia/cuda:13.0.") and "-base-ubuntu" in cuda_base, cuda_base
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


# ------------------------------------------------------------------------------------------------------
# Who the images run as, against who the pods run as.

def instruction_args(stage: str, instruction: str) -> list[str]:
    """Arguments of every `instruction` (USER, WORKDIR, ENV...) of a stage, in order."""
    return [line.split(None, 1)[1] for line in stages()[stage] if line.upper().startswith(instruction + " ")]


def env(stage: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for args in instruction_args(stage, "ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            found[key] = value
    return found


def user(stage: str) -> tuple[int, int]:
    uid, _, gid = instruction_args(stage, "USER")[-1].partition(":")
    return int(uid), int(gid or uid)


def shell(stage: str) -> str:
    return " ".join(instruction_args(stage, "RUN"))


def test_trainer_runs_as_the_uid_the_operator_gives_its_pods():
    from kubefusion_operator import api

    assert user("trainer") == (api.RUN_AS_USER, api.RUN_AS_USER), (
        f"trainer USER {user('trainer')} but the operator runs pods as {api.RUN_AS_USER}:{api.RUN_AS_USER} "
        "(kubefusion_operator.api.RUN_AS_USER)")
    script = shell("trainer")
    assert f"useradd --uid {api.RUN_AS_USER} --gid {api.RUN_AS_USER}" in script
    assert f"groupadd --gid {api.RUN_AS_USER}" in script


def test_ubuntus_own_uid_1000_user_is_removed_before_ours_is_added():
    """ubuntu:24.04 (so nvidia/cuda's ubuntu24.04) has user and group `ubuntu` as 1000: useradd/groupadd
    --uid/--gid 1000 would fail on it."""
    script = shell("trainer")
    assert "ubuntu24.04" in base("cuda-base")
    assert script.index("userdel ubuntu") < script.index("groupdel ubuntu") < script.index("groupadd")
    assert script.index("groupadd") < script.index("useradd")


def test_trainer_home_and_hf_cache_are_writable_for_its_uid_and_group_0_and_readable_by_all():
    from kubefusion_operator import api

    variables = env("trainer")
    home, hf_home = variables["HOME"], variables["HF_HOME"]
    assert instruction_args("trainer", "WORKDIR")[-1] == home
    assert hf_home == "/opt/hf-cache" and variables["HF_HUB_OFFLINE"] == "1"
    script = shell("trainer")
    assert f"--home-dir {home}" in script and "--create-home" not in script, (
        "useradd --create-home makes HOME mode 0750 (Ubuntu's HOME_MODE)")
    for folder in (home, hf_home):
        assert re.search(rf"mkdir -p [^&]*{re.escape(folder)}\b", script), folder
        assert re.search(rf"chown {api.RUN_AS_USER}:0 [^&]*{re.escape(folder)}\b", script), folder
        assert re.search(rf"chmod 0775 [^&]*{re.escape(folder)}\b", script), folder
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert hf_home in deploy and f"uid {api.RUN_AS_USER}" in deploy, "docs/deploy.md says where to bake weights"


def test_operator_image_user_is_what_the_chart_and_manifests_run_it_as(render):
    uid, gid = user("operator")
    assert f"useradd --system --uid {uid} --gid {gid}" in shell("operator")
    rendered = one(render(), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    manifest = one(load_yaml_docs((ROOT / "manifests" / "operator.yaml").read_text()), "Deployment")
    for where, context in (("chart", rendered), ("manifests/operator.yaml",
                                                 manifest["spec"]["template"]["spec"]["securityContext"])):
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), (
            f"{where} runs the operator as {context['runAsUser']}:{context['runAsGroup']}, the image as {uid}:{gid}")


def test_local_packages_build_on_the_pinned_setuptools_without_isolation():
    """An isolated build would fetch the newest setuptools at build time: the packages are built with
    --no-build-isolation on a setuptools pinned in the Dockerfile, installed before them in the same stage."""
    text = DOCKERFILE.read_text()
    pin = re.search(r"^ARG SETUPTOOLS_VERSION=(\d+\.\d+\.\d+)$", text, flags=re.MULTILINE)
    assert pin, "ARG SETUPTOOLS_VERSION=<x.y.z> before the first FROM"
    assert text.index(pin.group(0)) < text.index("\nFROM ")
    for stage, package in (("operator-build", "/src/operator"), ("trainer-build", "/src/trainer")):
        lines = stages()[stage]
        assert "ARG SETUPTOOLS_VERSION" in lines, f"{stage} must redeclare the global ARG"
        installs = [i for i, line in enumerate(lines) if re.search(rf"install .*{package}\b", line)]
        assert installs and all("--no-build-isolation" in lines[i] for i in installs), f"{stage}: {package}"
        pinned = [i for i, line in enumerate(lines) if '"setuptools==${SETUPTOOLS_VERSION}"' in line]
        assert pinned and pinned[0] < installs[0], f"{stage}: install the pinned setuptools before {package}"
        assert "requirements/" in lines[pinned[0]], (
            f"{stage}: pin setuptools in the same resolve as the requirements, so no dependency pulls another")
