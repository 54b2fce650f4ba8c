"""The deployment files agree with the real CLI, the real config loader and the real `/metrics`:
the Dockerfile's entrypoint, flags, port, env vars, user and health check; compose.yaml and the
Kubernetes manifests (rendered by `kubectl kustomize`) on image, ports, probes, env, secrets and
config keys; what a real cluster and a real host need of them (a registry in the image name,
probes that let a slow engine load, a grace period longer than a request, an autoscaler that owns
the replica count, a budget that lets a node drain, writable GPU caches, ports on loopback, no
anonymous Grafana, routed alerts, a pinned vLLM); and every metric the Grafana dashboard and the
Prometheus rules name exists in a scrape of a running `slm serve` built from the shipped container
config (deploy/serve.yaml)."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import openai
import pytest
import yaml

from serve_helpers import ON_CI, REPO, ServerProcess, decoding, needs_llama_server
from slmkit.config import load_config
from slmkit.paths import models_cache_dir, tools_dir
from slmkit.serve.config import ServeConfig
from slmkit.state.config import StateSettings

DEPLOY = REPO / "deploy"
KEYS = {"SLM_APP_KEY": "sk-deploy-app", "SLM_METRICS_TOKEN": "tok-deploy-metrics"}
# Series that only appear after an event (an engine crash, a per-key 429, a cache lookup with the
# cache on): their families are declared in the scrape, but no sample exists yet.
EVENT_ONLY = {
    "slm_engine_restarts_total",
    "slm_key_rejections_total",
    "slm_cache_requests_total",
    # declared on every scrape, with samples only where nvidia-smi finds a GPU
    "slm_gpu_memory_used_bytes",
    "slm_gpu_memory_total_bytes",
    "slm_gpu_utilization_ratio",
}


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.args}"
        return [str(v) for v in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; `stage` counts FROMs."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword.upper(), args.strip()))
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV":
            env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", i.args)))
    return env


def serve_command(instructions: list[Instruction]) -> list[str]:
    stage = final_stage(instructions)
    return one(stage, "ENTRYPOINT").exec_form() + one(stage, "CMD").exec_form()


def config_path(command: list[str]) -> str:
    return command[command.index("--config") + 1]


def baked_config(instructions: list[Instruction]) -> Path:
    """The repo file the final stage copies to the path the CMD passes to --config."""
    target = config_path(serve_command(instructions))
    for i in final_stage(instructions):
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            src, dest = i.args.split()
            if dest == target:
                return REPO / src
    raise AssertionError(f"the final stage copies nothing to {target}")


@pytest.fixture(scope="module")
def container_config(dockerfile: list[Instruction]) -> ServeConfig:
    return load_config(baked_config(dockerfile), ServeConfig)


def cli_help(command: str) -> str:
    """`slm COMMAND --help`, wide enough that no flag is wrapped."""
    return subprocess.run(
        [sys.executable, "-m", "slmkit.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout


def test_dockerfile_runs_slm_serve_with_flags_the_cli_has(dockerfile: list[Instruction]) -> None:
    command = serve_command(dockerfile)
    assert command[:2] == ["slm", "serve"]
    help_text = cli_help("serve")
    flags = [arg for arg in command if arg.startswith("--")]
    assert flags, command
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", help_text), f"slm serve has no {flag}"


def test_dockerfile_port_health_check_and_config_agree(
    dockerfile: list[Instruction], container_config: ServeConfig
) -> None:
    from slmkit.serve.app import OPEN_PATHS

    stage = final_stage(dockerfile)
    assert one(stage, "EXPOSE").args.split() == [str(container_config.port)]
    assert container_config.host == "0.0.0.0", "in a container the gateway must bind all addresses"
    check = one(stage, "HEALTHCHECK").args
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]", check)
    assert url, check
    assert int(url.group(1)) == container_config.port
    # the health check sends no API key: its path must be one the gateway leaves open
    assert url.group(2) in OPEN_PATHS and url.group(2) == "/health"
    assert [m.ref for m in container_config.models] == ["default"]


def test_dockerfile_env_vars_are_read_by_the_code(dockerfile: list[Instruction]) -> None:
    code = "\n".join(p.read_text() for p in (REPO / "src" / "slmkit").rglob("*.py"))
    code += (REPO / "scripts" / "setup.sh").read_text()
    env = env_of(final_stage(dockerfile))
    # read by the dynamic loader: the tools' shared libraries lie beside them
    assert env["LD_LIBRARY_PATH"] == f"{env['SLM_TOOLS_DIR']}/bin"
    for name in set(env) - {"PATH", "LD_LIBRARY_PATH"}:
        assert re.search(rf"\b{name}\b", code), f"ENV {name}: nothing in src/ or setup.sh reads it"
    # the baked tools and models stay outside SLM_HOME, the writable volume
    assert one(final_stage(dockerfile), "VOLUME").exec_form() == [env["SLM_HOME"]]
    for baked in ("SLM_TOOLS_DIR", "SLM_MODEL_CACHE"):
        assert not PurePosixPath(env[baked]).is_relative_to(env["SLM_HOME"])
    assert env["PATH"].split(":")[0] == "/opt/slmkit/.venv/bin"


def test_dockerfile_builds_portable_llama_tools(
    dockerfile: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    from slmkit.tools_build import PORTABLE_ONLY, configs_to_try

    build = [i for i in dockerfile if i.stage == 0]
    setup = next(n for n, i in enumerate(build) if "setup.sh" in i.args)
    args = dict(i.args.partition("=")[::2] for i in build[:setup] if i.keyword == "ARG")
    assert args[PORTABLE_ONLY] == "1"
    monkeypatch.setenv(PORTABLE_ONLY, "1")
    assert [c.name for c in configs_to_try()] == ["portable", "baseline"]
    monkeypatch.setenv(PORTABLE_ONLY, "0")
    assert configs_to_try()[0].name == "native"


def test_dockerfile_reuses_setup_and_runs_as_a_non_root_user(
    dockerfile: list[Instruction],
) -> None:
    build = [i for i in dockerfile if i.stage == 0]
    assert [i.args for i in build if i.keyword == "RUN" and "setup.sh" in i.args] == [
        "bash scripts/setup.sh"
    ]
    for stage in (build, final_stage(dockerfile)):
        users = [i.args for i in stage if i.keyword == "USER"]
        assert users and users[-1] not in ("root", "0")
        created = [i.args for i in stage if i.keyword == "RUN" and "useradd" in i.args]
        assert created and f"{users[-1]}" in created[0].split()
    uid = re.search(r"--uid (\d+)", created[0])
    assert uid and int(uid.group(1)) == K8S_UID


# --- compose -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def key_envs(config: ServeConfig) -> set[str]:
    return {k.key_env for k in config.keys if k.key_env}


def test_compose_gateway_matches_the_image_and_config(
    compose: dict[str, Any], dockerfile: list[Instruction], container_config: ServeConfig
) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["build"] == "."
    published = {int(p.split(":")[-1]) for p in gateway["ports"]}
    assert published == {container_config.port}
    mounts = dict(v.split(":")[:2] for v in gateway["volumes"])
    command = serve_command(dockerfile)
    assert mounts["./deploy/serve.yaml"] == config_path(command)
    assert mounts["slm-data"] == env_of(final_stage(dockerfile))["SLM_HOME"]
    assert key_envs(container_config) <= set(gateway["environment"])
    assert container_config.metrics_token_env in gateway["environment"]
    assert "command" not in gateway and "entrypoint" not in gateway  # the image's CMD as is


def test_compose_prometheus_and_grafana_point_at_real_files_and_ports(
    compose: dict[str, Any], container_config: ServeConfig
) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{container_config.port}"]
    # /metrics needs a credential: Prometheus reads the scrape token (not an API key) from the
    # compose secret
    secret = services["prometheus"]["secrets"][0]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret]["environment"] == container_config.metrics_token_env
    assert container_config.metrics_token_env not in key_envs(container_config)
    rules = [
        f"/etc/prometheus/{Path(v.split(':')[0]).name}" for v in services["prometheus"]["volumes"]
    ]
    assert set(prometheus["rule_files"]) <= set(rules)
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {datasource["datasources"][0]["uid"]}


def required_from_env(value: str) -> str:
    """The variable a compose value takes with no default (`${NAME:?message}`), else a failure."""
    found = re.fullmatch(r"\$\{([A-Z_][A-Z0-9_]*):\?[^}]+\}", value)
    assert found, f"{value!r} is not a required variable (a default or a literal)"
    return found.group(1)


def test_compose_publishes_every_port_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert {"gateway", "prometheus", "alertmanager", "grafana", "board"} <= set(published)
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every address"


def test_compose_grafana_has_no_anonymous_access_and_no_default_password(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert required_from_env(env["GF_SECURITY_ADMIN_PASSWORD"]) == "GRAFANA_ADMIN_PASSWORD"
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"


def test_compose_routes_the_alert_rules_to_alertmanager(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    alertmanager = services["alertmanager"]
    port = alertmanager["ports"][0].split(":")[-1]
    assert targets == [f"alertmanager:{port}"]
    mounts = dict(v.split(":")[:2] for v in alertmanager["volumes"])
    config_file = next(a.split("=", 1)[1] for a in alertmanager["command"] if "config.file" in a)
    source = next(src for src, dest in mounts.items() if dest == config_file)
    config = yaml.safe_load((REPO / source).read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    webhook = receivers[config["route"]["receiver"]]["webhook_configs"][0]
    assert webhook["url"].startswith("http")


def test_compose_board_runs_slm_ui_with_flags_the_cli_has(compose: dict[str, Any]) -> None:
    board = compose["services"]["board"]
    assert board["image"] == compose["services"]["gateway"]["image"]
    command = board["command"]
    assert command[0] == "ui"
    help_text = cli_help("ui")
    for flag in (arg for arg in command if arg.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", help_text), f"slm ui has no {flag}"
    port = command[command.index("--port") + 1]
    assert board["ports"] == [f"127.0.0.1:{port}:{port}"]
    # bound to every address inside the container: the board refuses that without a login
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert required_from_env(board["environment"]["SLM_UI_AUTH"]) == "SLM_UI_AUTH"
    assert f":{port}/" in " ".join(board["healthcheck"]["test"])


# --- Kubernetes --------------------------------------------------------------------------------

K8S_UID = 10001
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
OVERLAYS = ["base", "gpu"]  # ids without "gpu": that keyword marks tests that need a CUDA GPU


def kustomize(overlay: str) -> dict[str, dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # a local run without it skips; CI=true must render the manifests
        message = "kubectl is not installed (it renders the Kubernetes files with kustomize)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return {d["kind"]: d for d in yaml.safe_load_all(out) if d}


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return kustomize("base")


def config_from_map(config_map: dict[str, Any], tmp_path: Path) -> ServeConfig:
    path = tmp_path / "serve.yaml"
    path.write_text(config_map["data"]["serve.yaml"])
    return load_config(path, ServeConfig)


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_k8s_config_map_loads_and_agrees_with_the_compose_config(
    k8s: dict[str, dict[str, Any]], container_config: ServeConfig, tmp_path: Path
) -> None:
    pod_config = config_from_map(k8s["ConfigMap"], tmp_path)
    fields = ("host", "port", "models", "llamacpp", "limits", "keys", "metrics_token_env")
    for field in (*fields, "alerts", "audit"):
        assert getattr(pod_config, field) == getattr(container_config, field), field


def test_k8s_deployment_agrees_with_the_image(
    k8s: dict[str, dict[str, Any]],
    compose: dict[str, Any],
    dockerfile: list[Instruction],
    container_config: ServeConfig,
) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    gateway = container(k8s)
    # a cluster pulls from a registry: the image names one (a placeholder set in kustomization.yaml)
    registry, _, image = gateway["image"].partition("/")
    assert "." in registry or ":" in registry, f"{gateway['image']} names no registry"
    assert image.split("/")[-1] == compose["services"]["gateway"]["image"] == "slmkit:cpu"
    assert ["slm", *gateway["args"]] == serve_command(dockerfile)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": container_config.port}
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"] == str(PurePosixPath(config_path(serve_command(dockerfile))).parent)
    assert volumes["config"]["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert mounts["data"] == env_of(final_stage(dockerfile))["SLM_HOME"]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert env["SLM_THREADS"] == str(int(float(gateway["resources"]["limits"]["cpu"])))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == K8S_UID
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(gateway["resources"]["requests"])


def test_k8s_secret_service_and_autoscaler_fit_the_deployment(
    k8s: dict[str, dict[str, Any]], container_config: ServeConfig, tmp_path: Path
) -> None:
    gateway = container(k8s)
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    assert [e["secretRef"]["name"] for e in gateway["envFrom"]] == [secret["metadata"]["name"]]
    pod_config = config_from_map(k8s["ConfigMap"], tmp_path)
    # the pods share their state: the URLs of PostgreSQL and Valkey/Redis come from the Secret
    state = pod_config.state
    assert (state.database_env, state.cache_env) == ("SLM_DATABASE_URL", "SLM_CACHE_URL")
    assert set(secret["stringData"]) == key_envs(container_config) | {
        container_config.metrics_token_env,
        state.database_env,
        state.cache_env,
    }
    examples = StateSettings(
        database=secret["stringData"][state.database_env],
        cache=secret["stringData"][state.cache_env],
    )
    assert examples.database_url() and examples.cache_url()  # valid URLs of the right kinds
    service = k8s["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_k8s_gpu_variant_serves_with_vllm_on_one_gpu(
    k8s: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    gpu = kustomize("gpu")
    gateway = container(gpu)
    # the same repository as the CPU image, the `gpu` tag
    assert gateway["image"] == container(k8s)["image"].replace(":cpu", ":gpu")
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    config = config_from_map(gpu["ConfigMap"], tmp_path)
    assert config.engine == "vllm"
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    for model in config.models:
        assert model.ref is not None
        assert any(PurePosixPath(model.ref).is_relative_to(m) for m in mounts), model.ref


def rendered(overlay: str, tmp_path: Path) -> tuple[dict[str, dict[str, Any]], ServeConfig]:
    docs = kustomize(overlay)
    return docs, config_from_map(docs["ConfigMap"], tmp_path)


def engine_start_timeout_s(config: ServeConfig) -> float:
    return (
        config.vllm.start_timeout_s if config.engine == "vllm" else config.llamacpp.start_timeout_s
    )


@pytest.mark.parametrize("overlay", OVERLAYS, ids=["cpu", "vllm"])
def test_k8s_probes_keep_a_slow_engine_alive_and_out_of_the_service(
    overlay: str, tmp_path: Path
) -> None:
    from slmkit.serve.app import OPEN_PATHS

    docs, config = rendered(overlay, tmp_path)
    gateway = container(docs)
    paths = {probe: gateway[probe]["httpGet"]["path"] for probe in PROBES}
    # liveness asks whether the process answers, readiness whether every engine is ready: a
    # restarting engine takes the pod out of the Service but does not get it killed
    assert paths == {"startupProbe": "/live", "livenessProbe": "/live", "readinessProbe": "/ready"}
    assert set(paths.values()) <= OPEN_PATHS  # probes send no API key
    assert all(gateway[probe]["httpGet"]["port"] == "http" for probe in PROBES)
    # HTTP opens once the engines have started: the startup probe waits longer than an engine may
    startup = gateway["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > engine_start_timeout_s(config)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=["cpu", "vllm"])
def test_k8s_shutdown_outlasts_the_longest_request(overlay: str, tmp_path: Path) -> None:
    from slmkit.child_process import terminate
    from slmkit.serve.server import graceful_shutdown_s

    docs, config = rendered(overlay, tmp_path)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    assert pre_stop_s >= 5  # the Service's endpoints drop the pod before it stops listening
    # after SIGTERM `slm serve` waits for in-flight requests, then stops its engines
    assert graceful_shutdown_s(config) >= config.limits.request_timeout_s
    engines_stop_s = inspect.signature(terminate).parameters["grace_s"].default
    needed = pre_stop_s + graceful_shutdown_s(config) + engines_stop_s
    assert pod["terminationGracePeriodSeconds"] > needed


def test_k8s_gpu_rollouts_replace_pods_instead_of_surging() -> None:
    """A surge pod would wait for a GPU that only the pod it replaces can free."""
    rolling = kustomize("gpu")["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1


@needs_llama_server
@pytest.mark.slow
def test_a_sigtermed_gateway_finishes_the_requests_in_flight_then_exits(tmp_path: Path) -> None:
    """`slm serve` told to stop (SIGTERM, as Kubernetes does after preStop) while a long answer
    is being generated: that answer still arrives whole with 200, then the process exits 0."""
    import signal
    import threading

    home = tmp_path / "home"
    env = {"SLM_HOME": str(home), "SLM_TOOLS_DIR": str(tools_dir()), "SLM_MODEL_CACHE": str(models_cache_dir())}  # fmt: skip
    server = ServerProcess(
        ["default"], env=env, config={"llamacpp": {"ctx_size": 2048, "parallel": 2}}
    )
    answers: list[httpx.Response] = []
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 700,  # more than the 5 s uvicorn gives by default (checked: then a 500)
        "logit_bias": {"0": -100, "1": -100, "2": -100},  # no end of text: all 700 tokens
    }

    def ask() -> None:
        url = server.base_url + "/v1/chat/completions"
        answers.append(httpx.post(url, json=body, timeout=120))

    with server:
        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 60
        (child,) = server.engine_children()
        while not decoding(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        asker.join(timeout=120)
        code = server.proc.wait(timeout=60)
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    assert answers[0].json()["usage"]["completion_tokens"] == 700
    assert code == 0, server.log()


@pytest.mark.parametrize("overlay", OVERLAYS, ids=["cpu", "vllm"])
def test_k8s_the_autoscaler_owns_the_replica_count(overlay: str) -> None:
    docs = kustomize(overlay)
    assert "replicas" not in docs["Deployment"]["spec"]  # else each apply fights the autoscaler
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    metrics = hpa["spec"]["metrics"]
    names = [
        m[m["type"].lower()].get("name") or m[m["type"].lower()]["metric"]["name"] for m in metrics
    ]
    assert len(metrics) >= 2 and "cpu" in names and set(names) - {"cpu"}, names
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] >= 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=["cpu", "vllm"])
def test_k8s_disruption_budget_lets_a_node_drain(overlay: str) -> None:
    docs = kustomize(overlay)
    budget = docs["PodDisruptionBudget"]["spec"]
    # `minAvailable: 1` with the one pod the GPU variant may run blocks every drain
    assert "minAvailable" not in budget and budget["maxUnavailable"] == 1
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    # an empty selector would cover every pod of the namespace
    assert budget["selector"]["matchLabels"] and budget["selector"]["matchLabels"].items() <= (
        labels.items()
    )


def overlay_with(tmp_path: Path, component: str) -> Path:
    """An overlay of the base with one of `deploy/k8s/components` added, as a user writes it."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    k8s_dir = DEPLOY / "k8s"
    resources = [os.path.relpath(k8s_dir / "base", overlay)]
    components = [os.path.relpath(k8s_dir / "components" / component, overlay)]
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": resources, "components": components})
    )
    return overlay


