"""The README's walkthrough, pasted as it stands into a fresh shell, does what it says."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import clean_env, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGH = "### Watching the Tencent side with the simulator"


def readme_block(heading: str) -> str:
    """The first ```sh block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```\n", start)]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR with a short path: the embedded Redis's unix socket lives under it."""
    path = Path(tempfile.mkdtemp(prefix="ivh-readme-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fresh_shell_env() -> dict[str, str]:
    """What a fresh shell would have: no settings of this machine's own bots and tests, nor the
    walkthrough's own SIM_PORT."""
    return {k: v for k, v in clean_env().items() if k != "SIM_PORT"}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(150)
async def test_the_walkthrough_shows_the_demo_and_leaves_nothing_running(
    tmp_path: Path, short_tmp: Path
):
    block = readme_block(WALKTHROUGH)
    assert "${SIM_PORT:-8900}" in block and "${PORT:-3000}" in block
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # "at the repository's root"
    env = fresh_shell_env()
    env |= {"SIM_PORT": str(free_port()), "PORT": str(free_port()), "TMPDIR": str(short_tmp)}
    errors = (tmp_path / "stderr.txt").open("wb")
    shell = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        block,
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=errors,
        start_new_session=True,  # its own process group, as a terminal gives a pasted block
    )
    assert shell.stdout is not None
    printed: list[str] = []
    try:
        # The README promises the event after ~15 s (5 s audit, 10 s training, 2 s polls).
        deadline = time.monotonic() + 60
        while not any("awaiting_confirmation" in line for line in printed):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no awaiting_confirmation in time: {printed}"
            line = await asyncio.wait_for(shell.stdout.readline(), remaining)
            assert line, f"the block ended early: {printed}"
            printed.append(line.decode())
        event = next(line for line in printed if "awaiting_confirmation" in line)
        assert '"task_id":"demo_1"' in event and '"round":1' in event
        # Ctrl-C, as a terminal sends it: to the whole foreground process group.
        os.killpg(shell.pid, signal.SIGINT)
        await asyncio.wait_for(shell.wait(), 30)

        await wait_for(lambda: not group_alive(shell.pid), 30, "the block's processes ended")
        assert os.listdir(short_tmp) == []  # its temporary DATA_DIR is gone too
    finally:
        if group_alive(shell.pid):
            os.killpg(shell.pid, signal.SIGKILL)
        if shell.returncode is None:
            await shell.wait()
        errors.close()
    log = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in log, log


@pytest.mark.timeout(90)
async def test_the_walkthrough_on_a_busy_port_says_so_and_cleans_up(
    tmp_path: Path, short_tmp: Path
):
    """A refused server shows its error and the block stops, instead of waiting or hiding it."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = fresh_shell_env()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        env |= {"SIM_PORT": str(busy), "PORT": str(free_port()), "TMPDIR": str(short_tmp)}
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            readme_block(WALKTHROUGH),
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, errors = await asyncio.wait_for(shell.communicate(), 60)
        finally:
            if group_alive(shell.pid):
                os.killpg(shell.pid, signal.SIGKILL)
    assert shell.returncode != 0
    assert f"--port: cannot listen on 127.0.0.1:{busy}: already in use" in errors.decode()
    await wait_for(lambda: not group_alive(shell.pid), 30, "the block's processes ended")
    assert os.listdir(short_tmp) == []
