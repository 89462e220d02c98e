"""The deployment files agree with the `zoo serve` they run: the Dockerfile's command and the
Kubernetes manifests' arguments parse as `zoo serve` flags, and their ports, probes, labels and
user match those flags and the API. (Building the image and running the manifests needs Docker
and a cluster, which this machine has not.) Runs once."""

import json
import re

import click
import pytest
import yaml

from cli.serve import serve
from conftest import ROOT
from server.main import SERVICE_NAME

pytestmark = pytest.mark.backend_independent


def serve_flags(args):
    """The parameters `zoo serve ARGS` would run with (parsed by the command itself, not run)."""
    with serve.make_context("serve", list(args), resilient_parsing=False) as context:
        return context.params


def dockerfile():
    """{instruction: [arguments, ...]} of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.setdefault(keyword, []).append(rest.strip())
    return instructions


def test_the_image_runs_zoo_serve_as_a_non_root_user_on_its_exposed_ports():
    docker = dockerfile()
    entrypoint, command = json.loads(docker["ENTRYPOINT"][-1]), json.loads(docker["CMD"][-1])
    assert entrypoint == ["zoo", "serve"]
    params = serve_flags(command)
    assert params["path"] == "/models" and json.loads(docker["VOLUME"][-1]) == ["/models"]
    assert params["host"] == "0.0.0.0"
    assert sorted(map(int, docker["EXPOSE"][-1].split())) == sorted([params["port"], params["http_port"],
                                                                     params["metrics_port"]])
    assert '"aiohttp' in " ".join(docker["RUN"])  # what --http-port needs
    user = docker["USER"][-1]
    assert user.isdigit() and int(user) != 0
    health = " ".join(docker["HEALTHCHECK"])
    assert f"127.0.0.1:{params['port']}" in health and "HealthStub" in health
    assert "tensorflow" not in " ".join(docker["RUN"]).lower()  # serving needs no TensorFlow


def test_the_manifests_match_the_flags_ports_and_health_services():
    documents = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "zoo.yaml").read_text())}
    assert set(documents) == {"Deployment", "Service", "PodDisruptionBudget"}
    deployment, service, budget = documents["Deployment"], documents["Service"], documents["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels and budget["spec"]["selector"]["matchLabels"] == labels
    container = pod["spec"]["containers"][0]
    params = serve_flags(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": params["port"], "http": params["http_port"], "metrics": params["metrics_port"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == params["port"]
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME)  # the names `zoo serve` reports health for
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert pod["spec"]["terminationGracePeriodSeconds"] > params["grace_period"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and pod["spec"]["securityContext"]["runAsUser"] != 0
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[params["path"]]["readOnly"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one address record per pod, for round_robin
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["grpc"]["port"] == params["port"] and service_ports["grpc"]["targetPort"] == "grpc"
    assert service_ports["http"]["port"] == params["http_port"] and service_ports["http"]["targetPort"] == "http"
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_a_flag_the_command_lacks_would_be_caught():
    with pytest.raises(click.NoSuchOption):
        serve_flags(["/models", "--no-such-flag", "1"])
    with pytest.raises(click.BadParameter):
        serve_flags(["/models", "--port", "eighty"])
