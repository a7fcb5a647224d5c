"""The container recipe stays in step with the code: one install script, the services compose needs.

No image is built here (CI has no Docker daemon); these checks catch drift between the Dockerfile,
compose.yaml, the Makefile and CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "scripts/install.sh"
yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose.yaml")


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_image_installs_with_the_script_that_ci_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN .*bash scripts/install\.sh\s*$", dockerfile, re.MULTILINE)
    assert re.search(r"^ARG DEVICE=cpu$", dockerfile, re.MULTILINE)
    assert "FROM python:3.11-slim AS base-cpu" in dockerfile and "FROM base-${DEVICE}" in dockerfile
    # CI runs `make test`, whose install steps are that script.
    assert "make test" in (ROOT / ".ci/run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    install_rules = re.findall(r"^\$\(VENV\)/\.installed(?:-dev)?:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert len(install_rules) == 2 and all(INSTALL in rule for rule in install_rules)
    assert (ROOT / INSTALL).stat().st_mode & 0o111
    # Everything the script installs from is in the image's build context.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"requirements.txt", "requirements-dev.txt", "scripts", INSTALL} & set(ignored)


def test_compose_brings_up_web_worker_redis_and_postgres_with_data_and_model_volumes() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) >= {"web", "worker", "redis", "postgres"}
    for name in ("web", "worker"):
        service = services[name]
        assert {"data:/data", "models:/models"} <= set(service["volumes"])
        environment = service["environment"]
        assert environment["VOICEFORGE_DATA_DIR"].startswith("/data")
        assert environment["VOICEFORGE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:" in environment["VOICEFORGE_DATABASE_URL"]
        assert environment["VOICEFORGE_JOB_BACKEND"] == "celery"
        assert environment["VOICEFORGE_CELERY_BROKER_URL"].startswith("redis://redis:")
    assert "gunicorn -c gunicorn.conf.py wsgi:app" in " ".join(services["web"]["command"])
    assert "flask db upgrade" in " ".join(services["web"]["command"])
    assert services["worker"]["command"][:4] == ["celery", "--quiet", "-A", "voiceforge.jobs.celery_backend"]
    assert re.search(r"/healthz|/readyz", " ".join(services["web"]["healthcheck"]["test"]))
    assert all("healthcheck" in services[name] for name in ("redis", "postgres"))
    assert {"data", "models"} <= set(spec["volumes"])


def test_the_gpu_override_takes_a_gpus_batch_of_requests_at_once() -> None:
    """On a GPU 32 rows step in about the time of 8: the web service decodes 32 sentences together and
    admits as many requests (gunicorn's threads follow the queue's size by default)."""
    cuda = yaml.safe_load((ROOT / "compose.cuda.yaml").read_text())["services"]
    environment = cuda["web"]["environment"]
    assert environment["VOICEFORGE_MAX_BATCH"] == "${VOICEFORGE_MAX_BATCH:-32}"
    assert environment["VOICEFORGE_INFERENCE_QUEUE_SIZE"] == "${VOICEFORGE_INFERENCE_QUEUE_SIZE:-32}"
    assert "VOICEFORGE_THREADS" not in environment  # it follows the queue: 40 threads
    for name in ("web", "worker"):
        (device,) = cuda[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_compose_gives_in_flight_requests_longer_than_the_graceful_timeout() -> None:
    conf = (ROOT / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r'_count\("VOICEFORGE_GRACEFUL_TIMEOUT", (\d+)', conf).group(1))
    assert int(compose()["services"]["web"]["stop_grace_period"].rstrip("s")) > graceful


def test_the_driver_for_composes_database_is_a_runtime_requirement() -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^psycopg\[binary\]==", requirements, re.MULTILINE)
    assert re.search(r"^prometheus-client==", requirements, re.MULTILINE)


def test_the_image_keeps_gunicorns_control_socket_out_of_the_shared_data_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The user's home is /data (a volume several containers may share); the default socket would be there.
    assert re.search(r"--home-dir /data\b", dockerfile)
    runtime_dir = re.search(r"\bXDG_RUNTIME_DIR=(\S+)", dockerfile)
    assert runtime_dir and not runtime_dir.group(1).startswith("/data")
