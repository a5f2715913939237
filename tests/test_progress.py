"""Progress of long steps: one line per step when not on a terminal, nothing when disabled."""

from __future__ import annotations

import io

from onnxopt.progress import Progress


def test_one_line_per_step_off_a_terminal() -> None:
    # setup: a stream that is not a terminal, as a redirected session or CI log has
    stream = io.StringIO()
    # execute
    with Progress("least squares", 3, unit="layers", stream=stream) as bar:
        for _ in range(3):
            bar.advance()
    # assert
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxopt: least squares: 3 layers in ") and lines[0].endswith(" s")


def test_disabled_progress_writes_nothing() -> None:
    stream = io.StringIO()
    with Progress("comparing", 10, enabled=False, stream=stream) as bar:
        bar.advance(10)
    assert stream.getvalue() == "" and bar.done == 10