def test_k8s_in_flight_component_scales_on_a_metric_the_gateway_exports(tmp_path: Path) -> None:
    from slmkit.serve.metrics import GatewayMetrics

    docs = kustomize(str(overlay_with(tmp_path, "in-flight-autoscaling")))
    pods = [
        m["pods"] for m in docs["HorizontalPodAutoscaler"]["spec"]["metrics"] if m["type"] == "Pods"
    ]
    assert len(pods) == 1
    exported = Scrape.parse(GatewayMetrics().render().decode())
    assert exported.resolves(pods[0]["metric"]["name"]), pods[0]["metric"]["name"]


def test_k8s_state_servers_component_serves_the_urls_the_secret_names(tmp_path: Path) -> None:
    """base + components/state-servers: a PostgreSQL and a Valkey whose Services answer at the
    hosts and ports of the example Secret's URLs, with passwords from a Secret, never inline."""
    from urllib.parse import urlsplit

    overlay = overlay_with(tmp_path, "state-servers")
    kustomize(str(overlay))  # renders (skips or fails like the others without kubectl)
    rendered = subprocess.run(
        [str(shutil.which("kubectl")), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())["stringData"]
    for env in ("SLM_DATABASE_URL", "SLM_CACHE_URL"):
        url = urlsplit(secret[env])
        service = services[str(url.hostname)]
        assert [port["port"] for port in service["spec"]["ports"]] == [url.port], env
        workload = next(
            d
            for d in docs
            if d["kind"] in ("StatefulSet", "Deployment")
            and d["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
        )
        (server,) = workload["spec"]["template"]["spec"]["containers"]
        secrets = [e for e in server["env"] if "valueFrom" in e]
        assert secrets and all("secretKeyRef" in e["valueFrom"] for e in secrets), env
        assert not any("PASSWORD" in e["name"] and "value" in e for e in server["env"]), env
    postgres = next(d for d in docs if d["kind"] == "StatefulSet")
    assert postgres["spec"]["volumeClaimTemplates"], "the database keeps its data"


def test_k8s_gpu_caches_live_on_writable_volumes() -> None:
    gpu = kustomize("gpu")
    gateway = container(gpu)
    pod = gpu["Deployment"]["spec"]["template"]["spec"]
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in gateway["env"] if "value" in e}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [
        m["mountPath"]
        for m in gateway["volumeMounts"]
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    ]
    caches = (
        "HOME",
        "XDG_CACHE_HOME",
        "VLLM_CACHE_ROOT",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
    )
    for name in caches:
        assert name in env, f"{name} is not set: vLLM/Triton would write under the read-only root"
        path = PurePosixPath(env[name])
        assert any(path.is_relative_to(m) for m in writable), f"{name}={path} is not writable"


def test_k8s_gpu_models_claim_names_its_storage_class() -> None:
    claim = kustomize("gpu")["PersistentVolumeClaim"]["spec"]
    assert claim.get("storageClassName"), "a claim without a class binds whatever is default"
    # ReadOnlyMany is offered by few classes; ReadWriteOnce by all (pods then share a node)
    assert claim["accessModes"] == ["ReadWriteOnce"]


# --- the GPU image -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_dockerfile() -> list[Instruction]:
    return parse_dockerfile((DEPLOY / "gpu.Dockerfile").read_text())


def test_gpu_dockerfile_pins_vllm_in_an_environment_of_its_own(
    gpu_dockerfile: list[Instruction],
) -> None:
    args = dict(i.args.partition("=")[::2] for i in gpu_dockerfile if i.keyword == "ARG")
    version = args["VLLM_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"vLLM is not pinned: {version!r}"
    # the version docs/models.md states the torch and transformers pins for
    documented = re.search(r"vLLM (\d+\.\d+)\b", (REPO / "docs" / "models.md").read_text())
    assert documented and version.startswith(documented.group(1) + ".")
    runs = " ".join(i.args for i in gpu_dockerfile if i.keyword == "RUN")
    install = re.search(r"(\S+/pip) install [^&]*vllm==\$\{VLLM_VERSION\}", runs)
    assert install, runs
    # vLLM pins its own torch: never into slmkit's venv (whose torch set-up pinned)
    assert not install.group(1).startswith("/opt/slmkit/")
    assert re.search(r"ln -s \S+/bin/vllm /usr/local/bin/vllm", runs)


def test_gpu_dockerfile_has_a_compiler_for_triton(gpu_dockerfile: list[Instruction]) -> None:
    runs = " ".join(i.args for i in gpu_dockerfile if i.keyword == "RUN")
    installed = re.search(r"apt-get install (.*?)(&&|$)", runs)
    assert installed and {"gcc", "python3-dev"} <= set(installed.group(1).split())
    assert gpu_dockerfile[-1].keyword == "USER" and gpu_dockerfile[-1].args == "slm"


def test_gpu_image_takes_torch_from_the_setup_switch(dockerfile: list[Instruction]) -> None:
    """The GPU image's base is the Dockerfile built with set-up's SLM_TORCH=cuda: one switch."""
    text = (DEPLOY / "gpu.Dockerfile").read_text()
    base = re.search(r"docker build --build-arg SLM_TORCH=cuda -t (\S+) \.", text)
    assert base, "the GPU image's base is not built through SLM_TORCH"
    args = dict(i.args.partition("=")[::2] for i in parse_dockerfile(text) if i.keyword == "ARG")
    assert args["BASE_IMAGE"] == base.group(1)
    build_args = {i.args.partition("=")[0] for i in dockerfile if i.keyword == "ARG"}
    assert "SLM_TORCH" in build_args
    assert re.search(r"\bcpu\|cuda\)", (REPO / "scripts" / "setup.sh").read_text())


def test_a_vllm_command_on_the_path_counts_as_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slmkit.serve.engines import vllm

    assert vllm.importlib.util.find_spec("vllm") is None  # not in this environment
    assert "not installed" in (vllm.vllm_available() or "")
    command = tmp_path / "vllm"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert "not installed" not in (vllm.vllm_available() or "")


# --- metrics: the dashboard and the alert rules against a real scrape ---------------------------


def dashboard() -> dict[str, Any]:
    data = json.loads((DEPLOY / "grafana" / "dashboards" / "slmkit.json").read_text())
    assert isinstance(data, dict)
    return data


def promql_expressions() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def metric_names(exprs: list[str]) -> set[str]:
    return {name for e in exprs for name in re.findall(r"\bslm_[a-z0-9_]+\b", e)}


@dataclass
class Scrape:
    samples: set[str]
    families: dict[str, str]  # name on the TYPE line -> type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples, families = set(), {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                families[name] = kind
            elif line and not line.startswith("#"):
                samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
        return cls(samples, families)

    def resolves(self, name: str) -> bool:
        """A sample name, or a declared family's sample name (counter `_total`, histogram
        `_bucket` / `_sum` / `_count`) that has no children yet."""
        if name in self.samples or self.families.get(name) in ("counter", "gauge"):
            return True
        base, _, suffix = name.rpartition("_")
        return suffix in ("bucket", "sum", "count") and self.families.get(base) == "histogram"


def test_scrape_resolver_refuses_wrong_suffixes() -> None:
    text = (
        '# TYPE slm_requests_total counter\nslm_requests_total{status="200"} 1.0\n'
        "# TYPE slm_request_latency_seconds histogram\n"
        'slm_request_latency_seconds_bucket{le="1"} 1.0\n'
    )
    scrape = Scrape.parse(text)
    assert scrape.resolves("slm_requests_total")
    assert scrape.resolves("slm_request_latency_seconds_bucket")
    assert scrape.resolves("slm_request_latency_seconds_count")  # declared, no sample yet
    for wrong in ("slm_requests", "slm_request_latency_seconds", "slm_requests_total_bucket"):
        assert not scrape.resolves(wrong), wrong


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """`slm serve` on the shipped container config (loopback, smaller context), plus a pool whose
    one deployment is this gateway itself as an upstream, and a route: one request each."""
    config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    config.update(host="127.0.0.1", llamacpp={"ctx_size": 1024, "parallel": 2, "threads": 1})
    home = tmp_path_factory.mktemp("deploy-home")
    server = ServerProcess([], env={"SLM_HOME": str(home), "SLM_THREADS": "1", **KEYS})
    upstream = {
        "url": f"{server.base_url}/v1",
        "model": "default",
        "api_key_env": "SLM_APP_KEY",
        "price_out_per_mtok": 1.0,
    }
    config["models"].append({"id": "pooled", "deployments": [{"upstream": upstream}]})
    config["routes"] = [{"id": "support", "chain": ["default", "pooled"]}]
    path = home / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    server.args += ["--config", str(path)]
    with server:
        for open_path in ("/health", "/live", "/ready"):
            assert httpx.get(server.base_url + open_path, timeout=30).status_code == 200
        assert httpx.get(server.base_url + "/metrics", timeout=30).status_code == 401
        app = openai.OpenAI(
            base_url=server.base_url + "/v1",
            api_key=KEYS["SLM_APP_KEY"],
            max_retries=0,
            timeout=120,
        )
        for model in ("support", "pooled"):
            app.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
            )
        auth = {"Authorization": f"Bearer {KEYS['SLM_METRICS_TOKEN']}"}  # the scrape token
        deadline = time.monotonic() + 30
        while True:  # the alert watcher sets its gauge every few seconds
            text = httpx.get(server.base_url + "/metrics", headers=auth, timeout=30).text
            if "slm_alert_firing{" in text or time.monotonic() > deadline:
                return Scrape.parse(text)
            time.sleep(1)


@needs_llama_server
@pytest.mark.slow
def test_every_dashboard_and_rule_metric_is_in_a_real_scrape(scrape: Scrape) -> None:
    names = metric_names(promql_expressions())
    assert len(names) >= 15, names
    assert sorted(n for n in names if not scrape.resolves(n)) == []
    # and, events aside, each has samples after one request
    assert sorted(n for n in names if n not in scrape.samples) == sorted(EVENT_ONLY & names)
    panels = {p["title"] for p in dashboard()["panels"]}
    for topic in ("latency", "tokens", "in flight", "alerts", "errors", "replicas", "routes"):
        assert any(topic in t.lower() for t in panels), topic


def test_container_config_without_its_key_env_fails_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    done = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", "serve", "--config", str(DEPLOY / "serve.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "SLM_HOME": str(tmp_path), "SLM_METRICS_TOKEN": "tok-x"},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: keys.0.key_env:") and "SLM_APP_KEY" in lines[0]
