"""Bad input to `spiketrace bench` gives one clear line and a non-zero exit, never a traceback;
and a good run ends with the summary, `Wrote <dir>` and the next command."""
from __future__ import annotations

import json
import socket

import pytest

from bench.server import ServerOptions, start_server_process
from spiketrace.cli import main


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _one_line_error(code, err, needle, exit_code=1):
    assert code == exit_code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("spiketrace: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, needle, exit_code", [
    # refused while the command line is parsed (a usage error: exit 2)
    (["-n", "0"], "invalid value for '-n': 0 is not in the range 1<=x<=1000000000", 2),
    (["-n", "-5"], "invalid value for '-n': -5 is not in the range", 2),
    (["--payload", "0"], "invalid value for '--payload': 0 is not in the range 1<=x<=16777216", 2),
    (["--payload", str(16 * 1024 * 1024 + 1)], "invalid value for '--payload'", 2),
    (["-c", "0"], "invalid value for '-c' / '--concurrency'", 2),
    (["--rate", "0"], "invalid value for '--rate': 0/s is too small (it must be more than 0/s)", 2),
    # refused by the options' own check (ClientOptions.validate)
    (["--host", "example.org"], "--host must be an IPv4 address", 1),
])
def test_client_rejects_bad_options(capsys, tmp_path, args, needle, exit_code):
    code, out, err = _run(capsys, "client", *args, "--out", str(tmp_path / "run"))
    _one_line_error(code, err, needle, exit_code)
    assert not (tmp_path / "run").exists()  # checked before anything is created


def test_server_rejects_bad_payload(capsys):
    code, out, err = _run(capsys, "server", "--payload", "0", "--port", "0")
    _one_line_error(code, err, "invalid value for '--payload'", 2)


def test_server_port_already_in_use(capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        code, out, err = _run(capsys, "server", "--port", str(port))
    _one_line_error(code, err, f"port {port} is already in use on 127.0.0.1")


def test_client_server_unreachable(capsys, tmp_path):
    with socket.socket() as holder:  # bound but not listening: connects are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        code, out, err = _run(capsys, "client", "-n", "10", "--port", str(port),
                              "--connect-timeout", "0.3", "--out", str(tmp_path / "run"))
    _one_line_error(code, err, f"cannot connect to 127.0.0.1:{port}: Connection refused for 0.3 s")
    assert "spiketrace bench server" in err
    assert not (tmp_path / "run").exists()  # the empty run directory is not left behind


def test_client_unwritable_output_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = _run(capsys, "client", "-n", "10", "--out", str(blocker / "run"))
    _one_line_error(code, err, "cannot create run directory")


def test_client_refuses_to_mix_runs_without_force(capsys, tmp_path):
    out = tmp_path / "run"
    with start_server_process(ServerOptions(port=0), None) as server:
        assert main(["bench", "client", "-n", "30", "--port", str(server.port), "--out", str(out)]) is None
        first, _ = capsys.readouterr()
        code, _, err = _run(capsys, "client", "-n", "30", "--port", str(server.port), "--out", str(out))
        _one_line_error(code, err, "already holds transactions (use --force")
        assert main(["bench", "client", "-n", "20", "--port", str(server.port), "--out", str(out),
                     "--force"]) is None
    assert "30 transactions" in first and "transactions/s" in first and "p99.9" in first
    assert f"Wrote {out}" in first and f"Next: spiketrace report {out}" in first
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["counts"]["transactions"] == 20
    assert meta["kind"] == "bench" and meta["params"]["client"]["n"] == 20
