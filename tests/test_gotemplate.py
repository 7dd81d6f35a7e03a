"""builder.gotemplate: the Go text/template subset docker's --format users write.

Expected outputs are what Go's text/template (with docker's functions) prints for the
same template and data."""

from __future__ import annotations

import json

import pytest

from builder import gotemplate
from builder.gotemplate import Struct, Template, TemplateError, render
from layerstore.errors import PybuildError

DATA = {
    "Id": "sha256:abc",
    "RepoTags": ["busybox:latest", "busybox:1.36"],
    "State": {"Status": "running", "Running": True, "ExitCode": 0, "Pid": 42},
    "Config": {"Cmd": ["sh", "-c", "echo hi"], "Entrypoint": None, "Env": ["A=1", "B=2"],
               "Labels": {"b": "2", "a": "1"}, "ExposedPorts": {}},
    "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                                  "443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8443"}]}},
    "Count": 3,
    "Empty": "",
}


@pytest.mark.parametrize("text,want", [
    ("{{.State.Status}}", "running"),
    ("{{.Id}} {{.State.Pid}}", "sha256:abc 42"),
    ("{{.Config.Cmd}}", "[sh -c echo hi]"),
    ("{{.Config.Labels}}", "map[a:1 b:2]"),
    ("{{.Config.Entrypoint}}", "<nil>"),
    ("{{.State.Running}}", "true"),
    ("{{json .Config.Cmd}}", '["sh","-c","echo hi"]'),
    ("{{json .Config.Labels}}", '{"a":"1","b":"2"}'),
    ("{{json .Config.Entrypoint}}", "null"),
    ("{{.Config.Cmd | json}}", '["sh","-c","echo hi"]'),
    # a map: keys sorted, as Go's encoding/json (and docker's raw-JSON fallback) prints them
    ("{{json .State}}", '{"ExitCode":0,"Pid":42,"Running":true,"Status":"running"}'),
    ('{{join .RepoTags ","}}', "busybox:latest,busybox:1.36"),
    ('{{index .Config.Labels "a"}}', "1"),
    ("{{index .RepoTags 1}}", "busybox:1.36"),
    ('{{index .NetworkSettings.Ports "80/tcp" 0 "HostPort"}}', "8080"),
    ("{{range .RepoTags}}[{{.}}]{{end}}", "[busybox:latest][busybox:1.36]"),
    ("{{range $i, $t := .RepoTags}}{{$i}}={{$t}} {{end}}", "0=busybox:latest 1=busybox:1.36 "),
    ("{{range $k, $v := .Config.Labels}}{{$k}}:{{$v}};{{end}}", "a:1;b:2;"),  # key order
    ("{{range $p, $conf := .NetworkSettings.Ports}}{{$p}} -> {{(index $conf 0).HostPort}} "
     "{{end}}", "443/tcp -> 8443 80/tcp -> 8080 "),
    ("{{range .Config.ExposedPorts}}x{{else}}none{{end}}", "none"),
    ("{{range .Count}}{{.}}{{end}}", "012"),
    ("{{range .RepoTags}}{{if eq . \"busybox:1.36\"}}{{break}}{{end}}{{.}}{{end}}",
     "busybox:latest"),
    ("{{range $i, $_ := .RepoTags}}{{if not $i}}{{continue}}{{end}}{{$i}}{{end}}", "1"),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if .Empty}}a{{else if .Count}}b{{else}}c{{end}}", "b"),
    ("{{if and .State.Running (eq .State.ExitCode 0)}}ok{{end}}", "ok"),
    ("{{if or .Empty .Count}}{{or .Empty .Count}}{{end}}", "3"),
    ("{{with .State}}{{.Status}}{{end}}", "running"),
    ("{{with .Empty}}x{{else}}empty{{end}}", "empty"),
    ("{{with $s := .State}}{{$s.Pid}}{{end}}", "42"),
    ("a{{println}}b", "a\nb"),
    ('{{println "x" 1}}', "x 1\n"),
    ('{{print "a" "b" 1 2}}', "ab1 2"),
    ('{{printf "%s:%d:%5s|%-4s|%q" "a" 7 "r" "l" "q"}}', 'a:7:    r|l   |"q"'),
    ('{{upper "abc"}} {{lower "ABC"}} {{title "hello world"}}', "ABC abc Hello World"),
    ('{{split "a,b,c" ","}} {{len (split "a,b,c" ",")}}', "[a b c] 3"),
    ("{{len .RepoTags}} {{len .Config.Labels}} {{len .Id}}", "2 2 10"),
    ('{{truncate .Id 6}} [{{pad "x" 1 2}}]', "sha256 [ x  ]"),
    ('{{slice .Id 7}} {{slice .RepoTags 1 2}}', "abc [busybox:1.36]"),
    ("  {{- .Count -}}  \n x", "3x"),
    ("a {{- /* comment */ -}} b", "ab"),
    ("{{/* only a comment */}}", ""),
    ("{{-3}}", "-3"),
    ('{{"quoted\\t\\"s\\"\\u00e9"}} {{`raw\\n`}}', 'quoted\t"s"é raw\\n'),
    ("{{$x := .Count}}{{$x}}{{$x = 5}}{{$x}}", "35"),
    ("{{$}}", "map[Config:map[Cmd:[sh -c echo hi] Entrypoint:<nil> Env:[A=1 B=2] "
              "ExposedPorts:map[] Labels:map[a:1 b:2]] Count:3 Empty: Id:sha256:abc "
              "NetworkSettings:map[Ports:map[443/tcp:[map[HostIp:127.0.0.1 HostPort:8443]] "
              "80/tcp:[map[HostIp:0.0.0.0 HostPort:8080]]]] RepoTags:[busybox:latest "
              "busybox:1.36] State:map[ExitCode:0 Pid:42 Running:true Status:running]]"),
    ('{{eq .Count 3}} {{ne .Count 3}} {{lt 1 2}} {{ge "b" "a"}}', "true false true true"),
    ("{{html \"<a&b>\"}} {{urlquery \"a b&c\"}}", "&lt;a&amp;b&gt; a+b%26c"),
    ("{{true}} {{print nil}} {{1.5}} {{0x10}} {{'a'}}", "true <nil> 1.5 16 97"),
])
def test_construct(text: str, want: str) -> None:
    assert render(text, DATA) == want


