"""The rendered Kubernetes objects: valid for the API versions we support, and holding the
security properties the deployment relies on (k8s/README.md says why each one matters)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from .conftest import ADMIN_PORT, GATEWAY_PORT, SIDECAR_PORT, Render

# The oldest Kubernetes with native sidecars and the preStop sleep action by default, and the
# newest that kubernetes-validate knows.
API_VERSIONS = ("1.33.0", "1.37.0")


@pytest.mark.parametrize("version", API_VERSIONS)
def test_renders_validate_strictly(rendered: Render, version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed: pip install -e '.[test]'")
    errors = []
    for doc in rendered.docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_every_object_lands_in_one_namespace(rendered: Render) -> None:
    # The NetworkPolicy names the proxies by their Ingress's namespace, and redis:// by a short name.
    assert {d["metadata"].get("namespace") for d in rendered.docs} == {"openclaw"}


def pod_templates(rendered: Render) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in rendered.of_kind("Deployment")]


def test_every_container_meets_pod_security_restricted(rendered: Render) -> None:
    for pod in pod_templates(rendered):
        assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
        assert all("hostPath" not in v for v in pod.get("volumes", []))
        assert pod.get("automountServiceAccountToken") is False, "no API credentials in the pod"
        pod_context = pod.get("securityContext", {})
        for container in pod.get("initContainers", []) + pod["containers"]:
            name, context = container["name"], container.get("securityContext", {})

            def effective(key: str, context: dict[str, Any] = context) -> Any:
                return context.get(key, pod_context.get(key))

            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("privileged") is not True, name
            assert context.get("capabilities") == {"drop": ["ALL"]}, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert effective("runAsNonRoot") is True, name
            # Numbers: runAsNonRoot cannot check an image's `USER name`.
            for key in ("runAsUser", "runAsGroup"):
                assert isinstance(effective(key), int) and effective(key) > 0, f"{name}: {key}"
            assert effective("seccompProfile") == {"type": "RuntimeDefault"}, name
            assert all("hostPort" not in p for p in container.get("ports", [])), name
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), name
            assert "memory" in resources.get("limits", {}), name


def test_sidecar_is_a_native_sidecar_probed_on_its_admin_port(rendered: Render) -> None:
    sidecar = rendered.sidecar
    assert sidecar["restartPolicy"] == "Always", "an init container that keeps running"
    assert [c["name"] for c in rendered.pod["containers"]] == ["gateway"]
    probes = {kind: sidecar[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {kind: (p["path"], p["port"]) for kind, p in probes.items()} == {
        "startupProbe": ("/healthz", ADMIN_PORT),
        "livenessProbe": ("/healthz", ADMIN_PORT),
        "readinessProbe": ("/readyz", ADMIN_PORT),
    }
    assert {p["containerPort"] for p in sidecar["ports"]} == {SIDECAR_PORT, ADMIN_PORT}
    settings = rendered.sidecar_config["sidecar"]
    assert settings["listen"] == f"0.0.0.0:{SIDECAR_PORT}"
    assert settings["adminListen"] == f"0.0.0.0:{ADMIN_PORT}", "the kubelet probes the pod IP"


def test_gateway_is_reachable_only_through_the_sidecar(rendered: Render) -> None:
    gateway = rendered.gateway
    assert "ports" not in gateway
    assert gateway["command"][-4:] == ["--bind", "loopback", "--port", str(GATEWAY_PORT)]
    # Loopback is out of the kubelet's reach: the gateway's probes run inside its container.
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert f"http://127.0.0.1:{GATEWAY_PORT}/" in " ".join(gateway[kind]["exec"]["command"]), kind
    service = rendered.get("Service", "openclaw-gateway")
    assert service["spec"]["selector"].items() <= rendered.deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(SIDECAR_PORT, SIDECAR_PORT)]
    assert rendered.sidecar_config["sidecar"]["upstream"] == f"http://127.0.0.1:{GATEWAY_PORT}"


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_gateways_unauthenticated_socket_budget_is_the_sidecars_to_share(rendered: Render) -> None:
    """Every client reaches the gateway from the sidecar's address, whose 32 sockets before connect
    four clients' shares of 8 would fill for everyone: the gateway's budget is raised far past them."""
    share = rendered.sidecar_config["sidecar"].get("websocket", {}).get("unauthenticatedPerClient", 8)
    assert int(env(rendered.gateway)["OPENCLAW_MAX_PREAUTH_CONNECTIONS_PER_IP"]) >= 100 * share


def test_both_containers_read_one_config_map(rendered: Render) -> None:
    gateway_config = env(rendered.gateway)["OPENCLAW_CONFIG_PATH"]  # the gateway has no --config flag
    gateway_volume, gateway_key = rendered.mounted(rendered.gateway, gateway_config)
    sidecar_rules = rendered.sidecar_config["sidecar"]["openclawConfig"]
    sidecar_volume, sidecar_key = rendered.mounted(rendered.sidecar, sidecar_rules)
    assert gateway_volume == sidecar_volume and "configMap" in gateway_volume
    assert gateway_key == sidecar_key == "openclaw.json5"
    gateway_json5 = rendered.config_file(rendered.gateway, gateway_config)
    assert 'bind: "loopback"' in gateway_json5
    # Otherwise the gateway writes its state beside the config, in the read-only mount.
    state, _ = rendered.mounted(rendered.gateway, env(rendered.gateway)["OPENCLAW_STATE_DIR"])
    assert "emptyDir" in state


def test_token_reaches_both_containers_from_one_secret(rendered: Render) -> None:
    token_file = rendered.sidecar_config["gateway"]["auth"]["tokenFile"]
    volume, key = rendered.mounted(rendered.sidecar, token_file)
    secret_name = volume["secret"]["secretName"]
    # Created once outside git: a Secret in the kustomization would be reset by every apply.
    assert not rendered.of_kind("Secret"), "no apply may reset the token"
    # A directory mount: a subPath mount would never see a rotated Secret.
    assert all("subPath" not in m for m in rendered.sidecar["volumeMounts"])
    same_key = {"secretKeyRef": {"name": secret_name, "key": key}}
    assert env(rendered.gateway)["OPENCLAW_GATEWAY_TOKEN"] == same_key
    # The upstream credential is the one the gateway started with (both from the environment).
    assert env(rendered.sidecar)["OPENCLAW_SIDECAR_UPSTREAM_AUTH__TOKEN"] == same_key
    assert "OPENCLAW_GATEWAY_TOKEN" not in env(rendered.sidecar), "the file, which rotates, is the sidecar's"
    assert all(m["name"] != volume["name"] for m in rendered.gateway["volumeMounts"])


def test_writable_paths_are_empty_dirs(rendered: Render) -> None:
    runtime, _ = rendered.mounted(rendered.sidecar, rendered.sidecar_config["sidecar"]["runtimeDir"])
    assert "emptyDir" in runtime
    for path in (env(rendered.gateway)["HOME"], "/tmp"):
        volume, inside = rendered.mounted(rendered.gateway, path)
        assert "emptyDir" in volume and inside == ".", path
    for container in (rendered.sidecar, rendered.gateway):
        for mount in container["volumeMounts"]:
            if "emptyDir" not in rendered.volume(mount["name"]):
                assert mount.get("readOnly") is True, f"{container['name']}: {mount['mountPath']}"


def test_network_policy_admits_the_ingress_proxies_and_monitoring_only(rendered: Render) -> None:
    policy = rendered.get("NetworkPolicy", "openclaw-gateway-ingress")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= rendered.deployment["spec"]["template"]["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress"]
    admitted = {}
    for rule in spec["ingress"]:
        # A rule without `from` or `ports` admits everyone or every port.
        assert rule.get("from") and rule.get("ports"), rule
        assert all("ipBlock" not in peer for peer in rule["from"]), "by label, not address"
        for port in rule["ports"]:
            admitted[port["port"]] = rule["from"]
    assert admitted.keys() == {SIDECAR_PORT, ADMIN_PORT}
    (proxies,) = admitted[SIDECAR_PORT]
    assert proxies["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "tailscale"}}
    assert proxies["podSelector"]["matchLabels"] == {
        "tailscale.com/managed": "true",
        "tailscale.com/parent-resource-type": "ingress",
        "tailscale.com/parent-resource": "openclaw-gateway",
        "tailscale.com/parent-resource-ns": policy["metadata"]["namespace"],
    }
    (monitoring,) = admitted[ADMIN_PORT]
    assert monitoring == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


# Where a tool the gateway runs might be talked into connecting: every cloud's metadata service
# (AWS over IPv4 and IPv6, Alibaba), Azure's WireServer, a pod, a Service, the node networks,
# loopback, a tailnet address, one behind IPv4-mapped IPv6; each IPv4 one is also tried behind the
# NAT64 prefix. For contrast, public addresses, one of them behind NAT64.
UNREACHABLE = ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "10.42.0.7", "10.43.0.1",
               "172.20.0.1", "192.168.1.1", "127.0.0.1", "100.101.102.103", "fd7a:115c:a1e0::1", "fe80::1", "::1",
               "::ffff:169.254.169.254", "64:ff9b:1::a9fe:a9fe", "224.0.0.1", "0.0.0.0", "198.18.0.1", "192.0.0.8")
REACHABLE = ("1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def behind_nat64(address: str) -> list[str]:
    ip = ipaddress.ip_address(address)
    return [str(ipaddress.IPv6Address(int(NAT64.network_address) + int(ip)))] if ip.version == 4 else []


def test_gateway_pods_reach_dns_and_public_addresses_only(rendered: Render) -> None:
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in rendered.of_kind("NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]
                and p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
    assert "openclaw-gateway-egress" in {p["metadata"]["name"] for p in policies}
    blocks, peers = [], set()
    for rule in (rule for p in policies for rule in p["spec"]["egress"]):
        assert rule.get("to"), f"a rule without `to` admits every address: {rule}"
        ports = frozenset((p["port"], p["protocol"]) for p in rule.get("ports", []))  # none: every port
        for peer in rule["to"]:
            if "ipBlock" in peer:
                blocks.append((peer["ipBlock"], ports))
            else:
                assert ports, f"every port of {peer}"
                namespace = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                peers.add((namespace, tuple(sorted(peer["podSelector"]["matchLabels"].items())), tuple(sorted(ports))))

    def admitted(address: str, port: int, protocol: str = "TCP") -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(b["cidr"])
                   and not any(ip in ipaddress.ip_network(e) for e in b.get("except", []))
                   and (not ports or (port, protocol) in ports) for b, ports in blocks)

    for address in (a for found in UNREACHABLE for a in (found, *behind_nat64(found))):
        assert not [port for port in (80, 443, 8080) if admitted(address, port)], address
    assert [a for a in REACHABLE if not admitted(a, 443)] == []
    # GKE's Cloud DNS answers on the metadata address: its port 53, nothing else.
    assert admitted("169.254.169.254", 53, "UDP") and admitted("169.254.169.254", 53, "TCP")
    dns = ("kube-system", (("k8s-app", "kube-dns"),), ((53, "TCP"), (53, "UDP")))
    redis = (None, (("app", "openclaw-redis"),), ((6379, "TCP"),))
    assert peers == ({dns, redis} if rendered.name == "redis" else {dns})


def test_disruption_budget_covers_the_pods(rendered: Render) -> None:
    (budget,) = rendered.of_kind("PodDisruptionBudget")
    labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # With one replica, minAvailable: 1 would block every node drain.
    assert budget["spec"].get("maxUnavailable") == 1


def test_stop_budget_covers_the_gateway_and_the_drain(rendered: Render) -> None:
    # The gateway stops first (its preStop sleep, then its own drain); the native sidecar is
    # stopped after it and drains for drainSeconds: the grace period must hold both.
    drain = rendered.sidecar_config["sidecar"]["drainSeconds"]
    pre_stop = rendered.gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert rendered.pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10


def test_tailscale_ingress_is_tailnet_only(renders: dict[str, Render]) -> None:
    rendered = renders["tailscale-ingress"]
    (ingress,) = rendered.of_kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "tailscale"
    backend = ingress["spec"]["defaultBackend"]["service"]
    assert backend == {"name": "openclaw-gateway", "port": {"number": SIDECAR_PORT}}
    # The NetworkPolicy names this Ingress's proxy pods.
    proxies = rendered.get("NetworkPolicy", "openclaw-gateway-ingress")["spec"]["ingress"][0]["from"][0]
    assert proxies["podSelector"]["matchLabels"]["tailscale.com/parent-resource"] == ingress["metadata"]["name"]
    assert proxies["podSelector"]["matchLabels"]["tailscale.com/parent-resource-ns"] == ingress["metadata"]["namespace"]


def test_nothing_opens_a_funnel(rendered: Render) -> None:
    for doc in rendered.docs:
        annotations = doc["metadata"].get("annotations", {})
        assert not [a for a in annotations if a.startswith("tailscale.com/funnel")], doc["metadata"]["name"]


def test_redis_overlay_shares_one_limiter_between_two_replicas(renders: dict[str, Render]) -> None:
    rendered = renders["redis"]
    assert rendered.deployment["spec"]["replicas"] == 2
    pods = rendered.deployment["spec"]["template"]
    (spread,) = pods["spec"]["topologySpreadConstraints"]  # not both replicas on one node, where there are two
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"].items() <= pods["metadata"]["labels"].items()
    assert env(rendered.sidecar)["OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE"] == "redis://openclaw-redis:6379/0"
    service = rendered.get("Service", "openclaw-redis")
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    redis_pods = rendered.get("Deployment", "openclaw-redis")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= redis_pods.items()
    policy = rendered.get("NetworkPolicy", "openclaw-redis-ingress")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_pods.items()
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "openclaw-gateway"}}}],
                                  "ports": [{"port": 6379, "protocol": "TCP"}]}]


def test_redis_requires_the_password_the_sidecar_reads(renders: dict[str, Render]) -> None:
    """Not the NetworkPolicy alone (a network plugin may not enforce it): redis requires a
    password, from the Secret whose file the sidecar reads, and its probe authenticates."""
    rendered = renders["redis"]
    password_file = env(rendered.sidecar)["OPENCLAW_SIDECAR_RATE_LIMIT__STORAGE_PASSWORD_FILE"]
    volume, key = rendered.mounted(rendered.sidecar, password_file)
    assert volume["secret"]["defaultMode"] == 0o440 and all("subPath" not in m for m in rendered.sidecar["volumeMounts"])
    same_key = {"secretKeyRef": {"name": volume["secret"]["secretName"], "key": key}}
    (redis,) = rendered.get("Deployment", "openclaw-redis")["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert env(redis)["REDIS_PASSWORD"] == same_key and env(redis)["REDISCLI_AUTH"] == same_key
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "-e", "ping"]  # -e: a refused AUTH fails it
    assert all(m["name"] != volume["name"] for m in rendered.gateway["volumeMounts"]), "the sidecar's alone"
    assert not rendered.of_kind("Secret"), "created once outside git, as the token"


@pytest.mark.parametrize("name", ["base", "tailscale-ingress"])
def test_single_replica_keeps_the_limiter_in_memory(renders: dict[str, Render], name: str) -> None:
    rendered = renders[name]
    assert rendered.deployment["spec"]["replicas"] == 1
    storage = rendered.sidecar_config["sidecar"].get("rateLimit", {}).get("storage", "memory://")
    assert storage == "memory://"
    assert not [d for d in rendered.docs if "redis" in d["metadata"]["name"]], "no dangling redis"
