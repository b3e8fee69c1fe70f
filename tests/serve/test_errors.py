"""``hrlf serve``'s user errors: one line, exit status 2, before anything slow (core venv too)."""

from __future__ import annotations

import importlib.util
import socket

import pytest
from tests.serve.conftest import free_port

from hrlf.cli import main


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_missing_extra_is_named(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "starlette" else real(name, *a))
    assert main(["serve", str(tmp_path)]) == 2
    assert "needs the package 'starlette' (the serve extra): run `make serve`" in _error(capsys)


def test_bad_settings_and_missing_run(capsys, tmp_path):
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in 1..65535, got 70000" in _error(capsys)
    assert main(["serve", str(tmp_path), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be > 0" in _error(capsys)


@pytest.mark.serve
def test_a_missing_run(capsys, tmp_path):
    pytest.importorskip("starlette", reason="serve extra not installed: the run directory is checked after it")
    assert main(["serve", str(tmp_path / "nowhere"), "--port", str(free_port())]) == 2
    assert "nowhere does not exist" in _error(capsys)


@pytest.mark.serve
def test_a_taken_port_fails_before_the_model_loads(capsys, tmp_path):
    pytest.importorskip("starlette", reason="serve extra not installed")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path / "no-run"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in _error(capsys)


def test_listening_beyond_this_machine_warns(monkeypatch, capsys, tmp_path):
    from hrlf.serve import app

    class Started:
        started = True

        def run(self) -> None:
            pass

    monkeypatch.setattr(app, "build_server", lambda *_: Started())
    app.serve(tmp_path, app.ServeCfg(host="0.0.0.0"))
    err = capsys.readouterr().err
    assert err.startswith("warning: listening on 0.0.0.0: anyone who can reach this machine") and "no auth" in err
    app.serve(tmp_path, app.ServeCfg(host="127.0.0.1"))
    assert capsys.readouterr().err == ""
