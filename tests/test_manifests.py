"""The Kubernetes and KServe manifests of deploy/kubernetes/, checked offline
(no cluster, no model, no server):

- each Kubernetes object against Kubernetes 1.34's schemas with
  kubernetes-validate's strict mode, which rejects unknown fields as the API
  server does under strict field validation (kubectl's default; other clients
  get a warning and the field dropped: a misspelled probe would silently be
  no probe);
- the InferenceService against KServe's own CRD, vendored with its source and
  licence in deploy/kubernetes/schemas/, closed the same way (`closed`);
- a misspelled field fails each, naming the field;
- the manifests agree with the project: the probes and the scrape path are
  routes of the service's OpenAPI document, the ports are the DIABETES_PORT
  setting, every DIABETES_ variable is a parameter of the endpoint notebook,
  the grace period covers the stop (the Containerfile's graceful timeout, the
  edge's drain), the memory limit bounds workers x cap, the names the service
  trusts are the ones it is called by, and the variants (a mounted model,
  KServe) stay the Deployment they copy.

Kubernetes 1.34: the API that KServe v0.20.0, the release vendored, builds on
(k8s.io/api v0.34), so both validations hold the pod to the same schema."""

import copy
import hashlib
import re
from dataclasses import asdict
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from diabetes.contract import Contract
from diabetes.features import FEATURES
from diabetes.gunicorn_config import EDGE_DRAIN_SECONDS
from diabetes.openapi import openapi_document
from diabetes.settings import APP_NAME, host_name_of, notebook_defaults, override_from_environment, trusted_host_names
from tests.conftest import PROJECT

KUBERNETES_VERSION = "1.34"
DEPLOY = PROJECT / "deploy" / "kubernetes"
KSERVE_CRD = DEPLOY / "schemas" / "serving.kserve.io_inferenceservices.yaml"
# `git hash-object` of KServe v0.20.0's config/crd/full/serving.kserve.io_inferenceservices.yaml
# (deploy/kubernetes/schemas/README.md): the vendored copy is that file, unchanged.
KSERVE_CRD_BLOB = "1e37d05b7a741eb40b9eb01c378dc9dc80eab3d9"
KSERVE_GROUP = "serving.kserve.io"
PRESERVE_UNKNOWN_FIELDS = "x-kubernetes-preserve-unknown-fields"

# `make bench`'s memory figures (PSS after its loads), rounded up, in MiB: the
# master, the edge, and PM2's node daemon in the container (50-60 MiB).
MASTER_MIB, EDGE_MIB, PM2_MIB = 32, 32, 64
MEASURED_SERVICE_MIB = 193 + 60
# A worker's resident memory after 10,000-row batches and 500-row explanations.
WORKER_PEAK_RESIDENT_MIB = 94

# Values the kubelet would give the Downward API variables, for `expanded`.
NAMESPACE, POD_IP = "shop", "10.1.2.3"

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def manifest_files() -> list[Path]:
    """Every manifest of deploy/kubernetes/, the variants' folders included; not the vendored schemas."""
    return sorted(path for path in DEPLOY.rglob("*.yaml") if "schemas" not in path.relative_to(DEPLOY).parts)


def documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def objects() -> list[tuple[Path, dict]]:
    return [(path, document) for path in manifest_files() for document in documents(path)]


def the(relative: str, kind: str) -> dict:
    """The one object of `kind` in deploy/kubernetes/`relative`."""
    (found,) = [document for document in documents(DEPLOY / relative) if document["kind"] == kind]
    return found


def object_id(item) -> str:
    path, document = item
    return f"{path.relative_to(DEPLOY)}:{document['kind']}"


KUBERNETES_OBJECTS = [item for item in objects() if not item[1]["apiVersion"].startswith(KSERVE_GROUP + "/")]


# ## The files


def test_the_folder_holds_the_deployment_its_service_autoscaler_budget_and_the_variants():
    kinds = {(str(path.relative_to(DEPLOY)), document["kind"]) for path, document in objects()}
    assert kinds == {
        ("deployment.yaml", "Deployment"),
        ("service.yaml", "Service"),
        ("horizontalpodautoscaler.yaml", "HorizontalPodAutoscaler"),
        ("poddisruptionbudget.yaml", "PodDisruptionBudget"),
        ("mounted-model/deployment.yaml", "Deployment"),
        ("mounted-model/persistentvolumeclaim.yaml", "PersistentVolumeClaim"),
        ("kserve/inferenceservice.yaml", "InferenceService"),
    }


# ## Kubernetes' own kinds: kubernetes-validate, strict


