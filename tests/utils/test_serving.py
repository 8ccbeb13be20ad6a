from __future__ import annotations

import subprocess
import sys
import time

from magicbokeh.utils.serving import free_port, stop_process, wait_until_serving


def test_a_server_is_found_once_it_answers_and_stopped_after(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until_serving(f"http://127.0.0.1:{port}/", server, timeout_s=60)
    finally:
        stop_process(server, grace_s=10)
    assert server.returncode is not None


def test_waiting_ends_when_the_server_exits_instead_of_serving():
    port = free_port()  # nothing will listen on it
    crashed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    assert not wait_until_serving(f"http://127.0.0.1:{port}/", crashed, timeout_s=120)
    assert crashed.returncode == 3 and time.monotonic() - started < 60  # it did not wait out the timeout
