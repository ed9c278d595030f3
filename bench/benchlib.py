"""What every benchmark script shares: percentiles computed one way.

The scripts run as `python3 bench/<name>.py`, so this directory is on
sys.path and `from benchlib import pct` finds this file.
"""


def pct(values, p):
    """The p-th percentile, interpolated between the nearest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def wait_port_file(path, proc, timeout=20):
    """The port a case-study server wrote to `path` once listening; exits
    the benchmark if the server died or took longer than `timeout` s."""
    import sys
    import time

    deadline = time.time() + timeout
    while not (path.exists() and path.read_text().strip()):
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"server did not start ({path})")
        time.sleep(0.05)
    return int(path.read_text())


def serve_kvserver(cmd, env, port_file, startup=20, stderr=None):
    """Starts the case-study server v1 with `cmd` (`[python3, "-m",
    "kvserver"]`, or the same under `pyreload run`) on a free port, and
    returns (process, port). Its stderr goes to `stderr`, a file, or away."""
    import pathlib
    import subprocess

    repo = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd + ["--port", "0", "--port-file", str(port_file)], cwd=repo / "case-study/v1",
                            env=env, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)
    return proc, wait_port_file(port_file, proc, startup)


def pyreload_kvserver(pyreload):
    """The command that hosts the case-study server under `pyreload run`, at 1.0."""
    return [pyreload, "run", "--name", "kvserver", "--version", "1.0", "-m", "kvserver"]
