"""The demo's task runner: tasks run on spawned workers after what they wait for, each with its own
log, and a failure names its task and log and starts nothing that waits on it."""

import math

import pytest

from trilemma.demo.schedule import Task, last_line, run_tasks


def test_tasks_run_after_what_they_wait_for_with_their_own_logs(tmp_path):
    said = []
    results, seconds = run_tasks([Task("root", math.sqrt, (16.0,)), Task("say", print, ("hello\rstep 3/3",), ("root",)),
                                  Task("pow", math.pow, (2.0, 10.0), ("root", "say"))],
                                 tmp_path / "logs", workers=2, say=said.append)
    assert results == {"root": 4.0, "say": None, "pow": 1024.0} and set(seconds) == set(results)
    assert last_line(tmp_path / "logs" / "say.log") == "step 3/3"  # progress bars redraw after a carriage return
    starts = [line.split("start ")[1] for line in said if " start " in line]
    assert starts.index("pow") > starts.index("say") > starts.index("root")


def test_a_failing_task_names_itself_and_its_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"demo task 'bad' failed: ValueError: math domain error.*bad\.log"):
        run_tasks([Task("bad", math.sqrt, (-1.0,)), Task("after", print, ("never",), ("bad",))], tmp_path, say=print)
    assert not (tmp_path / "after.log").exists()
    with pytest.raises(ValueError, match="every 'after' must name a task"):
        run_tasks([Task("a", print, (), ("missing",))], tmp_path)