def kubernetes_errors(document: dict) -> list[str]:
    """What kubernetes-validate finds wrong with the object, strict, for KUBERNETES_VERSION (it stops at the first)."""
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{error.json_path}: {error.message}"]
    return []


@pytest.mark.parametrize("item", KUBERNETES_OBJECTS, ids=object_id)
def test_each_kubernetes_object_is_valid_for_kubernetes_1_34_with_no_unknown_field(item):
    _, document = item
    assert kubernetes_errors(document) == []


def renamed(document: dict, path: tuple, new_name: str) -> dict:
    """A copy of `document` whose field at `path` (keys and list indices) is called `new_name`."""
    changed = copy.deepcopy(document)
    *parents, name = path
    parent = changed
    for key in parents:
        parent = parent[key]
    parent[new_name] = parent.pop(name)
    return changed


CONTAINER = ("spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    "relative, kind, path, misspelled",
    [
        ("deployment.yaml", "Deployment", (*CONTAINER, "readinessProbe"), "readinesProbe"),
        (
            "deployment.yaml",
            "Deployment",
            ("spec", "template", "spec", "terminationGracePeriodSeconds"),
            "terminationGracePeriod",
        ),
        ("service.yaml", "Service", ("spec", "ports", 0, "targetPort"), "targetport"),
        ("horizontalpodautoscaler.yaml", "HorizontalPodAutoscaler", ("spec", "minReplicas"), "minReplica"),
    ],
)
def test_a_misspelled_field_fails_kubernetes_validation_naming_it(relative, kind, path, misspelled):
    errors = kubernetes_errors(renamed(the(relative, kind), path, misspelled))
    assert any(f"'{misspelled}' was unexpected" in error for error in errors), errors


# ## The InferenceService: KServe's CRD, closed


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_the_vendored_crd_is_kserves_file_unchanged_with_its_licence_beside_it():
    assert git_blob_id(KSERVE_CRD.read_bytes()) == KSERVE_CRD_BLOB
    licence = (KSERVE_CRD.parent / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    source = (KSERVE_CRD.parent / "README.md").read_text()
    assert KSERVE_CRD_BLOB in source and "v0.20.0" in source


def closed(schema: dict) -> dict:
    """A copy of a CRD's structural schema in which every object schema that
    lists `properties`, and says neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields: true`, admits no other field.

    A CRD's schema never says `additionalProperties: false`: the API server
    drops (prunes) the fields its schema does not name, with a warning, or
    under strict field validation (kubectl's default) refuses the object. A
    JSON Schema validator, by contrast, lets through any field the schema does
    not name: a misspelled `readinesProbe` would pass, and the pod would run
    without its probe. Closed, the schema rejects it as the API server does. Objects whose schema names no
    `properties` (maps such as labels, which say `additionalProperties`, and
    the root's `metadata`, which the API server checks as ObjectMeta: see
    `metadata_errors`) and the parts marked to keep unknown fields stay open.
    The CEL rules (`x-kubernetes-validations`) are not evaluated."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: closed(field) for name, field in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(PRESERVE_UNKNOWN_FIELDS):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            schema[key] = closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [closed(part) for part in schema[key]]
    return schema


@pytest.fixture(scope="module")
def kserve_validator() -> jsonschema.Draft4Validator:
    """CRD schemas are OpenAPI 3.0 schema objects: JSON Schema draft 4's keywords, plus extensions it ignores."""
    crd = yaml.load(KSERVE_CRD.read_text(), Loader=SAFE_LOADER)
    assert crd["spec"]["group"] == KSERVE_GROUP and crd["spec"]["names"]["kind"] == "InferenceService"
    inference_service = the("kserve/inferenceservice.yaml", "InferenceService")
    version = inference_service["apiVersion"].split("/")[1]
    (served,) = [entry for entry in crd["spec"]["versions"] if entry["name"] == version and entry["served"]]
    return jsonschema.Draft4Validator(closed(served["schema"]["openAPIV3Schema"]))


def metadata_errors(document: dict) -> list[str]:
    """The object's metadata checked as Kubernetes' ObjectMeta (the CRD leaves it to
    the API server): kubernetes-validate's, strict, on a ConfigMap that carries it."""
    return kubernetes_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]})


def kserve_errors(validator, document: dict) -> list[str]:
    schema_errors = [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]
    return schema_errors + metadata_errors(document)


