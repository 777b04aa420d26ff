"""The container image recipe, its locked dependencies, the systemd unit, and the YAML around
them: linted and scored offline with pinned tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import DEPLOY, K8S, REPO, venv_tool

CONTAINERFILE = DEPLOY / "Containerfile"
UNIT = DEPLOY / "openclaw-sidecar.service"
LOCKS = (DEPLOY / "requirements.lock", DEPLOY / "build-requirements.lock")


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_yaml_lints_clean() -> None:
    result = run(venv_tool("yamllint"), "--strict", "-c", K8S / ".yamllint.yaml", "k8s", "deploy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_lints_clean() -> None:
    # Threshold "style": any finding at all fails, down to the least severe.
    result = run(venv_tool("hadolint"), "--failure-threshold", "style", CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_pins_its_inputs_and_drops_root() -> None:
    text = CONTAINERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages, "no FROM"
    for image in stages:
        image = args.get(image.strip("${}"), image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"not pinned by digest: {image}"
    assert re.search(r"^RUN pip install --require-hashes -r ", text, re.M), "dependencies installed by hash"
    assert re.search(r"^RUN pip install --no-deps --no-build-isolation \.", text, re.M)
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"numeric non-root uid:gid, got {user}"
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", text, re.M)
    assert entrypoint.startswith("["), "exec form: the sidecar itself is PID 1 and gets SIGTERM"


def locked(path: Path) -> dict[str, str]:
    """name -> version of a `--generate-hashes` lock, asserting each pin carries hashes."""
    pins = {}
    for block in re.split(r"\n(?=\S)", path.read_text()):
        if block.startswith("#") or not block.strip():
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        assert match, f"{path.name}: not an exact pin: {block.splitlines()[0]}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{path.name}: no hash for {match[1]}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


@pytest.mark.parametrize("path", LOCKS, ids=lambda p: p.name)
def test_locks_pin_every_package_with_hashes(path: Path) -> None:
    assert locked(path)


def test_locks_satisfy_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pairs = [(LOCKS[0], project["project"]["dependencies"]), (LOCKS[1], project["build-system"]["requires"])]
    for lock, requirements in pairs:
        pins = locked(lock)
        for requirement in map(Requirement, requirements):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{lock.name} lacks {name}: regenerate it (deploy/README.md)"
            assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed: the unit's security exposure is not scored here")
    return path


def test_systemd_unit_exposure_is_at_most_2_0() -> None:
    # --threshold counts tenths: 20 is an overall exposure of 2.0 (lower is safer).
    result = run(systemd_analyze(), "security", "--offline=true", "--threshold=20", "--no-pager", UNIT)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze predates --offline (systemd 252): the unit is not scored here")
    score = re.search(r"Overall exposure level for \S+: (\S+)", result.stdout)
    assert result.returncode == 0, f"exposure {score and score[1]}:\n{result.stdout}{result.stderr}"


def test_systemd_credential_is_the_file_the_config_names() -> None:
    unit = UNIT.read_text()
    (credential,) = re.findall(r"^LoadCredential=(\w+):", unit, re.M)
    config = yaml.safe_load((DEPLOY / "sidecar.example.yaml").read_text())
    # $CREDENTIALS_DIRECTORY of a system unit; the config cannot expand variables.
    assert config["gateway"]["auth"]["tokenFile"] == f"/run/credentials/{UNIT.name}/{credential}"
    stop = int(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M)[1])
    assert stop > config["sidecar"]["drainSeconds"], "systemd must not kill a draining sidecar"
