# A stdout callback for the tests: every task result and the recap as one
# JSON document (ansible-core ships no JSON callback of its own).
from __future__ import annotations

DOCUMENTATION = """
    name: json_results
    type: stdout
    short_description: task results and stats as one JSON document
    description: Prints {"plays":[{"tasks":[{"task":{"name":...},"hosts":{HOST:RESULT}}]}],"stats":{HOST:{...}}}.
"""

import json
import typing as t

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "json_results"

    def __init__(self) -> None:
        super().__init__()
        self.plays: t.List[t.Dict[str, t.Any]] = []

    def v2_playbook_on_play_start(self, play: t.Any) -> None:
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task(self, task: t.Any) -> t.Dict[str, t.Any]:
        if not self.plays:
            self.plays.append({"play": {"name": ""}, "tasks": []})
        tasks = self.plays[-1]["tasks"]
        if not tasks or tasks[-1]["task"]["id"] != task._uuid:
            tasks.append({"task": {"name": task.get_name(), "id": task._uuid}, "hosts": {}})
        return tasks[-1]

    def v2_playbook_on_task_start(self, task: t.Any, is_conditional: bool) -> None:
        self._task(task)

    def v2_playbook_on_handler_task_start(self, task: t.Any) -> None:
        self._task(task)

    def _record(self, result: t.Any, **flags: t.Any) -> None:
        entry = dict(result._result)
        entry.update(flags)
        self._task(result._task)["hosts"][result._host.get_name()] = entry

    def v2_runner_on_ok(self, result: t.Any, **kw: t.Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False, **kw: t.Any) -> None:
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result: t.Any, **kw: t.Any) -> None:
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result: t.Any, **kw: t.Any) -> None:
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        summary = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str))

    # ad-hoc runs report through the same hooks
    v2_runner_on_async_failed = v2_runner_on_failed
