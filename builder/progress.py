"""Build progress: tty (rich), plain, rawjson or quiet.

The solver calls `start`, `output`, `cached`, `done`, `error` and `note`;
renderers decide how it looks. Plain prints one line per event, RUN output
prefixed with the step number and never truncated; rawjson prints one JSON
event per line; quiet prints nothing (the CLI prints only the image ID).
Everything goes to stderr so stdout carries just the result.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO


class Progress:
    def __init__(self, mode: str = "plain", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "plain"
        self.mode = mode
        self.lock = threading.Lock()
        self.started: dict[int, float] = {}
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

    def _render(self):
        """The live view: one line per step with its state and timer, RUN output tail."""
        from rich.text import Text

        now = time.monotonic()
        out = Text()
        for n in sorted(self.rows):
            r = self.rows[n]
            took = (r["end"] or now) - r["start"]
            style = {"running": "yellow", "done": "green", "cached": "blue", "error": "red"}[r["state"]]
            state = "CACHED" if r["state"] == "cached" else f"{took:5.1f}s"
            out.append(f"{'=>' if r['state'] == 'running' else ' ✓' if r['state'] != 'error' else ' ✗'}"
                       f" #{n} [{r['label']}] ", style=style)
            out.append(r["text"][:100], style="bold" if r["state"] == "running" else None)
            out.append(f"  {state}\n", style=style)
            if r["state"] in ("running", "error"):
                for line in r["tail"][-5:]:
                    out.append(f"     {line[:150]}\n", style="dim")
        return out

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

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

    def start(self, n: int, label: str, text: str) -> None:
        self.started[n] = time.monotonic()
        if self.live is not None:
            self.rows[n] = {"label": label, "text": text, "state": "running",
                            "start": self.started[n], "end": None, "tail": []}
            return
        if self.mode == "rawjson":
            self._json(event="start", step=n, label=label, name=text)
        elif self.mode in ("plain", "tty"):
            self._emit(f"#{n} [{label}] {text}", "bold" if self.mode == "tty" else None)

    def output(self, n: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\n")
        if self.live is not None:
            self.rows[n]["tail"] = (self.rows[n]["tail"] + [text])[-5:]
            return
        if self.mode == "rawjson":
            self._json(event="output", step=n, data=text)
        elif self.mode in ("plain", "tty"):
            took = time.monotonic() - self.started.get(n, time.monotonic())
            self._emit(f"#{n} {took:.3f} {text}", "dim" if self.mode == "tty" else None)

    def cached(self, n: int) -> None:
        if self.live is not None:
            self.rows[n].update(state="cached", end=time.monotonic())
            return
        if self.mode == "rawjson":
            self._json(event="cached", step=n)
        elif self.mode in ("plain", "tty"):
            self._emit(f"#{n} CACHED", "blue" if self.mode == "tty" else None)

    def done(self, n: int) -> None:
        took = time.monotonic() - self.started.get(n, time.monotonic())
        if self.live is not None:
            self.rows[n].update(state="done", end=time.monotonic())
            return
        if self.mode == "rawjson":
            self._json(event="done", step=n, seconds=round(took, 6))
        elif self.mode in ("plain", "tty"):
            self._emit(f"#{n} DONE {took:.1f}s", "green" if self.mode == "tty" else None)

    def error(self, n: int, message: str) -> None:
        if self.live is not None:
            self.rows[n].update(state="error", end=time.monotonic())
            self.rows[n]["tail"].append(message)
            return
        if self.mode == "rawjson":
            self._json(event="error", step=n, message=message)
        elif self.mode in ("plain", "tty"):
            self._emit(f"#{n} ERROR: {message}", "red" if self.mode == "tty" else None)

    def note(self, text: str) -> None:
        if self.mode == "rawjson":
            self._json(event="note", message=text)
        elif self.mode in ("plain", "tty"):
            self._emit(text)