def test_struct_json_keeps_field_order_and_escapes_like_json_marshal() -> None:
    row = Struct("*formatter.imageContext", {"Tag": "<none>", "ID": "1"}, escape_html=True)
    assert render("{{json .}}", row) == '{"Tag":"\\u003cnone\\u003e","ID":"1"}'
    assert render("{{.Tag}}", row) == "<none>"


def test_missing_field_errors_name_the_position() -> None:
    with pytest.raises(TemplateError) as e:
        render("{{.Nope}}", DATA)
    assert str(e.value) == ('template: :1:2: executing "" at <.Nope>: '
                            'map has no entry for key "Nope"')
    with pytest.raises(TemplateError) as e:
        render("x\n  {{.State.Nope}}", DATA)
    assert str(e.value).startswith('template: :2:4: executing "" at <.State.Nope>:')
    with pytest.raises(TemplateError) as e:
        render("{{.ID}} {{.Nope}}", Struct("*formatter.imageContext", {"ID": "1"}))
    assert str(e.value) == ('template: :1:10: executing "" at <.Nope>: can\'t evaluate '
                            'field Nope in type *formatter.imageContext')
    with pytest.raises(TemplateError) as e:
        render("{{.Id.Sub}}", DATA)
    assert "can't evaluate field Sub in type string" in str(e.value)
    # missingkey=default prints Go's <no value>
    assert Template("{{.Nope}}", missing_key="default").execute({}) == "<no value>"


