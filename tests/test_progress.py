"""What a run shows: the plain progress line (no terminal), the live bar (a terminal), and
Ray's native stderr kept off the terminal."""

from __future__ import annotations

import io
import os

from fer_batch.progress import NativeStderrTo, Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_without_a_terminal_one_plain_line_per_interval():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(1000, stream=stream, interval=30.0, clock=clock)
    clock.now += 10
    progress.update(100, 120, 2)
    assert stream.getvalue() == ""  # not yet 30 s
    clock.now += 20
    progress.update(100, 80, 0)
    (line,) = stream.getvalue().splitlines()
    assert line == ("[fer-batch] 200/1000 files (20%), 6.7 files/s, 200 faces, 2 errors, "
                    "ETA 2:00")
    clock.now += 5
    progress.update(10, 0, 1)
    assert len(stream.getvalue().splitlines()) == 1
    progress.close()


def test_disabled_progress_prints_nothing_and_still_counts():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(10, enabled=False, stream=stream, interval=0.0, clock=clock)
    clock.now += 1
    progress.update(4, 3, 1)
    assert stream.getvalue() == "" and (progress.files, progress.faces, progress.errors) == (
        4, 3, 1)
    assert "ETA ?" in Progress(10, enabled=False, clock=clock).line()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_a_live_bar_with_the_counts():
    stream = Terminal()
    progress = Progress(8, stream=stream)
    progress.update(8, 5, 1)
    progress.close()
    drawn = stream.getvalue()
    assert "8/8" in drawn and "100%" in drawn and "5 faces" in drawn and "1 errors" in drawn


def test_native_stderr_goes_to_the_log_and_python_stderr_does_not(tmp_path, capfd):
    log = tmp_path / "driver.err"
    with NativeStderrTo(str(log)):
        os.write(2, b"E core_worker.cc: something Ray prints\n")
    os.write(2, b"after\n")
    assert log.read_text() == "E core_worker.cc: something Ray prints\n"
    assert "after" in capfd.readouterr().err


def test_in_a_real_process_python_stderr_stays_on_the_terminal(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "driver.err"
    code = ("import os, sys\n"
            "from fer_batch.progress import NativeStderrTo\n"
            f"with NativeStderrTo({str(log)!r}):\n"
            "    os.write(2, b'native line\\n')\n"
            "    print('fer-batch line', file=sys.stderr)\n"
            "print('after', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stderr.splitlines() == ["fer-batch line", "after"]
    assert log.read_text() == "native line\n"
