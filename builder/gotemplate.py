"""The part of Go's text/template that docker's `--format` and `inspect -f` users write.

No maintained Python library implements Go's template language (Jinja2 and friends
have another syntax, and the few `gotemplate` ports on PyPI are abandoned), so this is
one small module: a lexer, a parser into a node tree and an evaluator over plain Python
values (dict = Go map/struct, list = slice, str, int, float, bool, None = nil).

Covered: text and `{{- -}}` trimming, comments, pipelines with `|`, field chains on
`.`, `$`, variables and parenthesized pipelines, string/raw/char/number/bool/nil
literals, `$x := …`, `$x = …`, if / else if / else, with / else with, range (lists,
maps in key order, integers; `$i, $v :=`; else; break/continue), Go's builtins (and,
or, not, len, index, slice, eq, ne, lt, le, gt, ge, print, printf, println, html,
urlquery, js) and docker's (json, join, split, upper, lower, title, pad, truncate).
Not covered: define/template/block, method calls with arguments, `call`.

A template comes from the command line and the data from images (hostile authors):
template size, nesting, evaluation steps and output size are bounded, and every problem
is one `template: :LINE:COL: …` line (a TemplateError), never a traceback.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from layerstore.errors import PybuildError

MAX_TEMPLATE = 64 * 1024       # bytes of template text
MAX_DEPTH = 50                 # nested blocks and parentheses
MAX_OUTPUT = 16 << 20          # characters one execution may write
MAX_STEPS = 1_000_000          # nodes evaluated (range iterations included)
MAX_WIDTH = 4096               # printf/pad field widths


class TemplateError(PybuildError):
    """A template that does not parse or does not execute; the message is Go's shape."""


class Struct(dict):
    """A Go struct: a missing field is "can't evaluate field X in type T" (a map says
    "map has no entry for key"); `json` keeps its field order. `escape_html` mimics
    json.Marshal's \\u003c escaping, as docker's formatter contexts print it."""

    def __init__(self, type_name: str, *args, escape_html: bool = False, **kw) -> None:
        super().__init__(*args, **kw)
        self.type_name = type_name
        self.escape_html = escape_html


class NilList(list):
    """A Go nil slice in a typed struct: prints "[]", ranges over nothing, encodes as null
    (docker's typed inspect prints `{{.Config.Entrypoint}}` of an image without one so)."""


class NilMap(dict):
    """A Go nil map in a typed struct: prints "map[]", encodes as null."""


def _denil(v: Any) -> Any:
    if isinstance(v, (NilList, NilMap)):
        return None
    if isinstance(v, dict):
        return {k: _denil(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_denil(x) for x in v]
    return v


# --- lexer -------------------------------------------------------------------

@dataclass
class Tok:
    kind: str      # text, field, var, ident, str, num, char, bool, nil, dot, pipe, lparen,
    #                rparen, decl, assign, comma, open, close, eof
    val: Any
    pos: int


_SPACE = " \t\r\n"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUM = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|"
                  r"(\d[\d_]*)?\.?\d[\d_]*([eE][+-]?\d+)?)")
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block",
             "break", "continue"}


class _Src:
    def __init__(self, text: str) -> None:
        self.text = text

    def where(self, pos: int) -> str:
        before = self.text[:pos]
        line = before.count("\n") + 1
        nl = before.rfind("\n")
        col = pos if nl < 0 else pos - nl - 1
        return f":{line}:{col}"

    def error(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template: {self.where(pos)}: {msg}")


def _unquote(src: _Src, body: str, pos: int, quote: str) -> str:
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f",
              "v": "\v", "\\": "\\", quote: quote}
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
            continue
        digits = {"x": 2, "u": 4, "U": 8}.get(nxt)
        if digits:
            hexa = body[i + 2:i + 2 + digits]
            if len(hexa) == digits and all(c in "0123456789abcdefABCDEF" for c in hexa):
                code = int(hexa, 16)
                if code <= 0x10FFFF:
                    out.append(chr(code))
                    i += 2 + digits
                    continue
        if nxt and nxt in "01234567" and re.fullmatch(r"[0-7]{3}", body[i + 1:i + 4]):
            out.append(chr(int(body[i + 1:i + 4], 8)))
            i += 4
            continue
        raise src.error(pos, f"invalid syntax in quoted string: {quote}{body}{quote}")
    return "".join(out)