@pytest.mark.parametrize("text,msg", [
    ("{{.A", "template: :1:4: unclosed action"),
    ("{{if .A}}x", "template: :1:10: unexpected EOF"),
    ("{{end}}", "template: :1:2: unexpected {{end}}"),
    ("{{else}}", "template: :1:2: unexpected {{else}}"),
    ("{{nosuch .A}}", 'template: :1:2: function "nosuch" not defined'),
    ("{{$x}}", 'template: :1:2: undefined variable "$x"'),
    ("ab\n{{.A | }}", "template: :2:"),
    ('{{"open}}', "template: :1:2: unterminated quoted string"),
    ("{{/* never closed", "template: :1:0: unclosed comment"),
    ("{{break}}", "template: :1:2: {{break}} outside {{range}}"),
    ("{{define \"x\"}}{{end}}", "template: :1:2: {{define}} is not supported"),
    ("{{(.A}}", "template: :1:"),
    ("{{if}}{{end}}", "template: :1:4: missing value for if"),
    ("{{.A ! .B}}", "template: :1:5: unexpected '!' in command"),
])
def test_parse_errors_are_one_positioned_line(text: str, msg: str) -> None:
    with pytest.raises(TemplateError) as e:
        Template(text)
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,msg", [
    ("{{range .State.Status}}{{end}}", "range can't iterate over running"),
    ("{{range .Id.X}}{{end}}", "can't evaluate field X in type string"),
    ("{{index .RepoTags 5}}", "error calling index: index out of range: 5"),
    ("{{index .Count 0}}", "error calling index: can't index item of type int"),
    ("{{len .Count}}", "error calling len: len of type int"),
    ('{{join .Id ","}}', "error calling join"),
    ("{{upper .Count}}", "error calling upper"),
    ("{{json}}", "wrong number of args for json: want 1 got 0"),
    ('{{lt .Count "a"}}', "incompatible types for comparison"),
    ("{{.Id 1}}", "Id has arguments but cannot be invoked as a function"),
    ("{{.Config.Entrypoint.X}}", "nil pointer evaluating interface {}.X"),
])
def test_execution_errors(text: str, msg: str) -> None:
    with pytest.raises(TemplateError) as e:
        render(text, DATA)
    assert msg in str(e.value) and str(e.value).startswith("template: :1:")
    assert 'executing ""' in str(e.value)


# --- hostile templates ------------------------------------------------------------------

def test_deep_nesting_is_refused_with_a_position() -> None:
    text = "{{if 1}}" * 200 + "{{end}}" * 200
    with pytest.raises(TemplateError, match=r"^template: :1:\d+: nesting deeper than 50$"):
        Template(text)
    with pytest.raises(TemplateError, match="nesting deeper than 50"):
        Template("{{" + "(" * 500 + "1" + ")" * 500 + "}}")


def test_huge_template_is_refused() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        Template("x" * (gotemplate.MAX_TEMPLATE + 1))


def test_output_is_bounded() -> None:
    big = ["x" * (1 << 20)] * 40
    with pytest.raises(TemplateError, match="output larger than"):
        render("{{range .}}{{.}}{{.}}{{end}}", big)
    assert len(Template("{{range .}}{{.}}{{end}}").execute(big, max_output=40 << 20)) == 40 << 20


def test_nested_ranges_are_bounded_in_steps(monkeypatch) -> None:
    monkeypatch.setattr(gotemplate, "MAX_STEPS", 20_000)
    with pytest.raises(TemplateError, match="more than 20000 evaluation steps"):
        render("{{range 1000}}{{range 1000}}{{range 1000}}{{end}}{{end}}{{end}}", None)
    with pytest.raises(TemplateError, match="range over 1000000000"):
        render("{{range 1000000000}}{{end}}", None)


def test_printf_and_pad_widths_are_bounded() -> None:
    with pytest.raises(TemplateError, match="width above"):
        render('{{printf "%999999999d" 1}}', None)
    with pytest.raises(TemplateError, match="pad width"):
        render('{{pad "a" 999999999 0}}', None)


def test_deeply_nested_data_is_an_error_not_a_traceback() -> None:
    deep: object = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TemplateError):
        render("{{.}}", deep)


