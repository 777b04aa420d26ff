"""The shipped deployment files stay consistent with the code that reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config import load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"


def test_kustomization_references_exist_and_parse() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        documents = list(yaml.safe_load_all((K8S / resource).read_text()))
        assert documents and all({"apiVersion", "kind", "metadata"} <= doc.keys() for doc in documents), resource
    for generator in kustomization["configMapGenerator"]:
        for name in generator["files"]:
            assert (K8S / name).is_file(), name


def test_pod_keeps_the_gateway_behind_the_sidecar() -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert "ports" not in containers["gateway"], "the gateway must not be exposed beside the sidecar"
    sidecar = containers["sidecar"]
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    config = load_config(K8S / "sidecar.yaml", {"openclaw_config": K8S / "openclaw.json5"}, environ={})
    assert str(config.sidecar.runtime_dir) in mounts, "the runtime dir must be a writable mount"


@pytest.mark.parametrize("path", [K8S / "sidecar.yaml", REPO / "deploy" / "sidecar.example.yaml"])
def test_shipped_sidecar_configs_validate(path: Path, tmp_path: Path) -> None:
    # The example mounts its token at /etc/openclaw-sidecar/token; point it at a real file.
    token_file = tmp_path / "token"
    token_file.write_text("t\n")
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("/etc/openclaw-sidecar/token", str(token_file)))
    config = load_config(copy, {"openclaw_config": K8S / "openclaw.json5"}, environ={"OPENCLAW_GATEWAY_TOKEN": "t"})
    assert config.secrets.mode == "token"
    assert config.rules.gateway.trusted_proxies, "shipped configs name their proxies explicitly"