def _lex(src: _Src) -> list[Tok]:
    text = src.text
    toks: list[Tok] = []
    i = 0
    trim_next = False
    while True:
        start = text.find("{{", i)
        chunk = text[i:] if start < 0 else text[i:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        left_trim = start >= 0 and text[start + 2:start + 3] == "-" and \
            text[start + 3:start + 4] in tuple(_SPACE)
        if left_trim:
            chunk = chunk.rstrip(_SPACE)
        if chunk:
            toks.append(Tok("text", chunk, i))
        if start < 0:
            break
        j = start + (4 if left_trim else 2)
        toks.append(Tok("open", None, start))
        if text.startswith("/*", j):
            end = text.find("*/", j + 2)
            if end < 0:
                raise src.error(start, "unclosed comment")
            after = end + 2
            m = re.match(r"[ \t\r\n]+-}}", text[after:])
            if m:
                trim_next, i = True, after + m.end()
            elif text.startswith("}}", after):
                trim_next, i = False, after + 2
            else:
                raise src.error(start, "comment ends before closing delimiter")
            toks.pop()
            continue
        i, trim_next = _lex_action(src, j, toks)
    toks.append(Tok("eof", None, len(text)))
    return toks


def _lex_action(src: _Src, i: int, toks: list[Tok]) -> tuple[int, bool]:
    text = src.text
    parens = 0
    while True:
        if i >= len(text):
            raise src.error(i, "unclosed action")
        ch = text[i]
        if ch in _SPACE:
            m = re.match(r"[ \t\r\n]+-}}", text[i:])
            if m:
                toks.append(Tok("close", None, i))
                return i + m.end(), True
            i += 1
            continue
        if text.startswith("}}", i):
            if parens:
                raise src.error(i, "unclosed left paren")
            toks.append(Tok("close", None, i))
            return i + 2, False
        if ch == "|":
            toks.append(Tok("pipe", None, i))
            i += 1
        elif ch == "(":
            parens += 1
            toks.append(Tok("lparen", None, i))
            i += 1
        elif ch == ")":
            parens -= 1
            if parens < 0:
                raise src.error(i, "unexpected right paren")
            toks.append(Tok("rparen", None, i))
            i += 1
        elif text.startswith(":=", i):
            toks.append(Tok("decl", None, i))
            i += 2
        elif ch == "=":
            toks.append(Tok("assign", None, i))
            i += 1
        elif ch == ",":
            toks.append(Tok("comma", None, i))
            i += 1
        elif ch == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                if text[j] == "\n":
                    break
                j += 2 if text[j] == "\\" else 1
            if j >= len(text) or text[j] != '"':
                raise src.error(i, "unterminated quoted string")
            toks.append(Tok("str", _unquote(src, text[i + 1:j], i, '"'), i))
            i = j + 1
        elif ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise src.error(i, "unterminated raw quoted string")
            toks.append(Tok("str", text[i + 1:j], i))
            i = j + 1
        elif ch == "'":
            m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:])
            if not m:
                raise src.error(i, "unterminated character constant")
            val = _unquote(src, m.group(1), i, "'")
            if len(val) != 1:
                raise src.error(i, f"malformed character constant: {m.group(0)}")
            toks.append(Tok("num", ord(val), i))
            i += m.end()
        elif ch == "." and not (i + 1 < len(text) and text[i + 1].isdigit()):
            m = _IDENT.match(text, i + 1)
            if m:
                toks.append(Tok("field", m.group(0), i))
                i = m.end()
            else:
                toks.append(Tok("dot", None, i))
                i += 1
        elif ch == "$":
            m = _IDENT.match(text, i + 1)
            name = "$" + (m.group(0) if m else "")
            toks.append(Tok("var", name, i))
            i = m.end() if m else i + 1
        elif ch.isdigit() or ch in "+-." and i + 1 < len(text) and text[i + 1] in "0123456789.":
            m = _NUM.match(text, i)
            if not m or not m.group(0):
                raise src.error(i, f"bad number syntax: {text[i:i + 10]!r}")
            toks.append(Tok("num", _number(src, m.group(0), i), i))
            i = m.end()
        elif _IDENT.match(text, i):
            word = _IDENT.match(text, i).group(0)
            kind = {"true": "bool", "false": "bool", "nil": "nil"}.get(word, "ident")
            value = {"bool": word == "true", "nil": None}.get(kind, word)
            toks.append(Tok(kind, value, i))
            i += len(word)
        else:
            raise src.error(i, f"unexpected {ch!r} in command")