# --- docker's formatter on top (builder.formatting) -------------------------------------

def test_tabwriter_as_go_with_dockers_settings() -> None:
    from builder.formatting import tabwrite

    # min width 10, padding 3; the last cell of a line is not a column
    assert tabwrite("a\tbbb\tc\nxxxxxxxxxxxx\ty\tz\n") == \
        "a              bbb       c\nxxxxxxxxxxxx   y         z\n"
    # a column block ends at the first line without that cell
    assert tabwrite("a\tb\nc\nlonger-than-ten\td\n") == \
        "a         b\nc\nlonger-than-ten   d\n"


def test_render_rows_table_json_and_escapes() -> None:
    from builder.formatting import IMAGE_HEADERS, render_rows

    rows = [Struct("*formatter.imageContext", {"ID": "abc", "Tag": "<none>"}, escape_html=True)]
    # `\t` typed literally, table header from docker's titles; functions pass titles through
    assert render_rows(r"table {{json .ID}}\t{{upper .Tag}}", rows, IMAGE_HEADERS) == \
        'IMAGE ID   TAG\n"abc"      <NONE>\n'
    assert render_rows("table {{.ID}}", [], IMAGE_HEADERS) == "IMAGE ID\n"
    assert render_rows("json", rows, IMAGE_HEADERS) == '{"ID":"abc","Tag":"\\u003cnone\\u003e"}\n'
    assert render_rows(r"{{.ID}}\n{{.Tag}}", rows, IMAGE_HEADERS) == "abc\n<none>\n"
    with pytest.raises(PybuildError, match=r"^template: :1:2: executing"):
        render_rows("{{.Nope}}", rows, IMAGE_HEADERS)


def test_render_inspect_is_one_line_per_object_and_json_is_the_array() -> None:
    from builder.formatting import render_inspect

    objs = [{"Name": "/a", "State": {"Status": "running"}}, {"Name": "/b", "State": {}}]
    assert render_inspect("{{.Name}}", objs) == "/a\n/b\n"
    assert render_inspect(r"{{.Name}}\t", objs) == "/a\\t\n/b\\t\n"     # no escapes, as docker
    assert json.loads(render_inspect("json", objs)) == objs
    with pytest.raises(PybuildError, match=r'^template parsing error: template: :1:11: executing'
                                           r' "" at <\.State\.Status>: map has no entry'):
        render_inspect("{{.Name}}{{.State.Status}}", objs)
    with pytest.raises(PybuildError, match=r"^template parsing error: template: :1:7: unexpected"):
        render_inspect("{{.Name}{{.State.Status}}", objs)


def test_null_slices_and_maps_of_inspect_print_as_docker() -> None:
    from builder.formatting import render_inspect

    obj = {"Config": {"Entrypoint": None, "Labels": None, "User": None}, "Args": None}
    assert render_inspect("{{.Config.Entrypoint}} {{.Config.Labels}} {{.Config.User}} "
                          "{{json .Config}} {{range .Args}}x{{else}}none{{end}}", [obj]) == \
        '[] map[] <nil> {"Entrypoint":null,"Labels":null,"User":null} none\n'


def test_control_characters_reach_a_terminal_escaped_and_a_pipe_raw() -> None:
    from builder.formatting import IMAGE_HEADERS, render_inspect, render_rows

    evil = {"Config": {"Labels": {"x": "\x1b]0;owned\x07\x9b2J"}}}
    assert render_inspect('{{index .Config.Labels "x"}}', [evil], tty=True) == \
        "\\x1b]0;owned\\x07\\x9b2J\n"
    assert render_inspect('{{index .Config.Labels "x"}}', [evil], tty=False) == \
        "\x1b]0;owned\x07\x9b2J\n"
    rows = [Struct("*formatter.imageContext", {"Tag": "a\x1bb\tc"})]
    assert render_rows("{{.Tag}}", rows, IMAGE_HEADERS, tty=True) == "a\\x1bb\tc\n"