def test_the_closing_rejects_an_unnamed_field_only_where_the_crd_names_its_fields():
    schema = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "status": {"type": "object", "properties": {}, PRESERVE_UNKNOWN_FIELDS: True},
        },
    }
    validator = jsonschema.Draft4Validator(closed(schema))
    assert validator.is_valid({"spec": {"replicas": 2}, "labels": {"any": "name"}, "status": {"any": 1}})
    assert not validator.is_valid({"spec": {"replica": 2}})
    assert not validator.is_valid({"spek": {}})
    assert jsonschema.Draft4Validator(schema).is_valid({"spec": {"replica": 2}}), "open as the CRD says it"


def test_the_inference_service_is_valid_against_kserves_crd_with_no_unknown_field(kserve_validator):
    assert kserve_errors(kserve_validator, the("kserve/inferenceservice.yaml", "InferenceService")) == []


PREDICTOR = ("spec", "predictor")


@pytest.mark.parametrize(
    "path, misspelled",
    [
        ((*PREDICTOR, "containers", 0, "readinessProbe"), "readinesProbe"),
        ((*PREDICTOR, "containers", 0, "readinessProbe", "httpGet"), "httpget"),
        ((*PREDICTOR, "minReplicas"), "minReplica"),
        ((*PREDICTOR, "deploymentStrategy", "rollingUpdate", "maxSurge"), "maxSurges"),
        (("spec", "predictor"), "predicter"),
        (("metadata", "annotations"), "anotations"),
    ],
)
def test_a_misspelled_field_fails_the_inference_service_naming_it(kserve_validator, path, misspelled):
    document = renamed(the("kserve/inferenceservice.yaml", "InferenceService"), path, misspelled)
    errors = kserve_errors(kserve_validator, document)
    assert any(f"'{misspelled}' was unexpected" in error for error in errors), errors


