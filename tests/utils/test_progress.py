"""Progress bars: tqdm in a terminal; in a log (stderr not a terminal) whole lines, at most every LOG_INTERVAL_S."""

import io

from magicbokeh.utils import progress
from magicbokeh.utils.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_whole_lines_without_carriage_returns(monkeypatch):
    log = io.StringIO()  # not a terminal, like a redirected stderr
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # every update would be drawn: the worst case for a log
    for _ in progress_bar(range(50), desc="work", file=log):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("work:") for line in lines)
    assert "50/50" in lines[-1]


def test_a_log_is_redrawn_at_most_every_interval():
    log = io.StringIO()
    for _ in progress_bar(range(10_000), desc="work", file=log, leave=True):
        pass
    assert len(log.getvalue().splitlines()) <= 2  # the first draw and the final one, with a 30 s interval


def test_a_terminal_keeps_tqdm_as_it_is():
    terminal = _Terminal()
    for _ in progress_bar(range(5), desc="work", file=terminal, mininterval=0):
        pass
    assert "\r" in terminal.getvalue()  # redrawn in place
