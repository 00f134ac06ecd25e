"""The deployment, checked without a cluster: kustomize renders every overlay, every object is
valid against its schema (Kubernetes' own kinds through kubernetes-validate, the operators' kinds
through their CRD schemas in crds/), checkov finds no unexplained failure, the alert rules pass
`promtool check` and their unit tests, the workflow passes actionlint. Each check is also shown to
fail on a broken input. Tools: kubectl and promtool from Debian, checkov in .venv-tools, all
installed by `make deploy-tools` (part of `make test`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "production")
CRDS = Path(__file__).resolve().parent / "crds"
KUBERNETES_VERSION = "1.32.0"
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv-tools" / "bin" / "checkov"))
ACTIONLINT = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or "actionlint"
# The pods this project builds (operators build their own from the custom resources).
APP_WORKLOADS = {
    "analytics-web",
    "analytics-streams",
    "analytics-error-indexer",
    "analytics-celery-worker",
    "analytics-celery-beat",
    "analytics-migrate",
    "schema-registry",
}


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / "overlays" / overlay))


def find(docs: Any, kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


# --- schema validation ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it with strict field validation:
    unknown fields are errors, int-or-string is either."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    group, _, version = api_version.rpartition("/")
    path = CRDS / f"{group}_{kind}_{version}.json"
    if not path.exists():
        return None
    schema = _strict(json.loads(path.read_text()))
    # The object's metadata is checked by the API server, not by the CRD's schema.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    if validator is not None:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].startswith(
        ("apps/", "batch/", "policy/", "autoscaling/", "networking.k8s.io/", "rbac.authorization.k8s.io/")
    ):
        return [f"no schema for {doc['apiVersion']} {doc['kind']}: add its CRD to {CRDS}"]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_its_schema(overlay):
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaConnect",
        "ClickHouseInstallation",
        "ClickHouseKeeperInstallation",
        "Elasticsearch",
        "ScaledObject",
        "PrometheusRule",
    } <= kinds
    errors = {f"{d['kind']}/{d['metadata']['name']}": schema_errors(d) for d in docs}
    assert {k: v for k, v in errors.items() if v} == {}


@pytest.mark.parametrize(
    ("kind", "name", "break_it", "expected"),
    [
        ("Deployment", "analytics-web", lambda d: d["spec"]["template"]["spec"].update(containres=[]), "containres"),
        ("Deployment", "analytics-web", lambda d: d["spec"].update(replicas="three"), "replicas"),
        ("KafkaTopic", "events", lambda d: d["spec"].update(partition=3), "partition"),
        ("Kafka", "analytics", lambda d: d["spec"]["kafka"]["listeners"][0].update(type="public"), "public"),
        (
            "ClickHouseInstallation",
            "analytics",
            lambda d: d["spec"]["configuration"]["clusters"][0]["layout"].update(shards_count=2),
            "shards_count",
        ),
        ("ScaledObject", "analytics-streams", lambda d: d["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
        ("Elasticsearch", "logs", lambda d: d["spec"].pop("version"), "version"),
        ("PodMonitor", "analytics-web", lambda d: d["spec"]["podMetricsEndpoints"][0].update(prot="http"), "prot"),
    ],
)
def test_a_broken_manifest_is_refused(kind, name, break_it, expected):
    doc = json.loads(json.dumps(find(rendered("production"), kind, name)))
    assert schema_errors(doc) == []
    break_it(doc)
    errors = schema_errors(doc)
    assert errors and expected in " ".join(errors)


def test_an_unknown_kind_is_refused():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in schema_errors(widget)[0]


# --- what the manifests promise ------------------------------------------------------------------


def pod_specs(docs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in {"Deployment", "Job", "StatefulSet"}:
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_with_least_privilege_and_bounded_resources(overlay):
    specs = dict(pod_specs(rendered(overlay)))
    assert set(specs) == APP_WORKLOADS
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"]), name
            # Secrets only by reference; no literal value of a secret-looking variable.
            for env in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|API_KEY|TOKEN", env["name"]):
                    assert "valueFrom" in env, (name, env["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ingress_hosts_pass_allowed_hosts_and_proxy_count_is_set(overlay):
    docs = rendered(overlay)
    config = find(docs, "ConfigMap", "analytics-config")["data"]
    allowed = config["DJANGO_ALLOWED_HOSTS"].split(",")
    from django.http.request import validate_host

    web = dict(pod_specs(docs))["analytics-web"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        headers = {h["name"]: h["value"] for h in web[probe]["httpGet"]["httpHeaders"]}
        assert validate_host(headers["Host"], allowed), (probe, headers)
    for rule in find(docs, "Ingress", "analytics")["spec"]["rules"]:
        assert validate_host(rule["host"], allowed)
        assert f"https://{rule['host']}" in config["DJANGO_CSRF_TRUSTED_ORIGINS"].split(",")
        # Internal endpoints stay inside the cluster.
        assert not {p["path"] for p in rule["http"]["paths"]} & {"/healthz", "/readyz", "/prometheus"}
        assert all(p["path"] != "/" or p["pathType"] == "Exact" for p in rule["http"]["paths"])
    # The Prometheus scrape of gunicorn goes to the pod's DNS name (monitoring.yaml).
    assert validate_host("10-1-2-3.analytics.pod.cluster.local", allowed)
    assert not validate_host("10.1.2.3", allowed)
    assert config["INGEST_TRUSTED_PROXY_COUNT"] == "1"  # ingress-nginx is the one proxy
    assert config["STREAMS_METRICS_ADDR"] == "0.0.0.0"
    streams = dict(pod_specs(docs))["analytics-streams"]["containers"][0]
    assert {"containerPort": int(config["STREAMS_METRICS_PORT"]), "name": "metrics"} in streams["ports"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_match_the_application_and_autoscaling_stays_under_partitions(overlay, settings):
    from analytics_platform import kafka

    docs = rendered(overlay)
    config = find(docs, "ConfigMap", "analytics-config")["data"]
    settings.KAFKA_TOPIC_PREFIX = ""
    topics = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == {spec.name for spec in kafka.topic_specs()}
    cluster = find(docs, "Kafka", "analytics")["spec"]["kafka"]["config"]
    brokers = sum(
        d["spec"]["replicas"] for d in docs if d["kind"] == "KafkaNodePool" and "broker" in d["spec"]["roles"]
    )
    for name, spec in topics.items():
        assert spec["replicas"] == int(config["KAFKA_REPLICATION_FACTOR"]) <= brokers, name
        assert spec["partitions"] == int(config["KAFKA_DEFAULT_PARTITIONS"]), name
        isr = spec["config"]["min.insync.replicas"]
        assert isr == cluster["min.insync.replicas"] and (isr < spec["replicas"] or spec["replicas"] == 1), name
    streams = find(docs, "ScaledObject", "analytics-streams")["spec"]
    lag = next(t for t in streams["triggers"] if t["type"] == "kafka")["metadata"]
    assert streams["maxReplicaCount"] <= topics[lag["topic"]]["partitions"]
    assert lag["allowIdleConsumers"] == "false"
    # A Deployment is scaled by one controller: KEDA's HPA or ours, never both.
    hpa = [d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    keda = [d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "ScaledObject"]
    assert not set(hpa) & set(keda) and len(hpa + keda) == len(set(hpa + keda))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_replicated_workload_has_a_disruption_budget_that_allows_a_drain(overlay):
    docs = rendered(overlay)
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"}
    minimum = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"].get("minReplicaCount", d["spec"].get("minReplicas"))
        for d in docs
        if d["kind"] in {"ScaledObject", "HorizontalPodAutoscaler"}
    }
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: d["spec"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    for name, count in replicas.items():
        if name == "analytics-celery-beat":
            continue  # one by design (a single scheduler); nothing to keep available
        low = min(count, minimum.get(name, count))
        budget = budgets[name]
        assert budget.get("maxUnavailable", 0) >= 1 or budget["minAvailable"] < low, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_commands_are_real_management_commands(overlay):
    """`manage.py X args` parses with X's own parser (the old manifest ran `run_stream events`)."""
    from django.core.management import get_commands, load_command_class

    for _name, spec in pod_specs(rendered(overlay)):
        for c in spec["containers"]:
            command = c.get("command", [])
            lines = [part.split() for part in command[2].split("&&")] if command[:2] == ["sh", "-c"] else [command]
            for argv in lines:
                if argv[:2] != ["python", "manage.py"]:
                    continue
                app = get_commands()[argv[2]]
                load_command_class(app, argv[2]).create_parser("manage.py", argv[2]).parse_args(argv[3:])