def test_a_value_of_the_wrong_type_or_outside_an_enum_fails_the_inference_service(kserve_validator):
    document = the("kserve/inferenceservice.yaml", "InferenceService")
    document["spec"]["predictor"]["scaleMetric"] = "cpus"
    document["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    errors = kserve_errors(kserve_validator, document)
    assert any(error.startswith("$.spec.predictor.scaleMetric:") for error in errors), errors
    assert any(error.startswith("$.spec.predictor.containers[0].ports[0].containerPort:") for error in errors), errors


# ## Agreement with the project


def pod_spec(document: dict) -> dict:
    """The pod a Deployment's template or an InferenceService's predictor makes."""
    if document["kind"] == "InferenceService":
        return document["spec"]["predictor"]
    return document["spec"]["template"]["spec"]


def pod_annotations(document: dict) -> dict:
    if document["kind"] == "InferenceService":
        return document["spec"]["predictor"]["annotations"]
    return document["spec"]["template"]["metadata"]["annotations"]


def environment(container: dict) -> dict:
    return {variable["name"]: variable.get("value") for variable in container["env"]}


SERVING = {
    "deployment": ("deployment.yaml", "Deployment"),
    "mounted model": ("mounted-model/deployment.yaml", "Deployment"),
    "kserve": ("kserve/inferenceservice.yaml", "InferenceService"),
}


@pytest.fixture(params=SERVING.values(), ids=SERVING.keys())
def serving(request) -> dict:
    """Each manifest that runs the image."""
    return the(*request.param)


def the_container(document: dict) -> dict:
    (container,) = pod_spec(document)["containers"]
    return container


def port_number(container: dict, port) -> int:
    """A probe's or a Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [entry["containerPort"] for entry in container["ports"] if entry.get("name") == port]
    return number


def probes(container: dict) -> dict:
    return {name: container[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}


@pytest.fixture(scope="module")
def documented_routes() -> dict:
    """The service's OpenAPI document's paths (the model's card does not change them)."""
    features = [{**asdict(feature), "training_min": 0.0, "training_max": 1.0} for feature in FEATURES]
    contract = Contract(tuple(features), "v-test", 0.5, max_rows=10)
    return openapi_document(contract)["paths"]


def test_the_probes_are_the_services_v2_health_routes_readiness_the_one_that_answers_503(serving, documented_routes):
    container = the_container(serving)
    paths = {name: probe["httpGet"]["path"] for name, probe in probes(container).items()}
    for name, path in paths.items():
        assert "get" in documented_routes.get(path, {}), f"{name}: {path} is not a route of the service"
    assert "503" in documented_routes[paths["readinessProbe"]]["get"]["responses"]
    assert "503" not in documented_routes[paths["livenessProbe"]]["get"]["responses"]
    assert paths["startupProbe"] == paths["livenessProbe"]


def test_every_port_is_the_one_the_service_listens_on(serving):
    container = the_container(serving)
    port = int(environment(container)["DIABETES_PORT"])
    assert container["ports"][0]["containerPort"] == port
    for name, probe in probes(container).items():
        assert port_number(container, probe["httpGet"]["port"]) == port, name
    annotations = pod_annotations(serving)
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port


def test_prometheus_scrapes_the_services_metrics_route(serving, documented_routes):
    assert "get" in documented_routes[pod_annotations(serving)["prometheus.io/path"]]


def test_the_service_sends_port_80_to_the_deployments_port():
    service = the("service.yaml", "Service")
    (port,) = service["spec"]["ports"]
    container = the_container(the("deployment.yaml", "Deployment"))
    assert (port["name"], port["port"]) == ("http", 80)
    assert port_number(container, port["targetPort"]) == int(environment(container)["DIABETES_PORT"])


def test_the_kserve_predictor_is_a_custom_v2_container_on_8080():
    container = the_container(the("kserve/inferenceservice.yaml", "InferenceService"))
    variables = environment(container)
    assert container["name"] == "kserve-container"
    assert variables["PROTOCOL"] == "v2"
    assert variables["DIABETES_PORT"] == "8080"


def test_the_service_autoscaler_and_budget_select_the_deployments_pods():
    deployment = the("deployment.yaml", "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "deployment": deployment["spec"]["selector"]["matchLabels"],
        "service": the("service.yaml", "Service")["spec"]["selector"],
        "budget": the("poddisruptionbudget.yaml", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for name, selector in selectors.items():
        assert selector and selector.items() <= pod_labels.items(), name
    target = the("horizontalpodautoscaler.yaml", "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert deployment["metadata"]["name"] == APP_NAME


def test_the_image_is_the_one_make_image_tags(serving):
    assert the_container(serving)["image"].split(":")[0] == APP_NAME


def test_every_diabetes_variable_is_a_parameter_of_the_endpoint_notebook_of_its_type(serving, monkeypatch):
    variables = {
        name: value for name, value in environment(the_container(serving)).items() if name.startswith("DIABETES_")
    }
    defaults = notebook_defaults(str(PROJECT / "notebooks" / "serve.ipynb"))
    unknown = {name for name in variables if name.removeprefix("DIABETES_").lower() not in defaults}
    assert not unknown, f"not parameters of notebooks/serve.ipynb (the service would ignore them): {unknown}"
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    override_from_environment(defaults)  # raises on a value not of its parameter's type


def graceful_timeout_of_the_image() -> int:
    """gunicorn's --graceful-timeout as the Containerfile sets it (GUNICORN_CMD_ARGS)."""
    (seconds,) = re.findall(
        r'GUNICORN_CMD_ARGS="[^"]*--graceful-timeout[ =](\d+)', (PROJECT / "Containerfile").read_text()
    )
    return int(seconds)


def pre_stop_seconds(container: dict) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert Path(command[0]).name == "sleep", command
    return int(command[1])


def test_the_grace_period_covers_pre_stop_leaving_rotation_the_edges_drain_and_gunicorns_graceful_stop(serving):
    container = the_container(serving)
    stop = (
        pre_stop_seconds(container)
        + int(environment(container)["DIABETES_LEAVE_ROTATION_SECONDS"])
        + EDGE_DRAIN_SECONDS
        + graceful_timeout_of_the_image()
    )
    assert pod_spec(serving)["terminationGracePeriodSeconds"] > stop


def test_readiness_fails_within_the_time_the_pod_leaves_rotation(serving):
    container = the_container(serving)
    readiness = container["readinessProbe"]
    noticed = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert noticed <= int(environment(container)["DIABETES_LEAVE_ROTATION_SECONDS"])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 2**-10, "Mi": 1, "Gi": 2**10, "k": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity).groups()
    return float(number) * units[unit] if unit else float(number) / 2**20


def cores(quantity) -> float:
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_memory_limit_bounds_every_worker_at_its_cap_with_the_master_edge_and_pm2(serving):
    container = the_container(serving)
    variables = environment(container)
    workers, cap = int(variables["DIABETES_WORKERS"]), int(variables["DIABETES_MAX_WORKER_MEMORY_MIB"])
    assert cap > WORKER_PEAK_RESIDENT_MIB, "the cap would replace workers in ordinary use"
    resources = container["resources"]
    assert workers * cap + MASTER_MIB + EDGE_MIB + PM2_MIB < mebibytes(resources["limits"]["memory"])
    assert MEASURED_SERVICE_MIB <= mebibytes(resources["requests"]["memory"])


def test_one_worker_per_requested_cpu(serving):
    container = the_container(serving)
    resources = container["resources"]
    assert int(environment(container)["DIABETES_WORKERS"]) == cores(resources["requests"]["cpu"])
    assert cores(resources["limits"]["cpu"]) >= cores(resources["requests"]["cpu"])


def expanded(container: dict, name: str) -> str:
    """The variable's value as the kubelet gives it: $(NAME) replaced by the
    value of a variable defined before it (else left as it is)."""
    values = {"POD_NAMESPACE": NAMESPACE, "POD_IP": POD_IP}
    defined = {}
    for variable in container["env"]:
        if "valueFrom" in variable:
            defined[variable["name"]] = values[variable["name"]]
        else:
            defined[variable["name"]] = re.sub(
                r"\$\((\w+)\)", lambda match: defined.get(match[1], match[0]), variable["value"]
            )
    return defined[name]


def test_the_service_trusts_the_names_it_is_called_by_and_the_pods_address(serving):
    container = the_container(serving)
    hosts = expanded(container, "DIABETES_TRUSTED_HOSTS")
    assert "$(" not in hosts, f"a variable not defined before DIABETES_TRUSTED_HOSTS: {hosts}"
    trusted = trusted_host_names(hosts, environment(container)["DIABETES_HOST"])
    assert trusted is not None, "a list of names, not any name"
    if serving["kind"] == "InferenceService":
        service = f"{serving['metadata']['name']}-predictor"
    else:
        service = the("service.yaml", "Service")["metadata"]["name"]
    port = environment(container)["DIABETES_PORT"]
    domain = f"{service}.{NAMESPACE}"
    called_as = [service, domain, f"{domain}.svc", f"{domain}.svc.cluster.local", f"{POD_IP}:{port}", "localhost:5000"]
    assert {host_name_of(host) for host in called_as} <= trusted


def without(document: dict, *paths) -> dict:
    changed = copy.deepcopy(document)
    for path in paths:
        *parents, name = path
        parent = changed
        for key in parents:
            parent = parent[key]
        del parent[name]
    return changed


def test_the_mounted_model_variant_is_the_deployment_with_a_version_from_a_read_only_volume():
    baked, mounted = the("deployment.yaml", "Deployment"), the("mounted-model/deployment.yaml", "Deployment")
    container, pod = the_container(mounted), pod_spec(mounted)
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    claim = the("mounted-model/persistentvolumeclaim.yaml", "PersistentVolumeClaim")
    assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    assert volume["name"] == mount["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    model_dir = Path(environment(container)["DIABETES_MODEL_DIR"])
    assert model_dir.parent == Path(mount["mountPath"]), "a version folder right under the mount"
    assert model_dir.name not in ("current", "latest"), "a link would let workers started later load another version"

    index = [variable["name"] for variable in container["env"]].index("DIABETES_MODEL_DIR")
    assert (
        without(
            mounted,
            (*CONTAINER, "env", index),
            (*CONTAINER, "volumeMounts"),
            ("spec", "template", "spec", "volumes"),
        )
        == baked
    )


def probes_on_the_service_port(container: dict) -> dict:
    """The container's probes, each port that is DIABETES_PORT (by number or name) written as that name."""
    port = int(environment(container)["DIABETES_PORT"])
    return {
        name: {
            **probe,
            "httpGet": {
                **probe["httpGet"],
                "port": "DIABETES_PORT" if port_number(container, probe["httpGet"]["port"]) == port else None,
            },
        }
        for name, probe in probes(container).items()
    }


def test_the_kserve_predictor_runs_the_deployments_pod_on_its_own_port():
    deployment, service = the("deployment.yaml", "Deployment"), the("kserve/inferenceservice.yaml", "InferenceService")
    ours, theirs = the_container(deployment), the_container(service)
    for field in ("image", "imagePullPolicy", "resources", "lifecycle", "securityContext"):
        assert theirs[field] == ours[field], field
    assert probes_on_the_service_port(theirs) == probes_on_the_service_port(ours)
    own_names = {"DIABETES_PORT", "DIABETES_TRUSTED_HOSTS", "PROTOCOL"}
    settings = {name: value for name, value in environment(ours).items() if name not in own_names}
    assert settings == {name: value for name, value in environment(theirs).items() if name not in own_names}
    for field in ("terminationGracePeriodSeconds", "automountServiceAccountToken", "securityContext"):
        assert pod_spec(service)[field] == pod_spec(deployment)[field], field
    predictor = service["spec"]["predictor"]
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"]
    autoscaler = the("horizontalpodautoscaler.yaml", "HorizontalPodAutoscaler")["spec"]
    (metric,) = autoscaler["metrics"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        autoscaler["minReplicas"],
        autoscaler["maxReplicas"],
    )
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == (
        metric["resource"]["name"],
        metric["resource"]["target"]["averageUtilization"],
    )
