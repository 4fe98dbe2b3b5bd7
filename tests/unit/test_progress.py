"""The progress that `dserve bench` and `dserve eval` write to stderr (dserve_ops.progress)."""

import io

from dserve_ops.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_a_line_per_tenth_and_one_at_the_end():
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(100, "bench", stream=out, clock=clock)
    for i in range(100):
        clock.now += 0.5  # a tenth every 5 s: more than a second apart, less than every_s
        progress.update(ok=i % 25 != 0)

    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10
    assert lines[0] == "bench: 10/100 requests (10%), 1 failed, 5.0s"
    assert lines[-1] == "bench: 100/100 requests (100%), 4 failed, 50.0s"


def test_a_burst_gives_one_line_not_one_per_tenth():
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(20, "eval", unit="examples", stream=out, clock=clock)
    clock.now = 30.0
    for _ in range(19):  # a whole batch finishes at once
        progress.update()
    clock.now = 31.5
    progress.update()

    assert out.getvalue().splitlines() == [
        "eval: 1/20 examples (5%), 30.0s",  # the first update after a long wait
        "eval: 20/20 examples (100%), 31.5s",
    ]


def test_lines_at_least_every_few_seconds_when_tenths_are_slow():
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(1000, "bench", stream=out, clock=clock, every_s=5.0)
    for _ in range(30):  # 3% done in 30 s: no tenth crossed, but the log still moves
        clock.now += 1.0
        progress.update()

    assert [line.split(" requests")[0] for line in out.getvalue().splitlines()] == [
        "bench: 5/1000",
        "bench: 10/1000",
        "bench: 15/1000",
        "bench: 20/1000",
        "bench: 25/1000",
        "bench: 30/1000",
    ]


def test_a_terminal_gets_one_bar_redrawn_in_place():
    out, clock = Terminal(), FakeClock()
    progress = Progress(4, "bench", stream=out, clock=clock)
    for _ in range(4):
        clock.now += 0.5
        progress.update()

    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert text.rstrip("\n").rsplit("\r", 1)[1] == f"bench [{'#' * 30}] 4/4 requests (100%), 2.0s"


def test_disabled_writes_nothing():
    out = io.StringIO()
    progress = Progress(3, "bench", stream=out, enabled=False)
    for _ in range(3):
        progress.update()
    assert out.getvalue() == "" and progress.done == 3
