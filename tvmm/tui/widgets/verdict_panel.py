"""The judge's verdict of an attack run: the score, and the attacker's guess laid against the
truth bit by bit (green where it is right, red where it is wrong)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from tvmm.trace.stats import Verdict

_WIDTH = 64  # characters of truth and guess per line


class VerdictPanel(Static):
    """Renders ``verdicts``; hidden when the trace has none."""

    DEFAULT_CSS = "VerdictPanel { height: auto; padding: 0 1; border: round $error; }"

    verdicts: reactive[tuple[Verdict, ...]] = reactive(())

    def watch_verdicts(self, verdicts: tuple[Verdict, ...]) -> None:
        self.display = bool(verdicts)
        self.border_title = "verdict"
        self.update(Group(*(render_verdict(v) for v in verdicts)))


def render_verdict(v: Verdict) -> RenderableType:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("attack", Text(f"{v.attack} @ {v.level}", style="bold"))
    if v.bits_correct is not None:
        facts.add_row("bits correct", f"{v.bits_correct:g} of {'?' if v.n is None else f'{v.n:g}'}")
    if v.leaked_bits is not None:
        facts.add_row("leaked bits", f"{v.leaked_bits:g}")
    facts.add_row("full recovery", _flag(v.full_recovery, bad=True))
    detected = _flag(v.detected, bad=False)
    if v.detected and v.detected_after_exits is not None:
        detected.append(f" after {v.detected_after_exits} exits")
    facts.add_row("detected", detected)
    facts.add_row("integrity violated", _flag(v.integrity_violated, bad=True))
    if not v.truth and not v.guess:
        return facts
    rows = Table.grid(padding=(0, 1))
    rows.add_column(style="dim")
    rows.add_column()
    truth, guess = v.truth or "", v.guess or ""
    for start in range(0, max(len(truth), len(guess)), _WIDTH):
        t, g = truth[start : start + _WIDTH], guess[start : start + _WIDTH]
        rows.add_row("truth", Text(t))
        rows.add_row("guess", _compared(g, t))
    return Group(facts, Text(""), rows)


def _compared(guess: str, truth: str) -> Text:
    text = Text()
    for i, ch in enumerate(guess):
        right = i < len(truth) and truth[i] == ch
        text.append(ch, style="bold green" if right else "bold white on red")
    return text


def _flag(value: bool | None, *, bad: bool) -> Text:
    if value is None:
        return Text("?", style="dim")
    style = "bold red" if value == bad else "bold green"
    return Text("yes" if value else "no", style=style)
