"""Progress inside long cells while papermill runs a notebook: a heartbeat line at most every ``interval`` seconds.

Papermill's own bar counts cells, so a five-minute training cell looks frozen. The training loops use
``tqdm.auto``, which in a kernel draws an ipywidgets bar; its updates reach the runner as widget-state messages,
not as output, so ``log_output`` cannot show them, and a text tqdm would write a line per update into the log and
the report. Instead the runner keeps the newest bar's text (tqdm's own ``n/total [elapsed<remaining, rate]``) and
a timer thread prints one line while a cell has run longer than the interval::

    .. 03_soul_injection: cell 13/18 running 1m01s (stage 1m30s) | soul injection: 50% 6/12 [00:13<00:16, 2.79s/it]

Quick cells print nothing, so a run prints about (long-cell time / interval) extra lines.
"""

from __future__ import annotations

import html
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args
from traitlets import Float, Unicode

ENGINE = "so8t-heartbeat"
DEFAULT_INTERVAL = 30.0
_PROGRESS_MODELS = ("IntProgressModel", "FloatProgressModel")


def clock(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``3725`` -> ``"1h02m05s"``."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s"


def bar_text(widget_state: Mapping[str, Mapping[str, Any]], model_id: str) -> str | None:
    """tqdm's text for the notebook bar that widget ``model_id`` belongs to, or None when it is no tqdm bar.

    ``tqdm.notebook`` draws ``HBox([HTML(description and percent), Progress, HTML(counts, times, rate)])``.

    Args:
        widget_state: model id -> widget state (nbclient's ``widget_state``).
        model_id: the widget whose update just arrived (the box, the bar or one of the labels).
    Returns:
        e.g. ``"soul injection: 41% 164/400 [02:01<02:54, 1.35it/s]"``; ``""`` for a bar that has finished (it no
        longer says what the cell is doing, as a model's weight-loading bar would), None for no tqdm bar.
    """
    for box in list(widget_state.values()):
        kids = [str(k).removeprefix("IPY_MODEL_") for k in box.get("children", ()) or ()]
        if len(kids) != 3 or model_id not in kids:
            continue
        left, bar, right = (widget_state.get(k, {}) for k in kids)
        if bar.get("_model_name") not in _PROGRESS_MODELS:
            continue
        if bar.get("bar_style") != "info" and bar.get("value", 0) >= bar.get("max", 1) > 0:  # info: no total
            return ""
        text = html.unescape(f"{left.get('value', '')} {right.get('value', '')}").replace("\u2007", " ")
        return re.sub(r"\s+", " ", text).strip() or None
    return None


@dataclass
class Heartbeat:
    """What the running notebook is doing, and the one line that says so.

    Args:
        label: the stage name.
        cells: the notebook's cell count.
        interval: seconds between lines; a cell shorter than this prints nothing.
        write: where lines go.
        now: the clock (seconds).
    """

    label: str
    cells: int
    interval: float = DEFAULT_INTERVAL
    write: Callable[[str], None] = print
    now: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    cell: int = field(default=-1, init=False)
    cell_started: float = field(init=False)
    loop: str = field(default="", init=False)
    loop_at: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval={self.interval}: must be > 0 seconds")
        self.started = self.cell_started = self.loop_at = self.now()

    def start_cell(self, index: int) -> None:
        """A new cell starts: its clock restarts and the last cell's bar is forgotten."""
        self.cell, self.cell_started, self.loop = index, self.now(), ""

    def saw_bar(self, text: str) -> None:
        """The newest tqdm text of the running cell ("" when its bar finished)."""
        self.loop, self.loop_at = text, self.now()

    def line(self) -> str | None:
        """The heartbeat line, or None while the current cell is younger than the interval."""
        t = self.now()
        if self.cell < 0 or t - self.cell_started < self.interval:
            return None
        out = (
            f".. {self.label}: cell {self.cell + 1}/{self.cells} running {clock(t - self.cell_started)} "
            f"(stage {clock(t - self.started)})"
        )
        if self.loop:
            stale = t - self.loop_at
            out += f" | {self.loop}" + (f" (no update for {clock(stale)})" if stale >= self.interval else "")
        return out

    @contextmanager
    def running(self) -> Iterator[None]:
        """A daemon thread writes ``line()`` every ``interval`` seconds while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.interval):
                if text := self.line():
                    self.write(text)

        thread = threading.Thread(target=beat, name=f"heartbeat {self.label}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _write_above_bars(text: str) -> None:
    if sys.stderr.isatty():  # papermill's cell bar is live there: clear it, write, redraw
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)
    else:  # a log: a redraw would only add another copy of the bar
        print(text, flush=True)


class HeartbeatClient(PapermillNotebookClient):
    """Papermill's notebook client plus a ``Heartbeat``: cells from ``on_cell_start``, bars from widget updates."""

    heartbeat_label = Unicode("notebook").tag(config=True)
    heartbeat_seconds = Float(DEFAULT_INTERVAL).tag(config=True)

    def execute(self, **kwargs: Any) -> Any:
        self._beat = Heartbeat(self.heartbeat_label, len(self.nb.cells), self.heartbeat_seconds, _write_above_bars)
        self.on_cell_start = lambda cell, cell_index: self._beat.start_cell(cell_index)
        with self._beat.running():
            return super().execute(**kwargs)

    def process_message(self, msg: dict, cell: Any, cell_index: int) -> Any:
        try:
            return super().process_message(msg, cell, cell_index)  # raises when the cell completes
        finally:
            if msg.get("msg_type") in ("comm_open", "comm_msg"):
                text = bar_text(self.widget_state, msg["content"].get("comm_id", ""))
                if text is not None:
                    self._beat.saw_bar(text)


class HeartbeatEngine(NBClientEngine):
    """Papermill's nbclient engine, running notebooks with ``HeartbeatClient``."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: int | None = None,
        **kwargs: Any,
    ) -> Any:
        # the same arguments NBClientEngine hands its client
        kwargs = remove_args(["input_path"], **kwargs)
        final = merge_kwargs(
            remove_args(["timeout", "startup_timeout"], **kwargs),
            timeout=execution_timeout or kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logger,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
        )
        return HeartbeatClient(nb_man, **final).execute()


def engine() -> str:
    """Register ``HeartbeatEngine`` with papermill (once) and return its name for ``execute_notebook``."""
    papermill_engines.register(ENGINE, HeartbeatEngine)
    return ENGINE
