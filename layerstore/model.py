"""The OCI image model as typed objects: descriptors, manifests, indexes, configs.

Objects read from outside keep the exact bytes they came in (`raw`), because
their digest is over those bytes; objects we create serialize canonically
(sorted keys, no spaces) so the same content always gives the same digest.
Fields a type does not know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from layerstore import digest as dg
from layerstore import mediatypes as mt
from layerstore.errors import InvalidImage


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidImage(f"{what}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidImage(f"{what}: expected a JSON object")
    return obj


def _pop_known(obj: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in obj.items() if k not in keys}


@dataclass
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: list[str] | None = None

    @classmethod
    def from_json(cls, obj: dict) -> "Platform":
        return cls(os=obj.get("os", ""), architecture=obj.get("architecture", ""),
                   variant=obj.get("variant"), os_version=obj.get("os.version"),
                   os_features=obj.get("os.features"))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = self.os_features
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    urls: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> "Descriptor":
        if not isinstance(obj, dict):
            raise InvalidImage(f"{what}: expected an object")
        try:
            digest = dg.validate(obj["digest"])
            size = obj["size"]
            media_type = obj.get("mediaType", "")
        except KeyError as exc:
            raise InvalidImage(f"{what}: missing {exc.args[0]!r}") from None
        except dg.InvalidDigest as exc:
            raise InvalidImage(f"{what}: {exc}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidImage(f"{what}: invalid size {size!r}")
        platform = obj.get("platform")
        return cls(media_type=media_type, digest=digest, size=size,
                   annotations=obj.get("annotations"),
                   platform=Platform.from_json(platform) if isinstance(platform, dict) else None,
                   urls=obj.get("urls"),
                   extra=_pop_known(obj, ("mediaType", "digest", "size", "annotations",
                                          "platform", "urls")))

    def to_json(self) -> dict:
        out: dict[str, Any] = dict(self.extra)
        out.update({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = self.urls
        return out


@dataclass
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    media_type: str = mt.OCI_MANIFEST
    annotations: dict[str, str] | None = None
    subject: Descriptor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None

    @classmethod
    def from_json(cls, obj: dict, raw: bytes | None = None, what: str = "manifest") -> "Manifest":
        if obj.get("schemaVersion") != 2:
            raise InvalidImage(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise InvalidImage(f"{what}: 'layers' must be a list")
        subject = obj.get("subject")
        return cls(config=Descriptor.from_json(obj.get("config"), f"{what}: config"),
                   layers=[Descriptor.from_json(l, f"{what}: layer {i}") for i, l in enumerate(layers)],
                   media_type=obj.get("mediaType") or mt.OCI_MANIFEST,
                   annotations=obj.get("annotations"),
                   subject=Descriptor.from_json(subject, f"{what}: subject") if subject else None,
                   extra=_pop_known(obj, ("schemaVersion", "mediaType", "config", "layers",
                                          "annotations", "subject")),
                   raw=raw)

    def to_json(self) -> dict:
        out: dict[str, Any] = dict(self.extra)
        out.update({"schemaVersion": 2, "mediaType": self.media_type,
                    "config": self.config.to_json(),
                    "layers": [l.to_json() for l in self.layers]})
        if self.annotations:
            out["annotations"] = self.annotations
        if self.subject:
            out["subject"] = self.subject.to_json()
        return out

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else canonical_json(self.to_json())


@dataclass
class Index:
    manifests: list[Descriptor]
    media_type: str = mt.OCI_INDEX
    annotations: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None

    @classmethod
    def from_json(cls, obj: dict, raw: bytes | None = None, what: str = "index") -> "Index":
        if obj.get("schemaVersion") != 2:
            raise InvalidImage(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidImage(f"{what}: 'manifests' must be a list")
        return cls(manifests=[Descriptor.from_json(m, f"{what}: manifest {i}")
                              for i, m in enumerate(manifests)],
                   media_type=obj.get("mediaType") or mt.OCI_INDEX,
                   annotations=obj.get("annotations"),
                   extra=_pop_known(obj, ("schemaVersion", "mediaType", "manifests", "annotations")),
                   raw=raw)

    def to_json(self) -> dict:
        out: dict[str, Any] = dict(self.extra)
        out.update({"schemaVersion": 2, "mediaType": self.media_type,
                    "manifests": [m.to_json() for m in self.manifests]})
        if self.annotations:
            out["annotations"] = self.annotations
        return out

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else canonical_json(self.to_json())


def parse_manifest_or_index(data: bytes, media_type: str | None = None,
                            what: str = "manifest") -> Manifest | Index:
    """Parse either kind, telling them apart by mediaType or by shape."""
    obj = _load(data, what)
    kind = obj.get("mediaType") or media_type or ""
    if kind in mt.INDEXES or (not kind and "manifests" in obj):
        return Index.from_json(obj, raw=data, what=what)
    if kind in mt.MANIFESTS or (not kind and "layers" in obj):
        return Manifest.from_json(obj, raw=data, what=what)
    raise InvalidImage(f"{what}: unsupported media type {kind!r}")


# --- image config ------------------------------------------------------------

# Go field names of the "config" object, in the order docker writes them.
CONTAINER_CONFIG_FIELDS = (
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
    "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck",
    "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint", "NetworkDisabled",
    "MacAddress", "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell",
)


@dataclass
class ContainerConfig:
    """The `config` object: how to run the image. Unset fields are omitted."""

    User: str | None = None
    ExposedPorts: dict[str, dict] | None = None
    Env: list[str] | None = None
    Entrypoint: list[str] | None = None
    Cmd: list[str] | None = None
    Volumes: dict[str, dict] | None = None
    WorkingDir: str | None = None
    Labels: dict[str, str] | None = None
    StopSignal: str | None = None
    ArgsEscaped: bool | None = None
    Healthcheck: dict[str, Any] | None = None
    OnBuild: list[str] | None = None
    Shell: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
              "Labels", "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell")

    @classmethod
    def from_json(cls, obj: Any) -> "ContainerConfig":
        if not isinstance(obj, dict):
            return cls()
        kwargs = {k: obj.get(k) for k in cls._KNOWN}
        return cls(**kwargs, extra=_pop_known(obj, cls._KNOWN))

    def to_json(self) -> dict:
        values = dict(self.extra)
        for k in self._KNOWN:
            v = getattr(self, k)
            if v is not None and v != "" and v is not False:
                values[k] = v
        ordered = {k: values.pop(k) for k in CONTAINER_CONFIG_FIELDS if k in values}
        ordered.update(values)
        return ordered

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.Env or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out


@dataclass
class History:
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False

    @classmethod
    def from_json(cls, obj: Any) -> "History":
        obj = obj if isinstance(obj, dict) else {}
        return cls(created=obj.get("created"), created_by=obj.get("created_by"),
                   author=obj.get("author"), comment=obj.get("comment"),
                   empty_layer=bool(obj.get("empty_layer", False)))

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for k in ("created", "created_by", "author", "comment"):
            v = getattr(self, k)
            if v:
                out[k] = v
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass
class ImageConfig:
    architecture: str
    os: str
    created: str | None = None
    author: str | None = None
    variant: str | None = None
    os_version: str | None = None
    config: ContainerConfig = field(default_factory=ContainerConfig)
    diff_ids: list[str] = field(default_factory=list)
    history: list[History] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None

    _KNOWN = ("architecture", "os", "created", "author", "variant", "os.version", "config",
              "rootfs", "history")

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "config") -> "ImageConfig":
        obj = _load(data, what)
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise InvalidImage(f"{what}: rootfs.type must be 'layers'")
        diff_ids = rootfs.get("diff_ids") or []
        for d in diff_ids:
            if not dg.is_digest(d):
                raise InvalidImage(f"{what}: invalid diff ID {d!r}")
        history = obj.get("history") or []
        return cls(architecture=obj.get("architecture", ""), os=obj.get("os", ""),
                   created=obj.get("created"), author=obj.get("author"),
                   variant=obj.get("variant"), os_version=obj.get("os.version"),
                   config=ContainerConfig.from_json(obj.get("config")),
                   diff_ids=list(diff_ids),
                   history=[History.from_json(h) for h in history],
                   extra=_pop_known(obj, cls._KNOWN), raw=data)

    def to_json(self) -> dict:
        out: dict[str, Any] = dict(self.extra)
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        out["architecture"] = self.architecture
        if self.variant:
            out["variant"] = self.variant
        out["os"] = self.os
        if self.os_version:
            out["os.version"] = self.os_version
        out["config"] = self.config.to_json()
        out["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        if self.history:
            out["history"] = [h.to_json() for h in self.history]
        return out

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else canonical_json(self.to_json())

    @property
    def platform(self) -> Platform:
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)