def _number(src: _Src, s: str, pos: int) -> int | float:
    t = s.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", t):
            return int(t, 16)
        if re.fullmatch(r"[+-]?0[bB][01]+", t):
            return int(t, 2)
        if re.fullmatch(r"[+-]?0[oO][0-7]+", t):
            return int(t, 8)
        if re.fullmatch(r"[+-]?\d+", t):
            return int(t)
        value = float(t)
        if math.isinf(value):
            raise ValueError
        return value
    except ValueError:
        raise src.error(pos, f"bad number syntax: {s!r}") from None


# --- nodes ---------------------------------------------------------------------

@dataclass
class Node:
    pos: int
    end: int = 0


@dataclass
class Text(Node):
    text: str = ""


@dataclass
class Literal(Node):
    value: Any = None


@dataclass
class Field(Node):       # .A.B on dot
    names: list[str] = field(default_factory=list)


@dataclass
class Var(Node):         # $x.A.B
    name: str = ""
    names: list[str] = field(default_factory=list)


@dataclass
class Dot(Node):
    pass


@dataclass
class Ident(Node):       # a function name
    name: str = ""


@dataclass
class Chain(Node):       # (pipeline).A.B
    node: Node | None = None
    names: list[str] = field(default_factory=list)


@dataclass
class Command(Node):
    args: list[Node] = field(default_factory=list)


@dataclass
class Pipe(Node):
    decl: list[str] = field(default_factory=list)
    assign: bool = False
    cmds: list[Command] = field(default_factory=list)


@dataclass
class Action(Node):
    pipe: Pipe | None = None


@dataclass
class Block(Node):       # if / with / range
    kind: str = ""
    pipe: Pipe | None = None
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


@dataclass
class Jump(Node):        # break / continue
    kind: str = ""


# --- parser --------------------------------------------------------------------

