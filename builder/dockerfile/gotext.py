"""Go string semantics the reference parser relies on.

BuildKit is written in Go, and several of its answers depend on Go's idea of
whitespace (`unicode.IsSpace`) and on `strconv.Quote`; these helpers reproduce
them so that dumps and splits agree byte for byte.
"""

from __future__ import annotations

import unicodedata

# unicode.IsSpace: ASCII blanks, NEL, NBSP and the Unicode White_Space set
GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
            "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
GO_SPACE_SET = frozenset(GO_SPACE)

_ESC = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def trim_space(s: str) -> str:
    """strings.TrimSpace."""
    return s.strip(GO_SPACE)


def trim_left_space(s: str) -> str:
    """strings.TrimLeftFunc(s, unicode.IsSpace)."""
    return s.lstrip(GO_SPACE)


def go_quote(s: str) -> str:
    """strconv.Quote for text decoded with errors="surrogateescape"."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch.isascii() and ch.isprintable():
            out.append("\\" + ch if ch in '"\\' else ch)
        elif 0xDC80 <= o <= 0xDCFF:            # an undecodable byte
            out.append("\\x%02x" % (o - 0xDC00))
        elif o in _ESC:
            out.append(_ESC[o])
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        elif unicodedata.category(ch)[0] in "LMNPS":
            out.append(ch)
        else:
            out.append("\\u%04x" % o if o < 0x10000 else "\\U%08x" % o)
    out.append('"')
    return "".join(out)
