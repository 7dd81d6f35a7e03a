"""Build progress: tty (rich), plain, rawjson or quiet.

The solver calls `expect`, `start`, `output`, `waiting`, `cached`, `done`, `error`,
`cancel` and `note`; renderers decide how it looks. Plain prints one line per event,
RUN output prefixed with the step number and never truncated; rawjson prints one JSON
event per line; quiet prints nothing (the CLI prints only the image ID). The tty view
is BuildKit's: a `[+] Building 6.8s (3/8)` header (FINISHED once over) above one row
per step. Every mode keeps each step's last output lines, so a failed build can show
the failing step's log framed as BuildKit does (`frame`) after the live view is gone.
Everything goes to stderr so stdout carries just the result.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from typing import TextIO

TAIL_LINES = 10     # the failing step's lines BuildKit shows in its frame


class Progress:
    def __init__(self, mode: str = "plain", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "plain"
        self.mode = mode
        self.lock = threading.Lock()
        self.begun = time.monotonic()
        self.expected = 0
        self.finished = False
        self.ended: float | None = None
        self.console = None
        self.live = None
        self.rows: dict[int, dict] = {}
        if mode == "tty":
            from rich.console import Console
            from rich.live import Live

            self.console = Console(file=self.stream, highlight=False)
            self.live = Live(console=self.console, refresh_per_second=8, transient=False,
                             get_renderable=self._render)
            self.live.start()

    # --- the tty view -------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(steps over, steps known): the `(3/8)` of the header."""
        over = sum(1 for r in self.rows.values() if r["state"] in ("done", "cached", "error",
                                                                      "canceled"))
        return over, max(self.expected, len(self.rows))

    def header(self) -> str:
        over, total = self.counts()
        took = (self.ended or time.monotonic()) - self.begun
        return f"[+] Building {took:.1f}s ({over}/{total})" + (" FINISHED" if self.finished else "")

    def _render(self):
        """BuildKit's tty view: the header, then ` => [label] text   1.2s` per step, the
        last lines of running and failed steps' output under them as ` => => # line`."""
        from rich.text import Text

        now = time.monotonic()
        width = max(40, self.console.width if self.console is not None else 80)
        out = Text(no_wrap=True, overflow="crop")
        out.append(self.header() + "\n", style="bold blue" if self.finished else "bold")
        for n in sorted(self.rows):
            r = self.rows[n]
            state = r["state"]
            if state == "waiting":
                timer = "waiting"
            elif state == "cached":
                timer = "0.0s"
            else:
                timer = f"{(r['end'] or now) - r['start']:.1f}s"
            word = {"cached": "CACHED ", "error": "ERROR ", "canceled": "CANCELED ",
                    "waiting": "WAITING "}.get(state, "")
            line = f" => {word}[{r['label']}] {r['text']}"
            room = width - len(timer) - 2
            if len(line) > room:
                line = line[:max(0, room - 3)] + "..."
            style = {"running": "yellow", "waiting": "dim", "done": "blue", "cached": "blue",
                     "error": "red", "canceled": "red"}[state]
            out.append(line.ljust(room) + "  " + timer + "\n", style=style)
            if state in ("running", "error"):
                for t in list(r["tail"])[-6:]:
                    out.append(f" => => # {t.partition(' ')[2]}"[:width] + "\n", style="dim")
        return out

    def close(self, finished: bool = True) -> None:
        """Stop the live view (its last frame stays, with FINISHED in the header)."""
        if self.ended is None:
            self.ended = time.monotonic()
        self.finished = finished
        if self.live is not None:
            self.live.stop()
            self.live = None

    # --- output helpers -----------------------------------------------------

    def _emit(self, text: str, style: str | None = None) -> None:
        with self.lock:
            if self.console is not None:
                self.console.print(text, style=style, markup=False)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def _json(self, **event) -> None:
        event["time"] = time.time()
        with self.lock:
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()

    def _line(self, text: str, style: str | None = None) -> None:
        """A plain-mode line; the tty shows the event in its view instead."""
        if self.live is not None:
            return
        if self.mode == "plain":
            self._emit(text, style)

    # --- events -------------------------------------------------------------

    def expect(self, total: int) -> None:
        """The number of steps the build will show (BuildKit's total of `(n/total)`)."""
        self.expected = max(self.expected, total)

    def start(self, n: int, label: str, text: str) -> None:
        self.rows[n] = {"label": label, "text": text, "state": "running",
                        "start": time.monotonic(), "end": None,
                        "tail": collections.deque(maxlen=TAIL_LINES)}
        if self.mode == "rawjson":
            self._json(event="start", step=n, label=label, name=text)
        self._line(f"#{n} [{label}] {text}")

    def waiting(self, n: int, waiting: bool = True) -> None:
        """The step waits for another stage (FROM a stage, COPY --from): not running yet;
        its timer starts when it does."""
        r = self.rows.get(n)
        if r is None or r["state"] not in ("running", "waiting"):
            return
        r["state"] = "waiting" if waiting else "running"
        if not waiting:
            r["start"] = time.monotonic()
        if self.mode == "rawjson":
            self._json(event="waiting" if waiting else "resumed", step=n)

    def output(self, n: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\n")
        r = self.rows.get(n)
        took = time.monotonic() - r["start"] if r else 0.0
        if r is not None:
            r["tail"].append(f"{took:.3f} {text}")
        if self.mode == "rawjson":
            self._json(event="output", step=n, data=text)
        self._line(f"#{n} {took:.3f} {text}")

    def _end(self, n: int, state: str) -> float:
        r = self.rows.get(n)
        if r is None:
            return 0.0
        if r["state"] in ("error", "canceled"):
            return r["end"] - r["start"]
        r["state"], r["end"] = state, time.monotonic()
        return r["end"] - r["start"]

    def cached(self, n: int) -> None:
        self._end(n, "cached")
        if self.mode == "rawjson":
            self._json(event="cached", step=n)
        self._line(f"#{n} CACHED")

    def done(self, n: int) -> None:
        took = self._end(n, "done")
        if self.mode == "rawjson":
            self._json(event="done", step=n, seconds=round(took, 6))
        self._line(f"#{n} DONE {took:.1f}s")

    def error(self, n: int, message: str) -> None:
        self._end(n, "error")
        if self.mode == "rawjson":
            self._json(event="error", step=n, message=message)
        self._line(f"#{n} ERROR: {message}")

    def cancel(self, n: int) -> None:
        """The build was interrupted while the step ran: BuildKit's CANCELED, never the
        exit code its killed process had."""
        self._end(n, "canceled")
        if self.mode == "rawjson":
            self._json(event="canceled", step=n)
        self._line(f"#{n} CANCELED")

    def note(self, text: str) -> None:
        if self.mode == "rawjson":
            self._json(event="note", message=text)
        elif self.mode in ("plain", "tty"):
            self._emit(text)

    # --- after a failure ----------------------------------------------------

    def frame(self, n: int) -> str:
        """BuildKit's box around a failed step's last output lines:
        `------` / ` > [label] text:` / `0.123 line` ... / `------`."""
        r = self.rows.get(n)
        if r is None:
            return ""
        return "\n".join(["------", f" > [{r['label']}] {r['text']}:", *r["tail"], "------"]) + "\n"


def source_excerpt(filename: str, text: str, first: int, last: int) -> str:
    """BuildKit's Dockerfile excerpt: `Dockerfile:12`, a rule, the failing lines marked
    ` >>> `, context around them (two lines each side for one line, one for several;
    the file is split on newlines as BuildKit does, so a final newline gives an empty
    last line), a rule."""
    lines = text.split("\n")
    if not 1 <= first <= len(lines):
        return ""
    last = min(max(last, first), len(lines))
    start, end = first, last
    pad = 4 if first == last else 2
    p = 0
    while p < pad:
        if start > 1:
            start -= 1
            p += 1
        if end != len(lines):
            end += 1
            p += 1
        p += 1
    out = [f"{filename}:{first}", "-" * 20]
    for i in range(start, end + 1):
        mark = ">>>" if first <= i <= last else "   "
        out.append(f" {i:3d} | {mark} {lines[i - 1]}")
    out.append("-" * 20)
    return "\n".join(out) + "\n"
