"""deploy/kubernetes: manifests parse and carry what an operator relies on (probes, secrets, scrape)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ops.miniyaml import load, load_all
from plugind.config import load_config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
MANIFESTS = ["namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "secret.yaml", "service.yaml",
             "daemonset.yaml"]


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict]:
    out = {}
    for name in MANIFESTS:
        for doc in load_all((K8S / name).read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


@pytest.fixture(scope="module")
def container(docs) -> dict:
    (c,) = docs[("DaemonSet", "plugind")]["spec"]["template"]["spec"]["containers"]
    return c


def test_kustomization_lists_every_manifest():
    kust = load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(MANIFESTS)
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted([*MANIFESTS, "kustomization.yaml"])


def test_every_object_is_named_and_namespaced(docs):
    for (kind, name), doc in docs.items():
        assert doc["apiVersion"] and name
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "plugind", (kind, name)


def test_probes(container):
    # On the probe listener, which answers while slow clients hold every API connection.
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "probe"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "probe"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "probe"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 7070, "probe": 7071}


def test_the_probe_port_is_the_configured_probe_listener_and_not_in_the_service(docs, container, tmp_path):
    path = tmp_path / "plugins.toml"
    path.write_text(docs[("ConfigMap", "plugind-config")]["data"]["plugins.toml"])
    settings = load_config(path, env=False)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.api.probe_listen == f"0.0.0.0:{ports['probe']}"  # the kubelet probes the pod IP
    assert settings.api.listen.rpartition(":")[2] == str(ports["http"])
    service_ports = docs[("Service", "plugind")]["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]


def test_prometheus_scrape_annotations(docs):
    template = docs[("DaemonSet", "plugind")]["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "7070",
        "prometheus.io/path": "/metrics",
    }


def test_secrets_come_from_the_secret(docs, container):
    secret = docs[("Secret", "plugind-secrets")]
    env = {e["name"]: e for e in container["env"]}
    for var in ("PLUGIN_TRUST_KEY", "PLUGIND_API_TOKEN"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "plugind-secrets"
        assert ref["key"] in secret["stringData"]
        assert "value" not in env[var]


def test_selector_service_account_and_volumes(docs, container):
    ds = docs[("DaemonSet", "plugind")]["spec"]
    assert ds["selector"]["matchLabels"].items() <= ds["template"]["metadata"]["labels"].items()
    pod = ds["template"]["spec"]
    assert ("ServiceAccount", pod["serviceAccountName"]) in docs
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) <= set(volumes)
    assert ("ConfigMap", volumes["config"]["configMap"]["name"]) in docs
    assert mounts["config"]["mountPath"] == "/etc/plugind" and mounts["config"]["readOnly"] is True
    assert mounts["plugins"]["readOnly"] is True
    svc = docs[("Service", "plugind")]["spec"]
    assert svc["selector"].items() <= ds["template"]["metadata"]["labels"].items()


def test_security_context_has_what_the_sandbox_needs_and_no_more(container):
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = set(sc["capabilities"]["add"])
    assert {"SYS_ADMIN", "SETPCAP", "NET_ADMIN"} <= added
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    # The API server rejects allowPrivilegeEscalation=false together with SYS_ADMIN.
    assert sc["allowPrivilegeEscalation"] is True


def test_configmap_is_a_valid_plugind_config(docs, container, tmp_path):
    toml = docs[("ConfigMap", "plugind-config")]["data"]["plugins.toml"]
    path = tmp_path / "plugins.toml"
    path.write_text(toml)
    settings = load_config(path, env=False)
    assert settings.api.listen == "0.0.0.0:7070"
    assert str(settings.logging.audit_log).startswith("/var/lib/plugind/data/")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/plugind/data" in mounts
    assert str(settings.plugins.directory) in mounts
    assert container["args"] == ["serve", "--config", "/etc/plugind/plugins.toml"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_reads_the_same_objects(docs):
    # kubectl parses with a real YAML library and re-emits: our reading must match its reading.
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in load_all(out)}
    assert theirs == docs
