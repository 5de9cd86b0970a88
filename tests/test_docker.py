"""The image and the compose file, checked as far as a machine without Docker can.

No Docker engine runs these: the Dockerfile is read as text, docker-compose.yml as YAML
against what the Compose specification allows.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_as_a_user_who_owns_its_working_directory():
    """Without REDIS_URL the embedded Redis writes into DATA_DIR, `.data` by default, relative
    to the working directory: that must be the bot user's, whatever .env says."""
    steps = dockerfile()
    user_at = next(i for i, (op, _) in enumerate(steps) if op == "USER")
    user = steps[user_at][1]
    workdir = [arguments for op, arguments in steps if op == "WORKDIR"][-1]
    assert [i for i, (op, _) in enumerate(steps) if op == "WORKDIR"][-1] > user_at
    made = " && ".join(arguments for op, arguments in steps[:user_at] if op == "RUN")
    assert re.search(rf"useradd\b[^&]*\b{user}\b", made)
    assert f"mkdir {workdir}" in made or f"mkdir -p {workdir}" in made
    assert re.search(rf"chown {user}(:{user})? {workdir}(\s|$)", made)
    assert ("VOLUME", workdir) in steps
    assert not [arguments for op, arguments in steps if op == "ENV" and "DATA_DIR" in arguments]
    # .env (handed to the container by compose) keeps DATA_DIR relative: inside the volume.
    example = (ROOT / ".env.example").read_text()
    data_dir = re.search(r"^DATA_DIR=(.*)$", example, re.MULTILINE)
    assert data_dir is not None and not data_dir.group(1).startswith("/")
    assert not Path(Settings.model_fields["DATA_DIR"].default).is_absolute()


def test_compose_runs_the_bot_beside_a_healthy_redis_with_any_compose_v2():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose) <= {"services", "volumes", "networks", "configs", "secrets", "name"}
    bot, redis = compose["services"]["bot"], compose["services"]["redis"]
    # `env_file` as a plain path: the long form's `required:` needs Compose 2.24 or later.
    assert bot["env_file"] == ".env"
    assert bot["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert bot["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert redis["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "--appendonly" in redis["command"]
    assert bot["build"] == "."
    assert bot["ports"] == ["${PORT:-3000}:3000"]
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"named volume {source} is not declared"
