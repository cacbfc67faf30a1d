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


def test_training_progress_shows_epoch_step_loss_and_accuracy():
    from fer_batch.progress import TrainProgress

    stream, clock = io.StringIO(), Clock()
    shown = TrainProgress(10, 448, stream=stream, interval=30.0, clock=clock)
    state = {"epoch": 2, "step": 120, "loss": 1.421, "accuracy": 0.4512}
    shown.show(state)
    shown.show(dict(state))  # the same state again: nothing new
    clock.now += 5
    shown.show({**state, "step": 130})  # within the interval
    assert stream.getvalue().splitlines() == [
        "[fer-batch] epoch 3/10, step 120/448, loss 1.4210, accuracy 0.4512"]
    terminal = Terminal()
    bar = TrainProgress(2, 10, stream=terminal)
    bar.show({"epoch": 1, "step": 5, "loss": 0.5, "accuracy": 0.75})
    bar.close()
    assert "epoch 2/2, step 5/10" in terminal.getvalue()


def test_the_first_worker_leaves_its_progress_in_a_file(tmp_path, monkeypatch):
    import json

    from fer_batch.train import loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)
    path = tmp_path / "train-progress.json"
    write = loop.ProgressFile(str(path), epoch=3)
    write(7, 1.25, 0.5)
    assert json.loads(path.read_text()) == {"epoch": 3, "step": 7, "loss": 1.25,
                                            "accuracy": 0.5}
    (tmp_path / "a-file").write_text("")
    broken = loop.ProgressFile(str(tmp_path / "a-file" / "x.json"), epoch=0)
    broken(1, 1.0, 0.0)  # cannot be written: training goes on, progress stops
    assert broken.path is None
