"""deploy/kubernetes: every manifest validates offline against the Kubernetes schemas, and has the properties
production depends on (probes, autoscaling, disruption budgets, graceful stop, hardening, configuration,
egress policy).

``kubernetes-validate`` bundles the Kubernetes JSON schemas in its wheel: no cluster, no network. KEDA's
ScaledObject is a custom resource it has no schema for, so its structure is checked here.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from webhooks.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
Doc = dict[str, Any]


def kustomization_docs(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        assert path.is_file(), f"{directory.name}/kustomization.yaml lists a missing file: {resource}"
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: Doc = containers[0]
    return c


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return kustomization_docs(DEPLOY)


@pytest.fixture(scope="module")
def fallback_docs() -> list[Doc]:
    return kustomization_docs(DEPLOY / "hpa-fallback")


def test_the_schemas_are_bundled_offline() -> None:
    # the package ships its schemas: validating needs no download
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (schemas / f"v{K8S_VERSION}-standalone-strict").is_dir() or (
        schemas / f"v{K8S_VERSION}-local"
    ).is_dir()


def test_every_builtin_resource_validates_against_the_kubernetes_schema(
    docs: list[Doc], fallback_docs: list[Doc]
) -> None:
    checked = 0
    for doc in [*docs, *fallback_docs]:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
        "ScaledObject",
    } <= kinds
    assert checked >= 10


def test_a_broken_manifest_is_refused_by_the_validator(docs: list[Doc]) -> None:
    # the validator really checks: a misspelt field fails
    deployment = dict(by_kind(docs, "Deployment")["webhooks-api"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_api_scales_on_cpu_and_is_probed_on_readyz_and_healthz(docs: list[Doc]) -> None:
    api = by_kind(docs, "Deployment")["webhooks-api"]
    c = container(api)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["args"][:2] == ["webhooks", "serve"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["webhooks-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "webhooks-api"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_workers_scale_on_queue_depth_with_keda_and_on_cpu_without(
    docs: list[Doc], fallback_docs: list[Doc]
) -> None:
    # KEDA's ScaledObject: no schema in kubernetes-validate, so its structure is checked here
    scaled = by_kind(docs, "ScaledObject")["webhooks-worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "webhooks-worker",
    }
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "fallback",
        "advanced",
        "triggers",
        "idleReplicaCount",
    }
    prometheus = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    assert len(prometheus) == 1
    meta = prometheus[0]["metadata"]
    assert "webhooks_queue_depth" in meta["query"]
    assert meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) > 0
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]
    # the worker Deployment is scaled by KEDA only: no second HPA on it in the KEDA variant
    assert "webhooks-worker" not in by_kind(docs, "HorizontalPodAutoscaler")
    # the fallback variant: the same resources with a plain HPA on CPU instead of KEDA
    assert not by_kind(fallback_docs, "ScaledObject")
    hpa = by_kind(fallback_docs, "HorizontalPodAutoscaler")["webhooks-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "webhooks-worker"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_workers_are_probed_with_worker_check_and_stop_gracefully(docs: list[Doc]) -> None:
    worker = by_kind(docs, "Deployment")["webhooks-worker"]
    c = container(worker)
    assert c["args"] == ["webhooks", "worker"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"] == ["webhooks", "worker", "--check"]
    config = by_kind(docs, "ConfigMap")["webhooks-config"]["data"]
    wait = float(
        config.get("WEBHOOKS_WORKER_SHUTDOWN_WAIT", Settings.model_fields["worker_shutdown_wait"].default)
    )
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > wait + 10, "the kubelet must not SIGKILL a worker still finishing its attempts"


def test_pods_run_hardened_with_requests_and_limits(docs: list[Doc]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        c = container(deployment)
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        # the only writable paths are volumes (the data dir and /tmp)
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/var/lib/webhooks", "/tmp"} <= mounts, name


def test_every_deployment_has_a_disruption_budget(docs: list[Doc]) -> None:
    pdbs = by_kind(docs, "PodDisruptionBudget").values()
    for name, deployment in by_kind(docs, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, name


def test_secrets_hold_keys_and_urls_and_the_configmap_the_rest(docs: list[Doc]) -> None:
    secret = by_kind(docs, "Secret")["webhooks-secrets"]["stringData"]
    config = by_kind(docs, "ConfigMap")["webhooks-config"]["data"]
    secret_vars = {
        "WEBHOOKS_SECRET_KEYS",
        "WEBHOOKS_MONGODB_URL",
        "WEBHOOKS_REDIS_URL",
        "WEBHOOKS_REDIS_SENTINELS",
    }
    assert secret_vars <= set(secret)
    assert not secret_vars & set(config)
    # every variable is a real setting (a typo would be silently ignored by the service)
    known = {f"WEBHOOKS_{name.upper()}" for name in Settings.model_fields}
    known |= {"WEBHOOKS_LOG_FORMAT", "WEBHOOKS_LOG_LEVEL"}  # read by webhooks/logging_setup.py
    assert set(config) | set(secret) <= known
    assert config["WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS"] == "false"
    assert config["WEBHOOKS_ALLOW_HTTP"] == "false"
    # the documented replica-set URL shape
    assert "replicaSet=" in secret["WEBHOOKS_MONGODB_URL"] and "w=majority" in secret["WEBHOOKS_MONGODB_URL"]
    for deployment in by_kind(docs, "Deployment").values():
        refs = container(deployment)["envFrom"]
        assert {"configMapRef": {"name": "webhooks-config"}} in refs
        assert {"secretRef": {"name": "webhooks-secrets"}} in refs


PRIVATE = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "fd00::1",
    "fe80::1",
    "::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700::1111"]


def egress_allows(policy: Doc, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if (
                ip.version == net.version
                and ip in net
                and not any(
                    ip in ipaddress.ip_network(e)
                    for e in block.get("except", [])
                    if ipaddress.ip_network(e).version == ip.version
                )
            ):
                return True
    return False


def test_workers_reach_the_internet_but_no_private_range(docs: list[Doc]) -> None:
    policy = by_kind(docs, "NetworkPolicy")["webhooks-worker"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "webhooks-worker"}
    assert "Egress" in policy["spec"]["policyTypes"]
    for address in PUBLIC:
        assert egress_allows(policy, address), address
    for address in PRIVATE:
        assert not egress_allows(policy, address), address
    # DNS stays reachable (by pod selector, not by address)
    dns = [r for r in policy["spec"]["egress"] if any(p.get("port") == 53 for p in r.get("ports", []))]
    assert dns