# --- security scan -------------------------------------------------------------------------------

# The checkov checks that fail, each with the reason it is accepted. The scan must fail exactly
# these: a new failure is unexplained, a skip no longer needed is stale.
CHECKOV_ACCEPTED = {
    "CKV_K8S_43": "images are pinned by digest at release time (kustomize edit set image ...@sha256), not in git",
    "CKV_K8S_15": "imagePullPolicy: the default IfNotPresent is right for immutable digests",
    "CKV_K8S_35": "secrets as environment variables: the application reads them from its environment by design",
    "CKV_K8S_8": "liveness probe: Celery worker and beat and the error indexer have none (a broker-dependent "
    "ping would restart them during a broker outage; the indexer exits when it gives up and is restarted)",
    "CKV_K8S_9": "readiness probe: only Service-backed pods need one (web, schema registry); workers serve no traffic",
    "CKV_DOCKER_7": "the base image comes from an ARG pinned by digest (checked by test_the_image_is_..._pinned)",
}


def checkov(directory: Path, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(  # noqa: PLW1510 -- the return code is not the result
        [str(CHECKOV), "-d", str(directory), "--output", "json", "--quiet", "--compact", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    return {r["check_type"]: r for r in (result if isinstance(result, list) else [result])}


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    for overlay in OVERLAYS:
        (out / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered(overlay)))
    shutil.copy(ROOT / "Dockerfile", out / "Dockerfile")
    return out


def failed(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]}


def test_checkov_finds_nothing_unexplained_in_the_manifests_and_the_dockerfile(scan_dir):
    reports = checkov(scan_dir, "--framework", "kubernetes", "dockerfile")
    assert set(reports) == {"kubernetes", "dockerfile"}
    assert reports["kubernetes"]["summary"]["passed"] > 100
    failures = failed(reports["kubernetes"]) | failed(reports["dockerfile"])
    assert {check for check, _ in failures} == set(CHECKOV_ACCEPTED)
    # The probe exceptions are the workers only, never a pod behind a Service.
    probeless = {resource for check, resource in failures if check in {"CKV_K8S_8", "CKV_K8S_9"}}
    assert not {r for r in probeless if "analytics-web" in r or "schema-registry" in r}, probeless


def test_checkov_fails_a_privileged_root_pod(tmp_path):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "analytics"},
        "spec": {
            "containers": [
                {"name": "c", "image": "x@sha256:" + "0" * 64, "securityContext": {"privileged": True, "runAsUser": 0}}
            ]
        },
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(pod))
    ids = {check for check, _ in failed(checkov(tmp_path, "--framework", "kubernetes")["kubernetes"])}
    assert {"CKV_K8S_16", "CKV_K8S_20"} <= ids  # privileged, privilege escalation


