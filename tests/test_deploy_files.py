"""The deployment files agree with the real CLI, the real config loader and the real `/metrics`:
the Dockerfile's entrypoint, flags, port, env vars, user and health check; compose.yaml and the
Kubernetes manifests (rendered by `kubectl kustomize`) on image, ports, probes, env, secrets and
config keys; and every metric the Grafana dashboard and the Prometheus rules name exists in a
scrape of a running `slm serve` built from the shipped container config (deploy/serve.yaml)."""

from __future__ import annotations

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

from serve_helpers import ON_CI, REPO, ServerProcess, needs_llama_server
from slmkit.config import load_config
from slmkit.serve.config import ServeConfig

DEPLOY = REPO / "deploy"
KEYS = {"SLM_APP_KEY": "sk-deploy-app", "SLM_METRICS_KEY": "sk-deploy-metrics"}
# Series that only appear after an event (an engine crash, a per-key 429, a cache lookup with the
# cache on): their families are declared in the scrape, but no sample exists yet.
EVENT_ONLY = {"slm_engine_restarts_total", "slm_key_rejections_total", "slm_cache_requests_total"}


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


def test_dockerfile_runs_slm_serve_with_flags_the_cli_has(dockerfile: list[Instruction]) -> None:
    command = serve_command(dockerfile)
    assert command[:2] == ["slm", "serve"]
    help_text = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout
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
    # /metrics needs a key: Prometheus reads the `metrics` key from the compose secret
    secret = services["prometheus"]["secrets"][0]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret]["environment"] in key_envs(container_config)
    rules = [
        f"/etc/prometheus/{Path(v.split(':')[0]).name}" for v in services["prometheus"]["volumes"]
    ]
    assert set(prometheus["rule_files"]) <= set(rules)
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    uids = {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {datasource["datasources"][0]["uid"]}


# --- Kubernetes --------------------------------------------------------------------------------

K8S_UID = 10001


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
    for field in ("host", "port", "models", "llamacpp", "limits", "keys", "alerts", "audit"):
        assert getattr(pod_config, field) == getattr(container_config, field), field


def test_k8s_deployment_agrees_with_the_image(
    k8s: dict[str, dict[str, Any]],
    compose: dict[str, Any],
    dockerfile: list[Instruction],
    container_config: ServeConfig,
) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    gateway = container(k8s)
    assert gateway["image"] == compose["services"]["gateway"]["image"] == "slmkit:cpu"
    assert ["slm", *gateway["args"]] == serve_command(dockerfile)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": container_config.port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
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
    k8s: dict[str, dict[str, Any]], container_config: ServeConfig
) -> None:
    gateway = container(k8s)
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    assert [e["secretRef"]["name"] for e in gateway["envFrom"]] == [secret["metadata"]["name"]]
    assert set(secret["stringData"]) == key_envs(container_config)
    service = k8s["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    hpa = k8s["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == k8s["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_k8s_gpu_variant_serves_with_vllm_on_one_gpu(tmp_path: Path) -> None:
    gpu = kustomize("gpu")
    gateway = container(gpu)
    assert gateway["image"] == "slmkit:gpu"
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"
    config = config_from_map(gpu["ConfigMap"], tmp_path)
    assert config.engine == "vllm"
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    for model in config.models:
        assert model.ref is not None
        assert any(PurePosixPath(model.ref).is_relative_to(m) for m in mounts), model.ref


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
        assert httpx.get(server.base_url + "/health", timeout=30).status_code == 200
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
        auth = {"Authorization": f"Bearer {KEYS['SLM_METRICS_KEY']}"}
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
        env={**env, "SLM_HOME": str(tmp_path), "SLM_METRICS_KEY": "sk-x"},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: keys.0.key_env:") and "SLM_APP_KEY" in lines[0]
