"""cluster.yaml / cluster-local.yaml: valid for Ray 2.60's cluster launcher, documented, and secret-free.

Offline only: the files are checked against the JSON schema shipped inside the installed ``ray``
package (``ray/autoscaler/ray-schema.json``) with ``jsonschema``, and through Ray's own
``prepare_config`` + ``validate_config`` (the steps ``ray up`` runs before it talks to a cloud).
"""
from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILES = ["cluster.yaml", "cluster-local.yaml"]
DASHBOARD_PORT = 8265
JOB_SUBMIT = (
    "ray job submit --address http://localhost:8265 --working-dir . -- bam-search sweep "
    "spaces/bam_full.yaml --tasks cola,sst2,mrpc,stsb,rte --model minilm "
    "--storage s3://YOUR-BUCKET/bam --num-samples 32"
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _text(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def _config(name: str) -> dict[str, Any]:
    cfg = yaml.safe_load(_text(name))
    assert isinstance(cfg, dict), f"{name} is not a YAML mapping"
    return cfg


def _ray_schema() -> dict[str, Any]:
    ref = importlib.resources.files("ray.autoscaler") / "ray-schema.json"
    return json.loads(ref.read_text(encoding="utf-8"))


def _schema_validate(cfg: dict[str, Any]) -> None:
    jsonschema.validate(cfg, _ray_schema())


def _ray_validate(cfg: dict[str, Any]) -> None:
    """What ``ray up`` does before any cloud call: fill defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def _header(text: str) -> str:
    """The leading comment block (before the first YAML key)."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        lines.append(stripped.lstrip("#").strip())
    return "\n".join(lines)


_SECRET_PATTERNS = {
    # RAY_AUTH_TOKEN=<value> / RAY_AUTH_TOKEN: <value>, unless the value is a shell expansion ($...).
    "literal RAY_AUTH_TOKEN": re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*(?![\"']?\$)[\"']?[^\s\"'$]"),
    # Ray's own tokens are secrets.token_hex(32): 64 hex chars. Any long hex run is suspicious.
    "hex token": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key|aws_session_token", re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def _find_secrets(text: str) -> list[str]:
    return [f"{what}: {m.group(0)!r}" for what, pat in _SECRET_PATTERNS.items() for m in pat.finditer(text)]


def _world_open_rules(cfg: dict[str, Any], port: int) -> list[dict[str, Any]]:
    """Security-group ingress rules that open ``port`` to 0.0.0.0/0 or ::/0."""
    rules = (cfg.get("provider") or {}).get("security_group", {}).get("IpPermissions") or []
    bad = []
    for rule in rules:
        proto = str(rule.get("IpProtocol", "")).lower()
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        covers = proto in ("-1", "all") or lo in (-1, None) or (lo <= port <= (hi if hi not in (-1, None) else lo))
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges") or []) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges") or []
        )
        if covers and world:
            bad.append(rule)
    return bad


def _start_commands(cfg: dict[str, Any]) -> list[str]:
    return list(cfg.get("head_start_ray_commands") or []) + list(cfg.get("worker_start_ray_commands") or [])


# ---------------------------------------------------------------------------------------------
# schema validation
# ---------------------------------------------------------------------------------------------
def test_ray_ships_the_schema():
    schema = _ray_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema.get("additionalProperties") is False  # unknown top-level keys are errors


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_validates_against_ray_json_schema(name):
    _schema_validate(_config(name))


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_validates_with_ray_validate_config(name):
    _ray_validate(_config(name))


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_unknown_top_level_key_fails(name):
    cfg = _config(name)
    cfg["head_node_typo"] = {}
    with pytest.raises(jsonschema.ValidationError, match="head_node_typo"):
        _schema_validate(cfg)
    with pytest.raises(jsonschema.ValidationError, match="head_node_typo"):
        _ray_validate(cfg)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_wrong_type_fails(name):
    cfg = _config(name)
    cfg["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="many"):
        _schema_validate(cfg)
    # Ray's local provider does arithmetic on max_workers before validating: TypeError there.
    with pytest.raises((jsonschema.ValidationError, TypeError, ValueError)):
        _ray_validate(cfg)


# ---------------------------------------------------------------------------------------------
# documentation in the header
# ---------------------------------------------------------------------------------------------
def test_cluster_yaml_header_has_the_commands():
    header = _header(_text("cluster.yaml"))
    for cmd in ("ray up cluster.yaml", "ray dashboard cluster.yaml", "ray job submit", "ray down cluster.yaml"):
        assert cmd in header, f"header of cluster.yaml lacks {cmd!r}"
    assert JOB_SUBMIT in header
    assert re.search(r"\bS3\b", header) and "NFS" in header, "header must say --storage has to be shared"


def test_cluster_local_yaml_header_has_the_commands():
    header = _header(_text("cluster-local.yaml"))
    for cmd in ("ray up cluster-local.yaml", "ray dashboard cluster-local.yaml", "ray job submit",
                "ray down cluster-local.yaml"):
        assert cmd in header, f"header of cluster-local.yaml lacks {cmd!r}"
    assert "NFS" in header


# ---------------------------------------------------------------------------------------------
# security
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_no_literal_secrets(name):
    assert _find_secrets(_text(name)) == []


def test_secret_detector_is_not_vacuous():
    assert _find_secrets('export RAY_AUTH_TOKEN="$(openssl rand -hex 32)"') == []
    assert _find_secrets("--env RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token") == []
    assert _find_secrets("--env RAY_AUTH_TOKEN=s3cr3t")
    assert _find_secrets("RAY_AUTH_TOKEN: 'hunter2'")
    assert _find_secrets("x: " + "ab12" * 16)
    assert _find_secrets("AKIAIOSFODNN7EXAMPLE")
    assert _find_secrets("aws_secret_access_key = foo")


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_no_dashboard_port_open_to_the_world(name):
    cfg = _config(name)
    assert _world_open_rules(cfg, DASHBOARD_PORT) == []
    for cmd in _start_commands(cfg):
        assert not re.search(r"--dashboard-host[= ](0\.0\.0\.0|::)(\s|$)", cmd), cmd


def test_ingress_detector_is_not_vacuous():
    open_rule = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    all_rule = {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    vpn_rule = {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    ssh_rule = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    for rule, n in ((open_rule, 1), (all_rule, 1), (vpn_rule, 0), (ssh_rule, 0)):
        cfg = {"provider": {"security_group": {"IpPermissions": [rule]}}}
        assert len(_world_open_rules(cfg, DASHBOARD_PORT)) == n, rule


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_token_auth_configured_the_same_on_every_node(name):
    from ray._private.authentication.authentication_token_setup import AUTH_MODE_ENV_VAR

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    # The token variables named in the files are the ones Ray 2.60 reads.
    ray_exceptions = (importlib.resources.files("ray") / "exceptions.py").read_text(encoding="utf-8")
    assert "RAY_AUTH_TOKEN_PATH" in ray_exceptions and "`RAY_AUTH_TOKEN`" in ray_exceptions

    cfg = _config(name)
    docker = cfg["docker"]
    # Global run_options apply to the head and to every worker the autoscaler launches.
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]
    assert "--env RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token" in docker["run_options"]
    for node_type in (cfg.get("available_node_types") or {}).values():
        assert "image" not in (node_type.get("docker") or {})
    for cmd in _start_commands(cfg):
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    # The token reaches every node as a file copied from the operator's machine, outside the repo.
    local_token = cfg["file_mounts"]["~/.ray/auth_token"]
    assert local_token.startswith("~/") and not local_token.startswith("./")
    assert "RAY_AUTH_MODE=token" in _header(_text(name))


# ---------------------------------------------------------------------------------------------
# shape
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_project_installed_from_file_mount(name):
    cfg = _config(name)
    assert cfg["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    assert cfg["file_mounts"]["~/bam-search"] == "."
    assert "~/glue_data" in cfg["file_mounts"]
    setup = cfg["setup_commands"]
    assert not any("bam-search @ file://" in cmd for cmd in setup)
    # pip install of the mounted repo (or of a copy of it made in the same command).
    assert any("pip install" in cmd and re.search(r"(~|\$HOME)/bam-search\b", cmd) for cmd in setup), setup


def test_aws_gpu_workers_autoscale_from_zero():
    cfg = _config("cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers
    for node_type in workers.values():
        assert node_type["min_workers"] == 0
        assert node_type["resources"].get("GPU", 0) >= 1
        assert node_type["node_config"]["InstanceType"].startswith(("g4dn", "g5", "g6", "p3", "p4", "p5"))


def test_local_provider_shape():
    cfg = _config("cluster-local.yaml")
    assert cfg["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    assert cfg["auth"]["ssh_user"]
    assert "available_node_types" not in cfg  # the local provider refuses them