# --- alert rules ---------------------------------------------------------------------------------


def rules_file(tmp_path: Path, rule: dict[str, Any] | None = None, *, annotations: bool = True) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file (one source: the manifest).

    Without annotations for the unit tests: promtool 2.42 compares them verbatim, and their
    templates are checked by `promtool check rules` already."""
    spec = json.loads(json.dumps(find(rendered("production"), "PrometheusRule", "analytics")["spec"]))
    for group in spec["groups"]:
        for r in group["rules"]:
            if not annotations:
                r.pop("annotations", None)
    if rule is not None:
        spec["groups"][0]["rules"].append(rule)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], check=False, capture_output=True, text=True, timeout=60)


def test_alert_rules_check_and_pass_their_unit_tests(tmp_path):
    assert promtool("check", "rules", str(rules_file(tmp_path))).returncode == 0
    rules = rules_file(tmp_path, annotations=False)
    shutil.copy(Path(__file__).with_name("alerts.test.yaml"), tmp_path / "alerts.test.yaml")
    proc = promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (tmp_path / "alerts.test.yaml").read_text()))
    defined = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert defined <= tested, f"alerts without a unit test: {defined - tested}"
    readme = (ROOT / "README.md").read_text()
    assert all(f"#### {name}" in readme for name in defined), "every alert has a runbook entry"


def test_a_broken_rule_fails_promtool(tmp_path):
    bad = rules_file(tmp_path, {"record": "analytics:broken", "expr": "sum(rate(ingest_requests_total[5m])"})
    assert promtool("check", "rules", str(bad)).returncode != 0


def test_a_wrong_alert_fails_its_unit_test(tmp_path):
    rules = rules_file(tmp_path, annotations=False)
    lag = "analytics:streams_processing_lag_seconds"
    rules.write_text(rules.read_text().replace(f"{lag} > 10", f"{lag} > 100"))
    shutil.copy(Path(__file__).with_name("alerts.test.yaml"), tmp_path / "alerts.test.yaml")
    assert promtool("test", "rules", str(tmp_path / "alerts.test.yaml")).returncode != 0


def test_rules_and_dashboard_name_only_metrics_the_application_exports(tmp_path):
    import prometheus_client

    import analytics_platform.log_shipping  # noqa: F401 -- each import registers its metrics
    import ingest.instrumentation  # noqa: F401
    import streams.app
    import streams.sinks  # noqa: F401

    exported = set()
    for metric in prometheus_client.REGISTRY.collect():
        exported |= {sample.name for sample in metric.samples} | {metric.name, f"{metric.name}_total"}
    for suffix in ("_bucket", "_count", "_sum"):
        exported |= {m + suffix for m in list(exported)}
    exported |= {"django_http_requests_latency_seconds_by_view_method_bucket", "up"}  # django-prometheus, Prometheus
    spec = find(rendered("production"), "PrometheusRule", "analytics")["spec"]
    dashboard = json.loads((K8S / "base" / "dashboards" / "analytics-operations.json").read_text())
    exprs = [r["expr"] for g in spec["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    recorded = {r["record"] for g in spec["groups"] for r in g["rules"] if "record" in r}
    functions = {
        "sum",
        "rate",
        "increase",
        "max",
        "histogram_quantile",
        "clamp_min",
        "vector",
        "by",
        "le",
        "and",
        "or",
        "on",
        "table",
        "reason",
        "status",
        "topic",
        "partition",
        "stage",
        "class",
        "view",
        "method",
        "namespace",
        "job",
    }
    for expr in exprs:
        without_strings = re.sub(r'"[^"]*"|\[[^\]]*\]', "", expr)
        for name in set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings)) - functions - recorded:
            assert name in exported, f"{name} in {expr!r} is not a metric of the application"
    # The dashboard's queries parse: each as a recording rule through promtool.
    extra = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump(extra))
    assert promtool("check", "rules", str(tmp_path / "dash.yaml")).returncode == 0


# --- delivery pipeline ---------------------------------------------------------------------------


def test_the_workflow_passes_actionlint_and_runs_make_test(tmp_path):
    workflow = ROOT / ".github" / "workflows" / "ci.yaml"
    proc = subprocess.run(
        [ACTIONLINT, "-no-color", str(workflow)], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = workflow.read_text()
    assert "make test" in text and "provenance: true" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("runs-on: ubuntu-24.04", "runs-on: ${{ matrix.os }}", 1))
    proc = subprocess.run(
        [ACTIONLINT, "-no-color", str(broken)], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0


def test_the_image_is_multi_stage_non_root_and_pinned():
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in re.findall(r"^FROM (\S+)", text, flags=re.M)
    ]
    assert len(froms) >= 2 and all(re.search(r"@sha256:[0-9a-f]{64}$", f) for f in froms)
    final = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001", final, flags=re.M)
    assert "apt-get" not in final and "gcc" not in final


def test_a_broken_kustomization_does_not_render(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(K8S / 'base', tmp_path)}]\npatches: [{{path: missing.yaml}}]\n"
    )
    with pytest.raises(subprocess.CalledProcessError):
        render(tmp_path)
