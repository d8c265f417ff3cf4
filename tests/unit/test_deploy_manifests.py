"""The deployment files, checked offline: Kubernetes (kustomize), docker compose, the image.

- ``kubectl kustomize deploy/kubernetes`` renders the manifests, and every document (with the
  two examples kept out of the kustomization) is validated strictly against the Kubernetes
  JSON schemas that ``kubernetes-validate`` bundles, for fixed Kubernetes versions.
- The compose file goes through ``docker compose config`` (or Debian's ``docker-compose``;
  neither needs a Docker engine for that) and the compose-spec JSON schema that
  ``check-jsonschema`` bundles; nginx itself checks the compose stack's nginx configuration.
- Then what the deployment promises: probes, drain timing against the settings in effect,
  security context, volumes, secret references only, autoscaling and disruption budget.

Tools missing (kubectl, docker compose, nginx): the tests skip, or fail under
``TOKENRELAY_TEST_TOOLS=required`` (as ``.ci/run`` sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import generate_latest

from tokenrelay.config import Settings, read_settings
from tokenrelay.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
EXAMPLES = (KUSTOMIZE_DIR / "secret.example.yaml", KUSTOMIZE_DIR / "migrate-job.example.yaml")
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
NGINX_SITE = DEPLOY / "nginx" / "tokenrelay.conf"
ALERTS = DEPLOY / "prometheus" / "tokenrelay-alerts.yml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# Validated against the oldest Kubernetes the manifests aim at and the newest one that
# kubernetes-validate (pinned in pyproject.toml) bundles. Fixed, so that a new release of the
# package cannot change what passes.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
SECRET_ENV = ("TOKENRELAY_AUTH__ADMIN_KEY", "OPENAI_API_KEY", "TOKENRELAY_LEDGER__DATABASE_URL")
# Dummy values for the compose file's required variables (its secrets).
COMPOSE_ENV = {"POSTGRES_PASSWORD": "pw-for-the-test", "TOKENRELAY_ADMIN_KEY": "admin-for-the-test"}
# What the issue asks of the [cluster] section.
CLUSTER_SETTINGS = {
    "orphan_after_seconds": 15,
    "resumable_default": False,
    "resumable_fallback": False,
    "resume_grace_seconds": 30,
    "resume_retention_seconds": 300,
}
# uvicorn's graceful-shutdown time-out is drain_seconds + this (tokenrelay serve, cli.py).
UVICORN_SHUTDOWN_MARGIN_SECONDS = 10


def _tool(*candidates: str, package: str) -> str:
    """The first candidate found on PATH; else skip, or fail where tools are required."""
    for name in candidates:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if path:
            return path
    message = f"needs {' or '.join(candidates)} ({package})"
    if os.environ.get("TOKENRELAY_TEST_TOOLS") == "required":
        pytest.fail(message)
    pytest.skip(message)


def _run(
    args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize deploy/kubernetes`` renders."""
    kubectl = _tool("kubectl", package="the kubectl client; no cluster needed")
    done = _run([kubectl, "kustomize", str(KUSTOMIZE_DIR)])
    assert done.returncode == 0, done.stderr
    return _load_all(done.stdout)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["tokenrelay"]
    return containers[0]


def _pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_kustomization_renders_the_gateway_and_no_secret(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    kustomization = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for example in EXAMPLES:
        assert example.name not in listed, f"{example.name} is an example, not a resource"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]], version: str
) -> None:
    documents = [(f"kustomize: {doc['kind']}/{doc['metadata']['name']}", doc) for doc in rendered]
    for example in EXAMPLES:
        documents += [(f"{example.name}: {doc['kind']}", doc) for doc in _load_all(example.read_text())]
    errors = []
    for name, doc in documents:
        try:
            # strict: unknown fields are errors; a kind without a schema raises too.
            checked = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(str(p) for p in exc.path)}: {exc.message}")
            continue
        assert checked == version.rsplit(".", 1)[0], f"{name} was checked against {checked}"
    assert not errors, "\n".join(errors)


