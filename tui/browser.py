"""The trace browser: samples, reflections, silver traces, rollouts and eval generations, with
filters (grade, variant / format / arm / step ...) and search; a trace's segments are coloured by
kind and each links to its source record."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, OptionList, Select, Static
from textual.widgets.option_list import Option

from sf_mlx.records import Reflection, Rollout, Trace
from sf_mlx.rundir import RunDir
from tui.base import RunScreen
from tui.load import COLUMNS, FACETS, KINDS, Item, Page, files_signature
from tui.render import record_body, record_detail, record_header, segment_text

MAX_ROWS = 1000  # rows put in the table; filters and search narrow the rest
SEARCH_DELAY = 0.3  # seconds after the last key before a search runs
GRADES = ("all", "correct", "wrong")
MAX_FACETS = max(len(f) for f in FACETS.values())


class BrowserScreen(RunScreen):
    """`1-5` kind, `f` grade filter, `/` search, `o` open a rollout's group, `r` reload files."""

    VIEW = "traces"
    POLL_SECONDS = 2.0  # how often the record files are checked for new rows
    BINDINGS = [
        Binding("1", "kind('samples')", "Samples", show=False),
        Binding("2", "kind('reflections')", "Reflections", show=False),
        Binding("3", "kind('traces')", "Traces", show=False),
        Binding("4", "kind('rollouts')", "Rollouts", show=False),
        Binding("5", "kind('eval')", "Eval", show=False),
        Binding("f", "grade", "Grade filter", tooltip="cycle all / correct / wrong"),
        Binding(
            "slash", "search", "Search", key_display="/", tooltip="search text and ids (words AND)"
        ),
        Binding("o", "open_group", "Open group", tooltip="open a rollout's group in the inspector"),
        Binding("r", "reload", "Reload", tooltip="read the record files again"),
    ]

    def __init__(self, run: RunDir) -> None:
        super().__init__(run)
        self.kind = "samples"
        self.page: Page | None = None  # what the table shows
        self.shown: list[Item] = []  # the page's items, in table order
        self.matches = 0
        self._search_timer: Timer | None = None
        self._signature: tuple | None = None  # the files the shown kind was read from
        self._signature_kind = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="filters"):
            yield Select(
                [(k, k) for k in KINDS], value="samples", allow_blank=False, id="kind", compact=True
            )
            yield Select(
                [(g, g) for g in GRADES], value="all", allow_blank=False, id="grade", compact=True
            )
            for i in range(MAX_FACETS):
                yield Select([], prompt="all", id=f"facet-{i}", compact=True)
            yield Input(placeholder="search (/)", id="search", compact=True)
        yield Static("loading ...", id="count")
        with Horizontal(id="browser-main"):
            yield DataTable(id="items", cursor_type="row", zebra_stripes=True)
            with Vertical(id="detail"):
                yield Static(id="detail-head")
                yield OptionList(id="segments")
                with VerticalScroll(id="detail-scroll"):
                    yield Static(id="detail-text")
        yield Footer(compact=True, show_command_palette=False)  # ^p: in the help

    def on_mount(self) -> None:
        self.query_one("#segments", OptionList).display = False
        self.query_one("#items", DataTable).focus()
        self.set_kind("samples")
        self.start_polling()

    def fetch(self) -> tuple[str, tuple]:
        """(kind, signature of its files): run in a worker every POLL_SECONDS."""
        kind = self.kind
        return kind, files_signature(self.run, kind)

    def apply(self, data: tuple[str, tuple]) -> None:
        """An empty list fills itself once its files appear; a shown list says when its files
        grew (`r` reloads it: reloading on its own would move the cursor while you read)."""
        kind, signature = data
        if kind != self.kind or self.page is None or self.page.kind != kind:
            return
        if self._signature_kind != kind:
            self._signature, self._signature_kind = signature, kind
        elif signature != self._signature:
            if self.page.total == 0:
                self._signature = signature
                self.set_kind(kind, reload=True)
            else:
                count = self.query_one("#count", Static)
                count.update(
                    Text.assemble(
                        self._count_text(self.page), ("  · new rows: r reloads", "yellow")
                    )
                )

    # --- loading and filtering: the app's record reader (a child process), asked from workers ---

    def _read(self, kind: str, facets: dict[str, str] | None, reload: bool = False):
        """A worker's job: ask the reader for `kind` under the current grade and search."""
        grade, _, query = self.filters()
        reader = self.app.reader  # type: ignore[attr-defined]
        run = str(self.run.path)
        return lambda: reader.page(run, kind, grade, facets, query, MAX_ROWS, reload)

    def set_kind(self, kind: str, reload: bool = False) -> None:
        self.kind = kind
        self._signature, self._signature_kind = files_signature(self.run, kind), kind
        if self.query_one("#kind", Select).value != kind:
            self.query_one("#kind", Select).value = kind
        self.query_one("#count", Static).update(f"loading {kind} ...")
        self.load("items", self._read(kind, None, reload), self._loaded)

    def _loaded(self, page: Page) -> None:
        self.report(page.errors)
        if page.kind != self.kind:
            return
        names = FACETS[self.kind]
        for i in range(MAX_FACETS):
            select = self.query_one(f"#facet-{i}", Select)
            select.display = i < len(names)
            if i < len(names):
                values = page.facets[names[i]]
                select.set_options([(f"{names[i]} {v}", v) for v in values])
                select.prompt = f"{names[i]}: all"
        table = self.query_one("#items", DataTable)
        table.clear(columns=True)
        table.add_columns(*COLUMNS[self.kind])
        self._show(page)
        grade, _, query = self.filters()
        if (grade, query) != (page.grade, page.query):  # changed while the read ran
            self.refilter()

    def filters(self) -> tuple[str, dict[str, str], str]:
        grade = str(self.query_one("#grade", Select).value)
        facets = {}
        for i, name in enumerate(FACETS[self.kind]):
            value = self.query_one(f"#facet-{i}", Select).value
            if value is not Select.NULL:
                facets[name] = str(value)
        return grade, facets, self.query_one("#search", Input).value

    def refilter(self) -> None:
        if self.page is None or self.page.kind != self.kind:
            return  # the facet selects still hold another kind's values; `_loaded` refilters
        _, facets, _ = self.filters()
        self.load("filter", self._read(self.kind, facets), self._show)

    def _show(self, page: Page) -> None:
        if page.kind != self.kind:
            return  # a stale result from the previous kind
        self.page = page
        self.matches = page.matches
        self.shown = page.items
        table = self.query_one("#items", DataTable)
        table.clear()
        for i, it in enumerate(self.shown):
            table.add_row(*(self._cell(it, c) for c in it.cells), key=str(i))
        self.query_one("#count", Static).update(self._count_text(page))
        if self.shown:
            table.move_cursor(row=0)
            self.show_item(0)
        else:
            self.query_one("#detail-head", Static).update("")
            self.query_one("#detail-text", Static).update("")
            self.query_one("#segments", OptionList).display = False

    def _count_text(self, page: Page) -> str:
        more = f" (first {len(page.items)} shown)" if page.matches > len(page.items) else ""
        if page.total == 0:
            return f"no {self.kind} yet · the list fills when the run writes them"
        return f"{page.matches} of {page.total} {self.kind}{more}" + (
            "" if page.matches else " · nothing matches"
        )

    @staticmethod
    def _cell(item: Item, value: str) -> Text | str:
        if value in ("yes", "no") and item.correct is not None:
            return Text(value, "green" if value == "yes" else "red")
        return value

    # --- detail ----------------------------------------------------------------------------------

    def show_item(self, index: int) -> None:
        if not 0 <= index < len(self.shown):
            return
        item = self.shown[index]
        loaded = self.page
        assert loaded is not None  # rows are shown only from a page
        problem = loaded.problems.get(item.problem_id)
        head = self.query_one("#detail-head", Static)
        text = self.query_one("#detail-text", Static)
        segments = self.query_one("#segments", OptionList)
        record = item.record
        if isinstance(record, Trace):
            question = Text.assemble(("question ", "dim"), (record.question, "italic"))
            head.update(Text("\n").join([record_header(record), question]))
            segments.clear_options()
            segments.add_options(
                Option(segment_text(i, s), id=str(i)) for i, s in enumerate(record.segments)
            )
            segments.display = True
            segments.highlighted = 0
            self.show_source(record, 0)
            return
        segments.display = False
        head.update(Text(""))
        body = record_detail(record, problem)
        if isinstance(record, Reflection) and record.sample_id in loaded.sources:
            sample = loaded.sources[record.sample_id]
            body = Text("\n\n").join([body, Text("checks", "dim"), record_detail(sample)])
        text.update(body)
        self.query_one("#detail-scroll", VerticalScroll).scroll_home(animate=False)

    def show_source(self, trace: Trace, index: int) -> None:
        """The record a trace segment was copied from (its sample or reflection)."""
        if not 0 <= index < len(trace.segments):
            return
        seg = trace.segments[index]
        text = self.query_one("#detail-text", Static)
        sources = self.page.sources if self.page is not None else {}
        source = sources.get(seg.source_id or "")
        if seg.source_id is None:
            text.update(Text(f"segment {index}: a glue phrase (no source record)", "dim"))
        elif source is None:
            text.update(Text(f"source {seg.source_id} not found in samples / reflections", "red"))
        else:
            title = Text(f"segment {index} comes from {seg.source_id}:", "dim")
            text.update(Text("\n\n").join([title, record_header(source), record_body(source)]))

    # --- events ----------------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "items":
            self.show_item(event.cursor_row)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        table = self.query_one("#items", DataTable)
        if self.shown and table.cursor_row < len(self.shown):
            record = self.shown[table.cursor_row].record
            if isinstance(record, Trace) and event.option_index is not None:
                self.show_source(record, event.option_index)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "kind" and event.value != self.kind:
            self.set_kind(str(event.value))
        elif event.select.id != "kind":
            self.refilter()
        focused = self.focused
        if focused is not None and (focused is event.select or event.select in focused.ancestors):
            # a choice made in a dropdown hands the keys back to the list (after the select's
            # own refocus, which Textual schedules when the choice is made)
            self.call_after_refresh(self.query_one("#items", DataTable).focus)

    def on_input_changed(self, event: Input.Changed) -> None:
        """Search once typing pauses, not on every key (a big list takes a moment to fill)."""
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY, self._search)

    def _search(self) -> None:
        self._search_timer = None
        self.refilter()

    @property
    def busy(self) -> bool:
        return super().busy or self._search_timer is not None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#items", DataTable).focus()

    def action_kind(self, kind: str) -> None:
        self.set_kind(kind)

    def action_grade(self) -> None:
        select = self.query_one("#grade", Select)
        select.value = GRADES[(GRADES.index(str(select.value)) + 1) % len(GRADES)]

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_runs(self) -> None:
        if self.query_one("#search", Input).has_focus:  # escape leaves the search box first
            self.query_one("#items", DataTable).focus()
        else:
            super().action_runs()

    def action_reload(self) -> None:
        self.set_kind(self.kind, reload=True)

    def action_open_group(self) -> None:
        table = self.query_one("#items", DataTable)
        if not self.shown or table.cursor_row >= len(self.shown):
            return
        record = self.shown[table.cursor_row].record
        if not isinstance(record, Rollout):
            self.notify("o opens the GRPO group of a rollout: pick rollouts (4) first", timeout=4)
            return
        screen = self.app.open_run(self.run, "groups")  # type: ignore[attr-defined]
        screen.goto(record.arm, record.step, record.group)
