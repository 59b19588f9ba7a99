"""The group inspector: a GRPO step's prompts, each with its G completions and their rewards."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group as Stack
from rich.panel import Panel
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from sf_mlx.records import Problem, Rollout
from sf_mlx.rundir import RunDir
from tui.base import RunScreen
from tui.load import Group, load_groups, load_problems, next_zero_std, rollout_files, worst_group
from tui.render import answer_check, highlight

Files = dict[str, list[tuple[int, Path]]]


def completion_title(r: Rollout) -> Text:
    out = Text.assemble(
        (f"#{r.index} ", "bold"),
        ("reward ", "dim"),
        (f"{r.reward:.2f}", "bold green" if r.reward > 0 else "bold red"),
        ("  adv ", "dim"),
        f"{r.advantage:+.2f}",
        ("  answer ", "dim"),
        repr(r.extracted) if r.extracted is not None else "none",
        ("  tokens ", "dim"),
        str(r.num_tokens),
    )
    if r.truncated:
        out.append("  TRUNCATED", "bold yellow")
    return out


class GroupScreen(RunScreen):
    """`[`/`]` step, `a` arm, `w` worst group, `z` next zero-std group."""

    VIEW = "groups"
    POLL_SECONDS = 2.0
    BINDINGS = [
        Binding("left_square_bracket", "step(-1)", "Prev step", key_display="["),
        Binding("right_square_bracket", "step(1)", "Next step", key_display="]"),
        Binding("a", "arm", "Next arm"),
        Binding("w", "worst", "Worst group", tooltip="jump to the lowest mean reward"),
        Binding("z", "zero_std", "Next zero-std", tooltip="next group whose rewards are all equal"),
    ]

    def __init__(self, run: RunDir) -> None:
        super().__init__(run)
        self.files: Files = {}
        self.arm: str | None = None
        self.step: int | None = None
        self.groups: list[Group] = []
        self._target_group = 0
        self._running_arm: str | None = None
        self.problems: dict[str, Problem] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("looking for grpo/<arm>/rollouts/step_N.jsonl ...", id="groups-bar")
        with Horizontal(id="groups-main"):
            table = DataTable(id="groups", cursor_type="row", zebra_stripes=True)
            for name in ("group", "problem", "mean", "std", "len", "trunc"):
                table.add_column(name, key=name)
            yield table
            with VerticalScroll(id="completions"):
                yield Static(id="completion-text")
        yield Footer(compact=True, show_command_palette=False)  # ^p: in the help

    def on_mount(self) -> None:
        self.start_polling()

    def fetch(self) -> tuple[Files, str | None, dict[str, Problem] | None]:
        status = self.run.read_status() or {}
        stage = str(status.get("stage") or "")
        arm = stage.removeprefix("grpo/") if "grpo/" in stage else None
        problems = None if self.problems else load_problems(self.run)  # written once, first
        return rollout_files(self.run), arm, problems

    def apply(self, result: tuple[Files, str | None, dict[str, Problem] | None]) -> None:
        files, self._running_arm, problems = result
        if problems:
            self.problems = problems
        first = not self.files
        self.files = files
        if first and files:
            self.goto(self.arm, self.step, self._target_group)
        else:
            self._update_bar()

    def goto(self, arm: str | None = None, step: int | None = None, group: int = 0) -> None:
        """Show group number `group` of `step` of `arm` (defaults: the arm training now or the
        last one with rollouts, its last step, the first group)."""
        self.arm, self.step, self._target_group = arm, step, group
        if not self.files:
            return  # the first poll calls goto again
        if self.arm not in self.files:  # the arm training now, else the last one
            arms = list(self.files)
            self.arm = self._running_arm if self._running_arm in arms else arms[-1]
        steps = [s for s, _ in self.files[self.arm]]
        if self.step not in steps:
            self.step = steps[-1]
        path = dict(self.files[self.arm])[self.step]
        self.load("groups", lambda: load_groups(path), self._show_groups)
        self._update_bar()

    def _show_groups(self, groups: list[Group]) -> None:
        self.groups = groups
        table = self.query_one("#groups", DataTable)
        table.clear()
        for g in groups:
            mean = Text(f"{g.mean_reward:.2f}", "green" if g.mean_reward > 0 else "red")
            std = Text(f"{g.reward_std:.2f}", "bold yellow" if g.zero_std else "")
            trunc = str(g.truncated) if g.truncated else ""
            table.add_row(str(g.group), g.problem_id, mean, std, f"{g.mean_tokens:.0f}", trunc)
        self._update_bar()
        if groups:
            row = next((i for i, g in enumerate(groups) if g.group == self._target_group), 0)
            table.move_cursor(row=row)
            self.show_group(table.cursor_row)

    def _update_bar(self) -> None:
        bar = self.query_one("#groups-bar", Static)
        if not self.files:
            bar.update("no GRPO rollouts yet (grpo/<arm>/rollouts/step_N.jsonl)")
            return
        steps = [s for s, _ in self.files.get(self.arm or "", [])]
        text = Text.assemble(("arm ", "dim"), (str(self.arm), "bold"), ("  step ", "dim"))
        text.append(f"{self.step}", "bold")
        text.append(f" ({steps[0]}..{steps[-1]})" if steps else "", "dim")
        if self.groups:
            zero = sum(g.zero_std for g in self.groups)
            mean = sum(g.mean_reward for g in self.groups) / len(self.groups)
            text.append(f"  {len(self.groups)} groups, {zero} zero-std, mean reward {mean:.2f}")
        text.append(f"  arms: {', '.join(self.files)}", "dim")
        bar.update(text)

    def show_group(self, index: int) -> None:
        """Stack the group's completions on the right."""
        if not 0 <= index < len(self.groups):
            return
        g = self.groups[index]
        box = self.query_one("#completions", VerticalScroll)
        box.border_title = f"group {g.group} · {g.problem_id}"
        problem = self.problems.get(g.problem_id)
        check = answer_check(problem)
        if problem is None:
            head = Text(f"{g.problem_id}: not in problems.jsonl (verdicts uncoloured)", "dim")
        else:
            head = Text.assemble(("question ", "dim"), (problem.question, "italic"))
            if "target" in problem.data:
                head.append(f"\ntarget {problem.data['target']}", "bold")
            head.append("\nverdicts: green when right, red when wrong (checker's grade)", "dim")
        panels = [
            Panel(
                highlight(r.completion, check=check),
                title=completion_title(r),
                title_align="left",
                border_style="green" if r.reward > 0 else "red",
            )
            for r in g.rollouts
        ]
        self.query_one("#completion-text", Static).update(Stack(head, *panels))
        box.scroll_home(animate=False)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "groups":
            self.show_group(event.cursor_row)

    def action_step(self, delta: int) -> None:
        steps = [s for s, _ in self.files.get(self.arm or "", [])]
        if self.step in steps:
            i = max(0, min(len(steps) - 1, steps.index(self.step) + delta))
            self.goto(self.arm, steps[i])

    def action_arm(self) -> None:
        arms = list(self.files)
        if arms:
            i = (arms.index(self.arm) + 1) % len(arms) if self.arm in arms else 0
            self.goto(arms[i], self.step)

    def _jump(self, index: int | None, what: str) -> None:
        if index is None:
            self.notify(f"no {what} at this step", timeout=3)
            return
        self.query_one("#groups", DataTable).move_cursor(row=index)

    def action_worst(self) -> None:
        self._jump(worst_group(self.groups), "groups")

    def action_zero_std(self) -> None:
        table = self.query_one("#groups", DataTable)
        self._jump(next_zero_std(self.groups, table.cursor_row), "zero-std group")
