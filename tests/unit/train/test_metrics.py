"""Progress: plain lines off a terminal (every N steps or T seconds, with ETA), only the bar on one; resume truncation."""

from __future__ import annotations

import io
import json

from polm.train.metrics import MetricsLogger, ProgressBar, clock_text, read_metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_clock_text():
    assert [clock_text(s) for s in (0, 59.9, 61, 3725)] == ["0:00:00", "0:00:59", "0:01:01", "1:02:05"]


def test_off_a_terminal_a_line_every_n_steps_and_at_the_end(capsys):
    clock = FakeClock()
    bar = ProgressBar(10, 0, True, every=4, clock=clock)
    for step in range(1, 11):
        clock.now += 2.0                                      # 2 s a step
        bar.update(step, 1.0 / step, 1e-3, tokens_per_s=250.4)
    bar.close()
    assert capsys.readouterr().err.splitlines() == [
        "train: step 4/10  loss 0.2500  lr 1.00e-03  250 tokens/s  elapsed 0:00:08  eta 0:00:12",
        "train: step 8/10  loss 0.1250  lr 1.00e-03  250 tokens/s  elapsed 0:00:16  eta 0:00:04",
        "train: step 10/10  loss 0.1000  lr 1.00e-03  250 tokens/s  elapsed 0:00:20  eta 0:00:00",
    ]


def test_off_a_terminal_slow_steps_print_every_interval_and_eta_counts_from_the_resume(capsys):
    clock = FakeClock()
    bar = ProgressBar(100, 40, True, every=1000, interval_s=30.0, clock=clock)   # resumed at step 40
    for step in range(41, 45):
        clock.now += 20.0                                     # lines at 40 s (step 42) and 80 s (step 44)
        bar.update(step, 2.0, 1e-4)
    assert capsys.readouterr().err.splitlines() == [
        "train: step 42/100  loss 2.0000  lr 1.00e-04  elapsed 0:00:40  eta 0:19:20",   # 58 steps × 20 s
        "train: step 44/100  loss 2.0000  lr 1.00e-04  elapsed 0:01:20  eta 0:18:40",
    ]


def test_sampling_progress_off_a_terminal(capsys):
    clock = FakeClock()
    bar = ProgressBar(8, 0, True, label="sample", every=4, clock=clock)
    for done in (2, 4, 6, 8):
        clock.now += 1.0
        bar.advance_to(done, f"{done * 2} completions")
    assert capsys.readouterr().err.splitlines() == [
        "sample: 4/8  8 completions  elapsed 0:00:02  eta 0:00:02",
        "sample: 8/8  16 completions  elapsed 0:00:04  eta 0:00:00",
    ]


def test_disabled_prints_nothing(capsys):
    bar = ProgressBar(4, 0, False, every=1)
    for step in range(1, 5):
        bar.update(step, 1.0, 1e-3)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_only_the_bar_is_drawn(capsys):
    screen, clock = FakeTerminal(), FakeClock()
    bar = ProgressBar(10, 0, True, stream=screen, every=1, interval_s=0.0, clock=clock)
    for step in range(1, 11):
        clock.now += 60.0
        bar.update(step, 0.5, 1e-3, tokens_per_s=100.0)
    bar.close()
    drawn = screen.getvalue()
    assert "10/10" in drawn and "loss 0.5000" in drawn and "━" in drawn      # the rich bar, finished
    assert "step " not in drawn and "elapsed" not in drawn and "tokens/s" not in drawn   # no plain line
    assert capsys.readouterr() == ("", "")


def test_resume_drops_later_records_and_a_line_torn_by_a_kill(tmp_path):
    rows = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25}, {"step": 3, "loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    MetricsLogger(tmp_path, tensorboard=False, resume_step=2).close()
    assert read_metrics(tmp_path) == rows[:2]
