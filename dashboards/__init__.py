"""auralens.dashboards — the Streamlit dashboard and the offline HTML report.

Both only *read* run folders (``manifest.json``, parquet tables, per-item safetensors); no
experiment logic lives here.  Importing this package imports nothing heavy.

- :func:`launch`: ``streamlit run dashboards/app.py`` on the given run folders (a subprocess).
- :func:`auralens.dashboards.report.write_report`: one self-contained HTML file with a run's figures.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from auralens.dashboards.data import open_run

__all__ = ["APP", "launch", "streamlit_command"]

APP = Path(__file__).resolve().parent / "app.py"


def streamlit_command(
    run_dirs: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    live_model: str | None = None,
    python: str | None = None,
) -> list[str]:
    """The ``streamlit run`` command line for the app: headless, no usage statistics, bound to
    ``host`` (loopback unless asked otherwise); run folders follow ``--`` as ``--run=PATH``."""

    cmd = [
        python or sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(int(port)),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
        "--",
    ]
    cmd += [f"--run={Path(p).expanduser().resolve()}" for p in run_dirs]
    if live_model:
        cmd += [f"--live-model={live_model}"]
    return cmd


def launch(run_dirs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8501, live_model: str | None = None) -> int:
    """Serve the dashboard on ``run_dirs`` until interrupted; returns streamlit's exit code.

    Every folder is checked first (a :class:`auralens.interp.errors.RunFolderError` names the bad one)."""


    for p in run_dirs:
        open_run(p)
    cmd = streamlit_command(run_dirs, host=host, port=port, live_model=live_model)

    Console(markup=False, highlight=False, soft_wrap=True).print(
        f"auralens dashboard: http://{host}:{port}  (Ctrl+C to stop)"
    )
    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):  # a terminated launcher takes its server down with it
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