class _Parser:
    def __init__(self, src: _Src, toks: list[Tok], funcs: dict) -> None:
        self.src, self.toks, self.i, self.funcs = src, toks, 0, funcs
        self.vars: list[str] = ["$"]
        self.depth = 0
        self.range_depth = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def err(self, tok: Tok, msg: str) -> TemplateError:
        return self.src.error(tok.pos, msg)

    def expect(self, kind: str, context: str) -> Tok:
        t = self.next()
        if t.kind != kind:
            raise self.err(t, f"unexpected {self.describe(t)} in {context}")
        return t

    def describe(self, t: Tok) -> str:
        if t.kind == "eof":
            return "EOF"
        if t.kind == "close":
            return '"}}"'
        if t.kind in ("field", "ident", "var"):
            return f"<{t.val if t.kind != 'field' else '.' + t.val}>"
        if t.kind == "str":
            return json.dumps(t.val)
        return {"pipe": '"|"', "lparen": '"("', "rparen": '")"', "decl": '":="',
                "assign": '"="', "comma": '","', "dot": "<.>", "open": '"{{"',
                "text": "text"}.get(t.kind, repr(t.val))

    def nest(self, tok: Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.err(tok, f"nesting deeper than {MAX_DEPTH}")

    def parse(self) -> list[Node]:
        body, stop = self.items()
        if stop is not None:
            raise self.err(stop, f"unexpected {{{{{stop.val}}}}}")
        return body

    def items(self) -> tuple[list[Node], Tok | None]:
        """Nodes up to EOF, or up to an {{end}}/{{else …}} (returned, its action open)."""
        out: list[Node] = []
        while True:
            t = self.next()
            if t.kind == "eof":
                return out, None
            if t.kind == "text":
                out.append(Text(t.pos, t.pos + len(t.val), t.val))
                continue
            # t is "open"
            k = self.peek()
            if k.kind == "ident" and k.val in _KEYWORDS:
                self.next()
                if k.val in ("end", "else"):
                    return out, Tok("kw", k.val, k.pos)
                out.append(self.keyword(k))
            else:
                pipe = self.pipeline("command", allow_decl=True)
                close = self.expect("close", "command")
                out.append(Action(t.pos, close.pos + 2, pipe))

    def keyword(self, k: Tok) -> Node:
        if k.val in ("define", "template", "block"):
            raise self.err(k, f"{{{{{k.val}}}}} is not supported here")
        if k.val in ("break", "continue"):
            if not self.range_depth:
                raise self.err(k, f"{{{{{k.val}}}}} outside {{{{range}}}}")
            self.expect("close", k.val)
            return Jump(k.pos, k.pos, k.val)
        return self.block(k)

    def block(self, k: Tok) -> Block:
        self.nest(k)
        mark = len(self.vars)
        pipe = self.pipeline(k.val, allow_decl=True, range_decl=k.val == "range")
        self.expect("close", k.val)
        if k.val == "range":
            self.range_depth += 1
        body, stop = self.items()
        if k.val == "range":
            self.range_depth -= 1
        node = Block(k.pos, pipe.end, k.val, pipe, body)
        if stop is None:
            raise self.err(self.toks[self.i - 1], "unexpected EOF")
        if stop.val == "else":
            nxt = self.peek()
            if nxt.kind == "ident" and nxt.val in ("if", "with") and k.val in ("if", "with"):
                # {{else if …}} / {{else with …}}: a nested block sharing our {{end}}
                self.next()
                del self.vars[mark:]
                node.orelse = [self.block(nxt)]
                self.depth -= 1
                return node
            self.expect("close", "else")
            del self.vars[mark:]
            orelse, stop2 = self.items()
            if stop2 is None or stop2.val != "end":
                where = stop2 or self.toks[self.i - 1]
                raise self.err(where, "expected end; found " +
                               ("EOF" if stop2 is None else "{{else}}"))
            node.orelse = orelse
        self.expect("close", "end")
        del self.vars[mark:]
        self.depth -= 1
        return node

    def pipeline(self, context: str, allow_decl: bool = False, range_decl: bool = False) -> Pipe:
        start = self.peek()
        pipe = Pipe(start.pos)
        if allow_decl and start.kind == "var":
            # look ahead for `$x :=`, `$x =` or `$k, $v :=`
            j = self.i
            names = [self.toks[j].val]
            j += 1
            if range_decl and self.toks[j].kind == "comma" and self.toks[j + 1].kind == "var":
                names.append(self.toks[j + 1].val)
                j += 2
            if self.toks[j].kind in ("decl", "assign"):
                assign = self.toks[j].kind == "assign"
                if assign:
                    for n in names:
                        if n not in self.vars:
                            raise self.err(self.toks[self.i], f'undefined variable "{n}"')
                else:
                    self.vars.extend(names)
                pipe.decl, pipe.assign = names, assign
                self.i = j + 1
        while True:
            cmd = self.command(context)
            pipe.cmds.append(cmd)
            pipe.end = cmd.end
            t = self.peek()
            if t.kind == "pipe":
                self.next()
                continue
            break
        if not pipe.cmds or not pipe.cmds[0].args:
            raise self.err(self.peek(), f"missing value for {context}")
        return pipe

    def command(self, context: str) -> Command:
        first = self.peek()
        cmd = Command(first.pos)
        while True:
            t = self.peek()
            if t.kind in ("close", "pipe", "rparen", "eof"):
                break
            cmd.args.append(self.operand(context))
        if not cmd.args:
            raise self.err(first, f"missing value for {context}" if first.kind != "pipe"
                           else f"unexpected {self.describe(first)} in {context}")
        cmd.end = self.end_of_last()
        return cmd

    def operand(self, context: str) -> Node:
        t = self.next()
        if t.kind == "field":
            names = [t.val] + self.field_chain()
            return Field(t.pos, self.end_of_last(), names)
        if t.kind == "dot":
            return Dot(t.pos, t.pos + 1)
        if t.kind == "var":
            if t.val not in self.vars:
                raise self.err(t, f'undefined variable "{t.val}"')
            names = self.field_chain()
            return Var(t.pos, self.end_of_last(), t.val, names)
        if t.kind == "ident":
            if t.val in _KEYWORDS:
                raise self.err(t, f"unexpected <{t.val}> in {context}")
            if t.val not in self.funcs:
                raise self.err(t, f'function "{t.val}" not defined')
            return Ident(t.pos, t.pos + len(t.val), t.val)
        if t.kind in ("str", "num", "bool", "nil"):
            node: Node = Literal(t.pos, t.pos + 1, t.val)
            if self.peek().kind == "field" and t.kind != "nil":
                raise self.err(self.peek(), f"unexpected . after term {self.describe(t)}")
            return node
        if t.kind == "lparen":
            self.nest(t)
            pipe = self.pipeline("parenthesized pipeline")
            self.expect("rparen", "parenthesized pipeline")
            self.depth -= 1
            names = self.field_chain()
            return Chain(t.pos, self.end_of_last(), pipe, names)
        raise self.err(t, f"unexpected {self.describe(t)} in {context}")

    def field_chain(self) -> list[str]:
        names = []
        while self.peek().kind == "field" and self.peek().pos == self.toks[self.i - 1].pos + \
                self._len(self.toks[self.i - 1]):
            names.append(self.next().val)
        return names

    def end_of_last(self) -> int:
        t = self.toks[self.i - 1]
        n = self._len(t)
        if n == 10 ** 9:   # literals: up to the next token
            n = max(1, self.toks[self.i].pos - t.pos)
            return t.pos + len(self.src.text[t.pos:t.pos + n].rstrip())
        return t.pos + n

    def _len(self, t: Tok) -> int:
        if t.kind == "field":
            return len(t.val) + 1
        if t.kind == "var":
            return len(t.val)
        if t.kind == "rparen":
            return 1
        return 10 ** 9


# --- values ----------------------------------------------------------------------

def go_type(v: Any) -> str:
    if isinstance(v, Struct):
        return v.type_name
    if v is None:
        return "interface {}"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return type(v).__name__


def go_str(v: Any) -> str:
    """fmt.Sprint's rendering of a value (%v)."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e21:
            return str(int(v))
        return repr(v)
    if isinstance(v, str):
        return v
    if isinstance(v, Struct):
        return "{" + " ".join(go_str(x) for x in v.values()) + "}"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in _sorted_keys(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    return str(v)


def _sorted_keys(d: dict) -> list:
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=str)


def truth(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float, str, list, tuple, dict)):
        return bool(v)
    return True


def to_json(v: Any) -> str:
    escape = isinstance(v, Struct) and v.escape_html
    keep_order = isinstance(v, Struct)
    v = _denil(v)
    text = json.dumps(v, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=not keep_order,
                      default=str)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if escape:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _FuncError(Exception):
    """Raised by a template function; becomes `error calling NAME: …`."""


def _need_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise _FuncError(f"{what}: expected an integer; found {go_str(v)}")
    return int(v)


def _index(item: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(item, (list, tuple, str)):
            i = _need_int(k, "cannot index slice/array with type " + go_type(k))
            if not 0 <= i < len(item):
                raise _FuncError(f"index out of range: {i}")
            item = item[i]
        elif isinstance(item, dict):
            item = item.get(k if not isinstance(k, int) or isinstance(k, bool) else str(k))
        elif item is None:
            raise _FuncError("index of untyped nil")
        else:
            raise _FuncError(f"can't index item of type {go_type(item)}")
    return item


def _slice(item: Any, *idx: Any) -> Any:
    if not isinstance(item, (list, tuple, str)):
        raise _FuncError(f"can't slice item of type {go_type(item)}")
    if len(idx) > 3 or (len(idx) == 3 and isinstance(item, str)):
        raise _FuncError("too many slice indexes")
    n = [_need_int(i, "slice index") for i in idx]
    lo = n[0] if n else 0
    hi = n[1] if len(n) > 1 else len(item)
    if not 0 <= lo <= hi <= len(item):
        raise _FuncError(f"index out of range: {lo}:{hi}")
    return item[lo:hi]


def _length(v: Any) -> int:
    if isinstance(v, (str, list, tuple, dict)):
        return len(v)
    raise _FuncError(f"len of type {go_type(v)}")


def _cmp_args(a: Any, b: Any) -> tuple[Any, Any]:
    num = (int, float)
    if isinstance(a, bool) != isinstance(b, bool) or \
            (isinstance(a, num) != isinstance(b, num)) or \
            (isinstance(a, str) != isinstance(b, str)):
        if a is None or b is None:
            return a, b
        raise _FuncError("incompatible types for comparison")
    return a, b


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise _FuncError("missing argument for comparison")
    for b in bs:
        x, y = _cmp_args(a, b)
        if x == y:
            return True
    return False


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        x, y = _cmp_args(a, b)
        if not isinstance(x, (int, float, str)) or isinstance(x, bool):
            raise _FuncError(f"invalid type for comparison")
        return op(x, y)
    return compare


def _sprint(args: tuple, spaces: bool = False) -> str:
    out = []
    for i, a in enumerate(args):
        if i and (spaces or not (isinstance(a, str) or isinstance(args[i - 1], str))):
            out.append(" ")
        out.append(go_str(a))
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise _FuncError(f"wrong type for value; expected string; got {go_type(fmt)}")
    out, argi, pos = [], 0, 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[argi]
        argi += 1
        w = int(width) if width else 0
        p = int(prec) if prec else None
        if w > MAX_WIDTH or (p or 0) > MAX_WIDTH:
            raise _FuncError(f"printf width above {MAX_WIDTH}")
        if verb in "dxXob" and isinstance(a, int) and not isinstance(a, bool):
            s = format(a, {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb])
        elif verb in "feg" and isinstance(a, (int, float)) and not isinstance(a, bool):
            s = format(float(a), f".{6 if p is None else p}{verb}") if verb != "g" else go_str(a)
        elif verb == "q":
            s = json.dumps(go_str(a), ensure_ascii=False)
        elif verb == "t" and isinstance(a, bool):
            s = go_str(a)
        elif verb in "sv":
            s = go_str(a)
            if verb == "s" and p is not None:
                s = s[:p]
        else:
            s = f"%!{verb}({go_type(a)}={go_str(a)})"
        if len(s) < w:
            s = s.ljust(w) if "-" in flags else \
                (s.rjust(w, "0") if "0" in flags and verb in "dxXobfeg" else s.rjust(w))
        out.append(s)
    out.append(fmt[pos:])
    if argi < len(args):
        out.append("%!(EXTRA " + ", ".join(f"{go_type(a)}={go_str(a)}" for a in args[argi:]) + ")")
    return "".join(out)


def _join(items: Any, sep: Any) -> str:
    if not isinstance(items, (list, tuple)) or not isinstance(sep, str):
        raise _FuncError(f"wrong type for value; expected []string; got {go_type(items)}")
    return sep.join(go_str(x) for x in items)


def _split(s: Any, sep: Any) -> list[str]:
    if not isinstance(s, str) or not isinstance(sep, str):
        raise _FuncError("wrong type for value; expected string")
    if sep == "":
        return list(s)
    return s.split(sep)


def _title(s: Any) -> str:
    return re.sub(r"(^|[^\w'])(\w)", lambda m: m.group(1) + m.group(2).upper(), _need_str(s))


def _need_str(s: Any) -> str:
    if not isinstance(s, str):
        raise _FuncError(f"wrong type for value; expected string; got {go_type(s)}")
    return s


def _pad(s: Any, prefix: Any, suffix: Any) -> str:
    a, b = _need_int(prefix, "pad"), _need_int(suffix, "pad")
    if not (0 <= a <= MAX_WIDTH and 0 <= b <= MAX_WIDTH):
        raise _FuncError(f"pad width outside 0..{MAX_WIDTH}")
    return " " * a + go_str(s) + " " * b


def _truncate(s: Any, n: Any) -> str:
    text, k = _need_str(s), _need_int(n, "truncate")
    return text[:k] if 0 <= k < len(text) else text


def _html(*args: Any) -> str:
    import html
    return html.escape(_sprint(args), quote=True).replace("&#x27;", "&#39;")


def _urlquery(*args: Any) -> str:
    from urllib.parse import quote_plus
    return quote_plus(_sprint(args))


def _js(*args: Any) -> str:
    s = _sprint(args)
    table = {"\\": "\\\\", "'": "\\'", '"': "\\\"", "<": "\\u003C", ">": "\\u003E",
             "&": "\\u0026", "=": "\\u003D", "\n": "\\u000A", "\r": "\\u000D", "\t": "\\u0009"}
    return "".join(table.get(c, c) for c in s)


FUNCS: dict[str, Callable[..., Any]] = {
    "len": _length, "index": _index, "slice": _slice, "not": lambda a: not truth(a),
    "eq": _eq, "ne": lambda a, b: not _eq(a, b),
    "lt": _ordered(lambda a, b: a < b), "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b), "ge": _ordered(lambda a, b: a >= b),
    "print": lambda *a: _sprint(a), "println": lambda *a: _sprint(a, True) + "\n",
    "printf": _printf, "html": _html, "urlquery": _urlquery, "js": _js,
    # docker's additions (cli/templates)
    "json": to_json, "join": _join, "split": _split, "title": _title,
    "lower": lambda s: _need_str(s).lower(), "upper": lambda s: _need_str(s).upper(),
    "pad": _pad, "truncate": _truncate,
    "and": None, "or": None,          # short-circuit: evaluated by the executor
}

_ARITY = {"len": 1, "not": 1, "ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2, "json": 1,
          "join": 2, "split": 2, "title": 1, "lower": 1, "upper": 1, "pad": 3,
          "truncate": 2}
_MIN_ARGS = {"index": 1, "slice": 1, "printf": 1, "eq": 1, "and": 1, "or": 1}


# --- executor ------------------------------------------------------------------

class _MissingKey:
    pass


MISSING = _MissingKey()


class Template:
    """A parsed template. `missing_key`: "error" (docker inspect's raw maps: a missing map
    key is an error) or "default" (prints "<no value>", Go's default)."""

    def __init__(self, text: str, funcs: dict[str, Callable] | None = None,
                 missing_key: str = "error") -> None:
        if len(text.encode(errors="replace")) > MAX_TEMPLATE:
            raise TemplateError(f"template: longer than {MAX_TEMPLATE} bytes")
        self.funcs = dict(FUNCS)
        if funcs:
            self.funcs.update(funcs)
        self.src = _Src(text)
        self.missing_key = missing_key
        self.nodes = _Parser(self.src, _lex(self.src), self.funcs).parse()

    def execute(self, data: Any, max_output: int = MAX_OUTPUT) -> str:
        ex = _Exec(self, data, max_output)
        try:
            ex.walk_list(self.nodes, data)
        except RecursionError:
            raise TemplateError("template: value nested too deeply") from None
        return "".join(ex.out)


class _Exec:
    def __init__(self, tmpl: Template, data: Any, max_output: int) -> None:
        self.t = tmpl
        self.vars: list[tuple[str, Any]] = [("$", data)]
        self.out: list[str] = []
        self.size = 0
        self.max_output = max_output
        self.steps = 0

    def error(self, node: Node, msg: str) -> TemplateError:
        ctx = self.t.src.text[node.pos:max(node.end, node.pos + 1)].strip()
        if len(ctx) > 20:
            ctx = ctx[:20] + "..."
        return TemplateError(f'template: {self.t.src.where(node.pos)}: executing "" at '
                             f"<{ctx}>: {msg}")

    def step(self, node: Node) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.error(node, f"more than {MAX_STEPS} evaluation steps")

    def write(self, node: Node, s: str) -> None:
        self.size += len(s)
        if self.size > self.max_output:
            raise self.error(node, f"output larger than {self.max_output} bytes")
        self.out.append(s)

    def walk_list(self, nodes: list[Node], dot: Any) -> None:
        for n in nodes:
            self.walk(n, dot)

    def walk(self, n: Node, dot: Any) -> None:
        self.step(n)
        if isinstance(n, Text):
            self.write(n, n.text)
        elif isinstance(n, Action):
            val = self.pipeline(n.pipe, dot)
            if not n.pipe.decl:
                self.write(n, self.printable(n.pipe, val))
        elif isinstance(n, Block):
            self.block(n, dot)
        elif isinstance(n, Jump):
            raise _Break() if n.kind == "break" else _Continue()

    def printable(self, node: Node, v: Any) -> str:
        if v is MISSING:
            return "<no value>"
        if callable(v):
            raise self.error(node, "can't print a function")
        return go_str(v)

    def block(self, n: Block, dot: Any) -> None:
        mark = len(self.vars)
        val = self.pipeline(n.pipe, dot, declare=n.kind != "range")
        try:
            if n.kind == "range":
                self.range(n, dot, val)
            elif truth(val if val is not MISSING else None):
                self.walk_list(n.body, val if n.kind == "with" else dot)
            else:
                self.walk_list(n.orelse, dot)
        finally:
            del self.vars[mark:]

    def range(self, n: Block, dot: Any, val: Any) -> None:
        items: Iterable[tuple[Any, Any]]
        if val is MISSING or val is None:
            items, count = (), 0
        elif isinstance(val, dict):
            items, count = ((k, val[k]) for k in _sorted_keys(val)), len(val)
        elif isinstance(val, (list, tuple)):
            items, count = enumerate(val), len(val)
        elif isinstance(val, int) and not isinstance(val, bool):
            if val > MAX_STEPS:
                raise self.error(n, f"range over {val}: more than {MAX_STEPS} steps")
            count = max(0, val)
            items = ((i, i) for i in range(count))
        else:
            raise self.error(n.pipe, f"range can't iterate over {go_str(val)}")
        if not count:
            self.walk_list(n.orelse, dot)
            return
        mark = len(self.vars)
        names = n.pipe.decl
        for k, v in items:
            self.step(n)      # an empty body still costs a step per iteration
            del self.vars[mark:]
            if len(names) == 1:
                self.vars.append((names[0], v))
            elif len(names) == 2:
                self.vars.append((names[0], k))
                self.vars.append((names[1], v))
            try:
                self.walk_list(n.body, v)
            except _Break:
                break
            except _Continue:
                continue

    def pipeline(self, pipe: Pipe, dot: Any, declare: bool = True) -> Any:
        val: Any = MISSING
        for i, cmd in enumerate(pipe.cmds):
            val = self.command(cmd, dot, val if i else MISSING, piped=i > 0)
        if pipe.decl and declare:
            if pipe.assign:
                for j in range(len(self.vars) - 1, -1, -1):
                    if self.vars[j][0] == pipe.decl[0]:
                        self.vars[j] = (pipe.decl[0], val)
                        break
            else:
                self.vars.append((pipe.decl[0], val))
        return val

    def command(self, cmd: Command, dot: Any, final: Any, piped: bool) -> Any:
        self.step(cmd)
        first = cmd.args[0]
        if isinstance(first, Ident):
            return self.call(cmd, first.name, cmd.args[1:], dot, final, piped)
        if len(cmd.args) > 1 or piped:
            if isinstance(first, (Field, Var, Chain)) and first.names:
                raise self.error(first, f"{first.names[-1]} has arguments but cannot be invoked "
                                        "as a function")
            raise self.error(first, f"can't give argument to non-function "
                                    f"{self.t.src.text[first.pos:first.end]}")
        return self.arg(first, dot)

    def arg(self, n: Node, dot: Any) -> Any:
        self.step(n)
        if isinstance(n, Literal):
            return n.value
        if isinstance(n, Dot):
            return dot
        if isinstance(n, Field):
            return self.fields(n, dot, n.names)
        if isinstance(n, Var):
            for name, value in reversed(self.vars):
                if name == n.name:
                    return self.fields(n, value, n.names)
            raise self.error(n, f'undefined variable: {n.name}')
        if isinstance(n, Chain):
            return self.fields(n, self.pipeline(n.node, dot), n.names)
        if isinstance(n, Ident):
            return self.call(Command(n.pos, n.end, [n]), n.name, [], dot, MISSING, False)
        raise self.error(n, "unexpected node")

    def fields(self, node: Node, value: Any, names: list[str]) -> Any:
        for name in names:
            if value is MISSING:
                value = None
            if isinstance(value, Struct):
                if name not in value:
                    raise self.error(node, f"can't evaluate field {name} in type "
                                           f"{value.type_name}")
                value = value[name]
            elif isinstance(value, dict):
                if name in value:
                    value = value[name]
                elif self.t.missing_key == "error":
                    raise self.error(node, f'map has no entry for key "{name}"')
                else:
                    value = MISSING
            elif value is None:
                raise self.error(node, f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise self.error(node, f"can't evaluate field {name} in type {go_type(value)}")
        return value

    def call(self, cmd: Command, name: str, args: list[Node], dot: Any, final: Any,
             piped: bool) -> Any:
        fn = self.t.funcs[name]
        nargs = len(args) + (1 if piped else 0)
        want = _ARITY.get(name)
        if (want is not None and nargs != want) or nargs < _MIN_ARGS.get(name, 0):
            need = want if want is not None else f"at least {_MIN_ARGS[name]}"
            raise self.error(cmd, f"wrong number of args for {name}: want {need} got {nargs}")
        if name in ("and", "or"):
            nodes = list(args)
            val: Any = None
            for i in range(nargs):
                val = self.arg(nodes[i], dot) if i < len(nodes) else final
                val = None if val is MISSING else val
                if truth(val) != (name == "and"):
                    return val
            return val
        values = [self.arg(a, dot) for a in args]
        if piped:
            values.append(final)
        values = [None if v is MISSING else v for v in values]
        try:
            return fn(*values)
        except _FuncError as e:
            raise self.error(cmd, f"error calling {name}: {e}") from None
        except TemplateError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise self.error(cmd, f"error calling {name}: {e}") from None


def render(text: str, data: Any, missing_key: str = "error") -> str:
    return Template(text, missing_key=missing_key).execute(data)