def test_probes_point_at_healthz_and_readyz(rendered: list[dict[str, Any]]) -> None:
    container = _container(rendered)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # /readyz waits up to 2 s for the database (ledger.db.is_reachable): the probe must wait longer.
    assert container["readinessProbe"]["timeoutSeconds"] > 2
    assert container["args"] == ["--port", "8000"]
    service = _one(rendered, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert (
        service["spec"]["selector"].items()
        <= _one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"


def _deployment_settings(
    rendered: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings a replica runs with: the ConfigMap's file and the container's environment."""
    container = _container(rendered)
    env: dict[str, str] = {}
    for var in container["env"]:
        env[var["name"]] = var.get("value", f"from-secret-{var['name'].lower()}")
    config_map = _one(rendered, "ConfigMap")
    config_path = Path(env["TOKENRELAY_CONFIG_FILE"])
    mount = next(m for m in container["volumeMounts"] if config_path.parent == Path(m["mountPath"]))
    volume = next(v for v in _pod_spec(rendered)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    toml_file = tmp_path / config_path.name
    toml_file.write_text(config_map["data"][config_path.name])
    _assert_sets_the_cluster_settings(toml_file)
    return _settings_with_env(monkeypatch, toml_file, env)


def _assert_sets_the_cluster_settings(toml_file: Path) -> None:
    """The file itself says what the replicas share (not left to defaults), and holds no secret."""
    config = tomllib.loads(toml_file.read_text())
    assert config["auth"]["enabled"] is True
    assert config["auth"]["redis_url"].startswith("redis://")
    assert config["cluster"] == {"redis_url": config["auth"]["redis_url"], **CLUSTER_SETTINGS}
    assert "database_url" not in config.get("ledger", {}), "the database URL holds a password: env only"
    assert "admin_key" not in config["auth"], "the admin key: env only"


def _settings_with_env(monkeypatch: pytest.MonkeyPatch, toml_file: Path, env: dict[str, str]) -> Settings:
    """``read_settings`` as the replica runs it: that file, that environment and no other TOKENRELAY_*."""
    for name in list(os.environ):
        if name.startswith("TOKENRELAY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return read_settings(toml_file)


def test_termination_grace_covers_the_prestop_sleep_the_drain_and_the_ledger_flush(
    rendered: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _deployment_settings(rendered, tmp_path, monkeypatch)
    container = _container(rendered)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = int(command[1])
    assert 3 <= pre_stop <= 15, "a few seconds for the endpoints to drop the pod"
    grace = _pod_spec(rendered)["terminationGracePeriodSeconds"]
    drain, flush = settings.drain_seconds, settings.ledger.shutdown_flush_seconds
    assert (drain, flush) == (10, 5)
    assert grace > pre_stop + drain + flush
    # And uvicorn's last resort (drain_seconds + 10) still ends before the kill.
    assert grace > pre_stop + drain + UVICORN_SHUTDOWN_MARGIN_SECONDS + flush


def test_the_replicas_run_with_the_settings_the_deployment_means(
    rendered: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _deployment_settings(rendered, tmp_path, monkeypatch)
    assert settings.auth.enabled
    assert settings.auth.redis_url
    assert settings.cluster.redis_url == settings.auth.redis_url
    for name, value in CLUSTER_SETTINGS.items():
        assert getattr(settings.cluster, name) == value, name
    assert settings.ledger.database_url == "from-secret-tokenrelay_ledger__database_url"
    assert settings.auth.admin_key is not None
    assert settings.port == 8000


def test_pods_run_unprivileged_on_a_read_only_root(rendered: list[dict[str, Any]]) -> None:
    pod = _pod_spec(rendered)
    container = _container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # No API token in the pods, and no TOKENRELAY_PORT=tcp://... from the Service's env links.
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    account = _one(rendered, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False


def test_the_spool_and_tmp_are_volumes(rendered: list[dict[str, Any]]) -> None:
    container = _container(rendered)
    env = {var["name"]: var for var in container["env"]}
    volumes = {volume["name"]: volume for volume in _pod_spec(rendered)["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    spool_dir = env["TOKENRELAY_LEDGER__SPOOL_DIR"]["value"]
    assert spool_dir in mounts, "the spool must be on a volume (the root filesystem is read-only)"
    assert "emptyDir" in volumes[mounts[spool_dir]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The image's own spool directory is the same, so its VOLUME and this mount agree.
    assert f"TOKENRELAY_LEDGER__SPOOL_DIR={spool_dir}" in DOCKERFILE.read_text()


def test_secrets_are_only_referenced(rendered: list[dict[str, Any]]) -> None:
    container = _container(rendered)
    env = {var["name"]: var for var in container["env"]}
    example = _load_all((KUSTOMIZE_DIR / "secret.example.yaml").read_text())[0]
    for name in SECRET_ENV:
        assert "value" not in env[name], f"{name} must come from a Secret"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == example["metadata"]["name"]
        assert ref["key"] in example["stringData"], f"secret.example.yaml lacks {ref['key']}"
    assert all("REPLACE-ME" in value for value in example["stringData"].values()), "placeholders only"
    for var in container["env"]:
        if re.search(r"KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL", var["name"].removeprefix("TOKENRELAY_")):
            assert "value" not in var, f"{var['name']} is a literal"
    assert all(doc["kind"] != "Secret" for doc in rendered)
    rendered_text = yaml.safe_dump_all(rendered)
    _assert_no_literal_secrets(rendered_text, "the rendered manifests")


def _assert_no_literal_secrets(text: str, where: str) -> None:
    # A URL with a password in it, unless the password is a compose ${VARIABLE}.
    for user_and_password in re.findall(r"://([^/\s@'\"]+:[^/\s@'\"]+)@", text):
        assert ":${" in user_and_password, f"{where}: a password in a URL ({user_and_password})"
    assert not re.search(r"\bsk-[A-Za-z0-9_-]{16,}", text), f"{where}: an OpenAI-style key"
    assert not re.search(r"\btrk_[0-9a-f]{8}_", text), f"{where}: a tokenrelay API key"
    assert not re.search(r"(?m)^\s*admin_key\s*=", text), (
        f"{where}: auth.admin_key belongs in the environment"
    )


def test_resources_autoscaling_and_disruption_budget(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    resources = _container(rendered)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), kind
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    hpa = _one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 3
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "tokenrelay_streams_in_flight"
    assert metric["pods"]["target"]["type"] == "AverageValue"

    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_autoscaled_metric_is_the_gauge_the_gateway_exports() -> None:
    exposition = generate_latest(Metrics().registry).decode()
    assert "# TYPE tokenrelay_streams_in_flight gauge" in exposition
    hpa_text = (KUSTOMIZE_DIR / "hpa.yaml").read_text()
    assert "prometheus-adapter" in hpa_text and "seriesQuery" in hpa_text


# --- docker compose ---------------------------------------------------------------------------


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    return [
        _tool(
            "docker-compose",
            package="or `docker compose`: Debian package docker-compose, .ci/run installs it",
        )
    ]


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    compose = _compose_command()
    # Only what the test gives: an empty env file (not a developer's .env), no variables of ours.
    (tmp_path / "empty.env").write_text("")
    compose_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "TOKENRELAY_", "POSTGRES_")) and k != "OPENAI_API_KEY"
    }
    base = [*compose, "--env-file", str(tmp_path / "empty.env"), "-f", str(COMPOSE_FILE)]
    done = _run([*base, "config"], cwd=COMPOSE_DIR, env={**compose_env, **COMPOSE_ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pw-for-the-test@postgres:5432" in done.stdout
    # Its secrets are required variables: without them compose refuses, naming them.
    done = _run([*base, "config"], cwd=COMPOSE_DIR, env=compose_env)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stdout + done.stderr


def test_the_compose_file_matches_the_compose_spec() -> None:
    # check-jsonschema bundles the compose-spec schema (vendor.compose-spec): no download.
    done = _run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose


def test_compose_runs_three_replicas_behind_nginx_with_postgres_and_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    assert {"tokenrelay", "nginx", "postgres", "redis"} <= services.keys()
    gateway = services["tokenrelay"]
    assert gateway["deploy"]["replicas"] == 3
    assert "container_name" not in gateway and "ports" not in gateway, "replicas are reached through nginx"
    assert gateway["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
    assert gateway["read_only"] is True
    assert gateway["cap_drop"] == ["ALL"]
    # Ready to take streams, not merely alive: nginx starts once the replicas are.
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
    assert services["nginx"]["depends_on"]["tokenrelay"] == {"condition": "service_healthy"}
    for name in ("postgres", "redis"):
        assert gateway["depends_on"][name] == {"condition": "service_healthy"}
        assert "healthcheck" in services[name]
    assert gateway["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # The spool is on a volume, at the image's spool directory.
    spool_dir = re.search(r"TOKENRELAY_LEDGER__SPOOL_DIR=(\S+)", DOCKERFILE.read_text())
    assert spool_dir is not None
    assert any(v.split(":")[1] == spool_dir[1] for v in gateway["volumes"] if not v.startswith("."))
    # The replicas' settings: the mounted file and the compose environment.
    environment: dict[str, str] = gateway["environment"]
    config_mount = next(
        v for v in gateway["volumes"] if v.endswith(f"{environment['TOKENRELAY_CONFIG_FILE']}:ro")
    )
    config_file = COMPOSE_DIR / config_mount.split(":")[0]
    _assert_sets_the_cluster_settings(config_file)
    settings = _settings_with_env(monkeypatch, config_file, environment)
    assert settings.auth.enabled and settings.auth.redis_url and settings.cluster.redis_url
    for name, value in CLUSTER_SETTINGS.items():
        assert getattr(settings.cluster, name) == value, name
    # docker stops a container after stop_grace_period (10 s by default): let the drain end.
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    drain, flush = settings.drain_seconds, settings.ledger.shutdown_flush_seconds
    assert grace > drain + UVICORN_SHUTDOWN_MARGIN_SECONDS + flush
    for path in (COMPOSE_FILE, COMPOSE_DIR / "tokenrelay.toml", COMPOSE_DIR / "nginx.conf"):
        _assert_no_literal_secrets(path.read_text(), path.name)


def test_the_image_is_built_for_a_non_root_read_only_container() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"(?m)^FROM python:3\.11-slim\s*$", dockerfile)
    assert re.search(r"(?m)^RUN .*\bpip install\b.* \.(\s|$)", dockerfile, re.S)
    user = re.findall(r"(?m)^USER (\S+)", dockerfile)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert '["tokenrelay", "serve", "--host", "0.0.0.0"]' in dockerfile
    assert re.search(r"(?m)^VOLUME \[\"/var/lib/tokenrelay/spool\"\]", dockerfile)
    assert "/healthz" in dockerfile.split("HEALTHCHECK", 1)[1]


def test_compose_nginx_uses_the_streaming_config_and_nginx_accepts_it(tmp_path: Path) -> None:
    """The compose nginx runs deploy/nginx/tokenrelay.conf with only its upstream swapped."""
    nginx = _tool("nginx", package="Debian package nginx; .ci/run installs it")
    service = _compose()["services"]["nginx"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    site_in_container = mounts["../nginx/tokenrelay.conf"]
    main_in_container = mounts["./nginx.conf"]
    assert main_in_container == "/etc/nginx/nginx.conf"
    assert service["command"][:2] == ["sh", "-c"]
    script = service["command"][2]
    prepare, _, start = script.partition("&&")
    assert start.strip() == "exec nginx -g 'daemon off;'"
    # The container's own step, run here on the real file.
    generated_in_container = re.search(r">\s*(\S+)", prepare)
    assert generated_in_container is not None
    generated = tmp_path / "tokenrelay.conf"
    prepare = prepare.replace(site_in_container, str(NGINX_SITE)).replace(
        generated_in_container[1], str(generated)
    )
    done = _run(["sh", "-c", prepare])
    assert done.returncode == 0, done.stderr
    site = generated.read_text()
    assert "upstream tokenrelay {" in NGINX_SITE.read_text()
    assert not re.search(r"(?m)^upstream ", site), "the single-server upstream is left out"
    assert "proxy_pass http://tokenrelay;" in site and "listen 8080;" in site
    # The main file, with what Debian's nginx (older than 1.27.3) and a test run need instead:
    # a literal server for `resolve`, the generated file's path, writable temporary paths.
    main = (COMPOSE_DIR / "nginx.conf").read_text()
    assert f"include {generated_in_container[1]};" in main
    main = _substitute(main, r"server tokenrelay:8000 resolve;", "server 127.0.0.1:8000;")
    main = _substitute(main, re.escape(f"include {generated_in_container[1]};"), f"include {generated};")
    main = _substitute(main, r"pid \S+;", f"pid {tmp_path}/nginx.pid;")
    temp_paths = "".join(
        f"    {name}_temp_path {tmp_path}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = _substitute(main, r"http \{\n", "http {\n" + temp_paths)
    (tmp_path / "nginx.conf").write_text(main)
    done = _run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"])
    assert done.returncode == 0, done.stderr


def _substitute(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, lambda _: replacement, text)
    assert count == 1, f"expected {pattern!r} once"
    return new


# --- docs -------------------------------------------------------------------------------------


def test_the_deploy_doc_names_every_alert_and_keeps_the_resume_section() -> None:
    doc = DEPLOY_DOC.read_text()
    alerts = re.findall(r"(?m)^\s*- alert: (\w+)$", ALERTS.read_text())
    assert len(alerts) >= 10
    assert [a for a in alerts if a not in doc] == []
    assert "## Resumable streams and replica loss" in doc
