"""Progress inside long cells: tqdm's notebook bar read from widget state, one heartbeat line per interval."""

import re

import nbformat
import pytest

from so8t_core import pipeline, progress


def tqdm_state(left="soul injection:  41%", right="164/400 [02:01&lt;02:54,  1.35it/s]", bar="IntProgressModel"):
    """Widget state as ``tqdm.notebook`` leaves it: HBox(HTML, Progress, HTML), figure spaces in the text."""
    return {
        "box": {"_model_name": "HBoxModel", "children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]},
        "l": {"_model_name": "HTMLModel", "value": left.replace(" ", "\u2007")},
        "p": {"_model_name": bar, "value": 164, "max": 400},
        "r": {"_model_name": "HTMLModel", "value": right.replace(" ", "\u2007")},
        "other": {"_model_name": "FloatSliderModel", "value": 1.6},
    }


@pytest.mark.parametrize("model_id", ["l", "p", "r", "box"])
def test_bar_text_reads_tqdm_from_any_of_its_widgets(model_id):
    want = "soul injection: 41% 164/400 [02:01<02:54, 1.35it/s]"
    assert progress.bar_text(tqdm_state(), model_id) == (want if model_id != "box" else None)


def test_bar_text_is_empty_for_a_finished_bar_unless_it_has_no_total():
    done = tqdm_state()
    done["p"] |= {"value": 400, "max": 400}
    assert progress.bar_text(done, "r") == ""
    done["p"]["bar_style"] = "info"  # tqdm without a total keeps the bar full
    assert progress.bar_text(done, "r").startswith("soul injection")


def test_bar_text_ignores_what_is_no_tqdm_bar():
    assert progress.bar_text(tqdm_state(), "other") is None
    assert progress.bar_text(tqdm_state(bar="FloatSliderModel"), "p") is None
    assert progress.bar_text({}, "p") is None


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_heartbeat_line_only_for_long_cells_and_notes_a_stale_bar():
    clock = Clock()
    hb = progress.Heartbeat("03_soul_injection", cells=17, interval=30, now=clock)
    assert hb.line() is None  # no cell yet
    clock.t = 110
    hb.start_cell(7)
    clock.t = 139
    assert hb.line() is None  # younger than the interval
    hb.saw_bar("soul injection: 41% 164/400 [02:01<02:54, 1.35it/s]")
    clock.t = 235
    line = hb.line()
    assert line == (
        ".. 03_soul_injection: cell 8/17 running 2m05s (stage 2m15s) | "
        "soul injection: 41% 164/400 [02:01<02:54, 1.35it/s] (no update for 1m36s)"
    )
    hb.start_cell(8)  # a new cell forgets the old bar
    clock.t += 3600
    assert hb.line() == ".. 03_soul_injection: cell 9/17 running 1h00m00s (stage 1h02m15s)"
    with pytest.raises(ValueError, match="interval=0"):
        progress.Heartbeat("x", 1, interval=0)


@pytest.mark.slow
def test_papermill_run_prints_throttled_heartbeats_with_the_loop(tmp_path, capsys):
    import papermill

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "so8t", "display_name": "Python (so8t)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import time\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(50), desc='toy loop'):\n    time.sleep(0.1)"
        )
    ]
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "out.ipynb"),
        kernel_name=pipeline._kernel_name(),
        progress_bar=False,
        engine_name=progress.engine(),
        heartbeat_label="99_toy",
        heartbeat_seconds=1.0,
    )
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(".. 99_toy")]
    assert 2 <= len(lines) <= 6, lines  # about one a second over a 5 s loop: seen, and no flood
    assert all(x.startswith(".. 99_toy: cell 1/1 running") for x in lines)
    assert any(re.search(r"\| toy loop: +\d+% \d+/50 \[\d\d:\d\d<\d\d:\d\d", x) for x in lines), lines
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "application/vnd.jupyter.widget-view+json" in out.cells[0].outputs[0]["data"]  # the notebook's bar stays
