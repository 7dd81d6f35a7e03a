"""`--cache-to` / `--cache-from` values (buildx syntax) -> CacheSpec, checked before any
step runs: a typo in a CI file must fail the build at once, not after an hour of steps
whose export then goes nowhere.

    type=registry,ref=REG/REPO:TAG[,mode=min|max][,compression=gzip|zstd]
        [,oci-mediatypes=true][,image-manifest=true][,ignore-error=true][,cache-mounts=true]
    type=local,dest=DIR[,tag=T][,mode=...]...     (--cache-to)
    type=local,src=DIR[,tag=T]                    (--cache-from)
    type=inline                                   (--cache-to: records ride in the image)
    REF                                           (a bare reference: type=registry,ref=REF,
                                                   which reads an exported cache or the
                                                   inline records of an image alike)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.keyvalues import fields
from layerstore import reference
from layerstore.errors import InvalidReference, PybuildError

MAX_SPECS = 16          # per option: each source is a round trip before the first step

_COMMON_TO = {"type", "mode", "compression", "oci-mediatypes", "image-manifest", "ignore-error",
              "cache-mounts"}
TO_KEYS = {"registry": _COMMON_TO | {"ref"}, "local": _COMMON_TO | {"dest", "tag"},
           "inline": {"type", "mode", "ignore-error"}}
FROM_KEYS = {"registry": {"type", "ref"}, "local": {"type", "src", "tag"}}
_TRUE = ("1", "t", "true")          # Go's strconv.ParseBool, as buildx reads these
_FALSE = ("0", "f", "false")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class CacheSpecError(PybuildError):
    """A --cache-to/--cache-from value that cannot be used."""


@dataclass(frozen=True)
class CacheSpec:
    type: str                               # registry | local | inline
    text: str                               # as given, for messages
    ref: reference.Reference | None = None  # registry
    path: Path | None = None                # local: dest= or src=
    tag: str = "latest"                     # local: the ref.name in index.json
    mode: str = "min"                       # min: the final image's steps; max: every stage's
    compression: str | None = None
    ignore_error: bool = False
    cache_mounts: bool = False

    @property
    def name(self) -> str:
        if self.type == "registry":
            return f"registry {self.ref}"
        if self.type == "local":
            return f"local {self.path}:{self.tag}"
        return "inline"

    @property
    def origin(self) -> str | None:
        """"domain/repo" of a registry spec: where a cross-repo mount can take its blobs."""
        return f"{self.ref.domain}/{self.ref.path}" if self.ref is not None else None


def _bool(value: str, key: str, option: str, text: str) -> bool:
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise CacheSpecError(f"{option} {text!r}: {key}={value!r} is not true or false")


def _parse(text: str, option: str, keys: dict[str, set[str]]) -> tuple[str, dict[str, str]]:
    if not text or not text.strip():
        raise CacheSpecError(f"{option}: empty value")
    if "=" not in text:
        # a bare reference, as buildx takes `--cache-from user/app:cache`
        return "registry", {"type": "registry", "ref": text.strip()}
    f = fields(text, option, error=CacheSpecError)
    kind = f.get("type", "registry" if "ref" in f else "")
    if kind not in keys:
        raise CacheSpecError(f"{option} {text!r}: type={kind or '?'} is not supported "
                             f"(use {', '.join(sorted(keys))})")
    unknown = sorted(set(f) - keys[kind])
    if unknown:
        raise CacheSpecError(f"{option} {text!r}: unknown key {unknown[0]!r} for type={kind} "
                             f"(known: {', '.join(sorted(keys[kind]))})")
    return kind, f


def _ref(value: str | None, option: str, text: str, digest_ok: bool) -> reference.Reference:
    if not value:
        raise CacheSpecError(f"{option} {text!r}: ref= is required")
    try:
        ref = reference.parse(value)
    except InvalidReference as exc:
        raise CacheSpecError(f"{option} {text!r}: {exc}") from None
    if ref.digest and not digest_ok:
        raise CacheSpecError(f"{option} {text!r}: export to a tag, not a digest")
    return ref


def _tag(value: str | None, option: str, text: str) -> str:
    if value is None:
        return "latest"
    if not _TAG.fullmatch(value):
        raise CacheSpecError(f"{option} {text!r}: tag={value!r} is not a valid tag")
    return value


def _dir(value: str | None, key: str, option: str, text: str) -> Path:
    if not value:
        raise CacheSpecError(f"{option} {text!r}: {key}= is required")
    return Path(value).absolute()


def parse_cache_to(text: str) -> CacheSpec:
    option = "--cache-to"
    kind, f = _parse(text, option, TO_KEYS)
    mode = f.get("mode", "min").lower()
    if mode not in ("min", "max"):
        raise CacheSpecError(f"{option} {text!r}: mode={f['mode']!r} must be min or max")
    if kind == "inline" and mode != "min":
        raise CacheSpecError(f"{option} {text!r}: type=inline supports mode=min only (the "
                             "records ride in the image, which holds only the final stage's "
                             "layers); use type=registry for mode=max")
    compression = f.get("compression")
    if compression is not None and compression not in ("gzip", "zstd"):
        raise CacheSpecError(f"{option} {text!r}: compression={compression!r} must be gzip "
                             "or zstd")
    for key, meaning in (("oci-mediatypes", "pybuild writes OCI media types only"),
                         ("image-manifest", "pybuild writes the cache as one OCI image "
                                            "manifest, the form every registry accepts")):
        if key in f and not _bool(f[key], key, option, text):
            raise CacheSpecError(f"{option} {text!r}: {key}=false is not supported: {meaning}")
    common = dict(mode=mode, compression=compression,
                  ignore_error=_bool(f.get("ignore-error", "false"), "ignore-error", option, text),
                  cache_mounts=_bool(f.get("cache-mounts", "false"), "cache-mounts", option, text))
    if kind == "registry":
        return CacheSpec("registry", text, ref=_ref(f.get("ref"), option, text, False), **common)
    if kind == "local":
        return CacheSpec("local", text, path=_dir(f.get("dest"), "dest", option, text),
                         tag=_tag(f.get("tag"), option, text), **common)
    return CacheSpec("inline", text, mode="min", ignore_error=common["ignore_error"])


def parse_cache_from(text: str) -> CacheSpec:
    option = "--cache-from"
    kind, f = _parse(text, option, FROM_KEYS)
    if kind == "registry":
        return CacheSpec("registry", text, ref=_ref(f.get("ref"), option, text, True))
    return CacheSpec("local", text, path=_dir(f.get("src"), "src", option, text),
                     tag=_tag(f.get("tag"), option, text))


def parse_specs(cache_to, cache_from, compression: str) -> tuple[list[CacheSpec], list[CacheSpec]]:
    """Both options of one build, checked together; `compression` is the build's own."""
    to, frm = list(cache_to or ()), list(cache_from or ())
    for option, values in (("--cache-to", to), ("--cache-from", frm)):
        if len(values) > MAX_SPECS:
            raise CacheSpecError(f"{option}: at most {MAX_SPECS} values")
    exports = [parse_cache_to(t) for t in to]
    for spec in exports:
        # a step's key holds the compression of the layers it makes (builder/build.py): a
        # record re-compressed on the way out would never be asked for by the same key
        if spec.compression and spec.compression != compression:
            raise CacheSpecError(f"--cache-to {spec.text!r}: compression={spec.compression} "
                                 f"but the build makes {compression} layers, and the cache "
                                 f"keys include it: build with --compression "
                                 f"{spec.compression}")
    if sum(1 for s in exports if s.type == "inline") > 1:
        raise CacheSpecError("--cache-to type=inline: given more than once")
    return exports, [parse_cache_from(t) for t in frm]
