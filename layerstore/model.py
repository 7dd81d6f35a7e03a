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
from layerstore import jsonlimits
from layerstore import mediatypes as mt
from layerstore.errors import InvalidImage

# A registry refuses manifests above 4 MiB (distribution's limit); configs carry the
# history and may be larger.
MANIFEST_LIMIT = 4 << 20
CONFIG_LIMIT = jsonlimits.MAX_BYTES
# overlayfs stacks at most 500 lower dirs (OVL_MAX_STACK): an image of more layers can
# never be mounted, and unpacking 10 000 of them first would only fill the disk (docker
# refuses more than 125)
MAX_LAYERS = 500


class NotAnImage(InvalidImage):
    """A well-formed OCI document that is not a runnable image (an artifact, an
    index of nothing)."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_object(data: bytes, what: str, limit: int = jsonlimits.MAX_BYTES) -> dict:
    """A JSON object from outside, bounded in size and depth (layerstore.jsonlimits)."""
    try:
        obj = jsonlimits.loads(data, what, max_bytes=limit)
    except jsonlimits.InvalidJSON as exc:
        raise InvalidImage(str(exc)) from None
    if not isinstance(obj, dict):
        raise InvalidImage(f"{what}: expected a JSON object")
    return obj



def _pop_known(obj: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in obj.items() if k not in keys}


# Field types as Go's encoding/json enforces them for docker and containerd: a
# document with a string where a list belongs is refused there, and must not reach
# code here that would iterate its characters (or crash on an int).

def _typed(obj: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidImage(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _str_list(obj: dict, key: str, what: str) -> list[str] | None:
    value = _typed(obj, key, list, what)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise InvalidImage(f"{what}: {key!r} must be a list of strings")
    return value


def _str_map(obj: dict, key: str, what: str) -> dict[str, str] | None:
    value = _typed(obj, key, dict, what)
    if value is not None and not all(isinstance(v, str) for v in value.values()):
        raise InvalidImage(f"{what}: {key!r} must map strings to strings")
    return value


def _set_map(obj: dict, key: str, what: str) -> dict[str, dict] | None:
    """Go's map[string]struct{} (ExposedPorts, Volumes): every value an object."""
    value = _typed(obj, key, dict, what)
    if value is not None and not all(isinstance(v, dict) for v in value.values()):
        raise InvalidImage(f"{what}: {key!r} must map strings to objects")
    return value


@dataclass
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: list[str] | None = None

    @classmethod
    def from_json(cls, obj: dict, what: str = "platform") -> "Platform":
        return cls(os=_typed(obj, "os", str, what) or "",
                   architecture=_typed(obj, "architecture", str, what) or "",
                   variant=_typed(obj, "variant", str, what),
                   os_version=_typed(obj, "os.version", str, what),
                   os_features=_str_list(obj, "os.features", what))

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
        except KeyError as exc:
            raise InvalidImage(f"{what}: missing {exc.args[0]!r}") from None
        except dg.InvalidDigest as exc:
            raise InvalidImage(f"{what}: {exc}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidImage(f"{what}: invalid size {size!r}")
        media_type = _typed(obj, "mediaType", str, what) or ""
        _typed(obj, "artifactType", str, what)
        platform = _typed(obj, "platform", dict, what)
        return cls(media_type=media_type, digest=digest, size=size,
                   annotations=_str_map(obj, "annotations", what),
                   platform=Platform.from_json(platform, f"{what}: platform") if platform else None,
                   urls=_str_list(obj, "urls", what),
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
    def from_json(cls, obj: dict, raw: bytes | None = None, what: str = "manifest",
                  media_type: str | None = None) -> "Manifest":
        if obj.get("schemaVersion") != 2:
            raise InvalidImage(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise InvalidImage(f"{what}: 'layers' must be a list")
        if "config" not in obj:
            raise InvalidImage(f"{what}: no 'config'")
        _typed(obj, "artifactType", str, what)
        subject = _typed(obj, "subject", dict, what)
        return cls(config=Descriptor.from_json(obj.get("config"), f"{what}: config"),
                   layers=[Descriptor.from_json(l, f"{what}: layer {i}") for i, l in enumerate(layers)],
                   media_type=_typed(obj, "mediaType", str, what) or media_type or mt.OCI_MANIFEST,
                   annotations=_str_map(obj, "annotations", what),
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
    def from_json(cls, obj: dict, raw: bytes | None = None, what: str = "index",
                  media_type: str | None = None) -> "Index":
        if obj.get("schemaVersion") != 2:
            raise InvalidImage(f"{what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidImage(f"{what}: 'manifests' must be a list")
        if not manifests:
            raise NotAnImage(f"{what}: the index lists no manifests")
        _typed(obj, "artifactType", str, what)
        return cls(manifests=[Descriptor.from_json(m, f"{what}: manifest {i}")
                              for i, m in enumerate(manifests)],
                   media_type=_typed(obj, "mediaType", str, what) or media_type or mt.OCI_INDEX,
                   annotations=_str_map(obj, "annotations", what),
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
    """Parse either kind, telling them apart by mediaType or by shape.

    `media_type` is what the referrer (a descriptor, a Content-Type) claimed. A
    document that could be read as both kinds is refused (CVE-2021-41190: a
    registry or a signer seeing one thing and a puller another), and so is one
    whose own mediaType contradicts the referrer's claim."""
    obj = load_object(data, what, MANIFEST_LIMIT)
    own = _typed(obj, "mediaType", str, what) or ""
    if "manifests" in obj and ("layers" in obj or "config" in obj):
        raise InvalidImage(f"{what}: ambiguous document: it has both 'manifests' and "
                           "'layers'/'config' (CVE-2021-41190)")
    claimed = media_type or ""
    if own and claimed and (own in mt.INDEXES) != (claimed in mt.INDEXES) \
            and (claimed in mt.INDEXES or claimed in mt.MANIFESTS):
        raise InvalidImage(f"{what}: the document is a {own} but was referred to as {claimed}")
    kind = own or claimed
    if kind in mt.INDEXES or (not kind and "manifests" in obj):
        return Index.from_json(obj, raw=data, what=what, media_type=kind or None)
    if kind in mt.MANIFESTS or (not kind and "layers" in obj):
        return Manifest.from_json(obj, raw=data, what=what, media_type=kind or None)
    raise InvalidImage(f"{what}: unsupported media type {kind!r}")


def image_problem(manifest: Manifest) -> str | None:
    """Why `manifest` is not a container image (an OCI artifact), or None if it is one."""
    artifact = manifest.extra.get("artifactType")
    if artifact:
        return f"it is an OCI artifact of type {artifact!r}, not an image"
    config_type = manifest.config.media_type
    if config_type and config_type not in mt.CONFIGS:
        return f"its config has media type {config_type!r}, not an image config (an OCI artifact?)"
    for i, layer in enumerate(manifest.layers):
        if layer.media_type not in mt.LAYERS:
            return f"layer {i} has media type {layer.media_type!r}, not an image layer"
    return None


def check_image(manifest: Manifest, what: str = "manifest") -> Manifest:
    """The one check that a manifest is a runnable image: load, pull and run all call it
    (run through Store.load_image), so an artifact never reaches the unpacker."""
    problem = image_problem(manifest)
    if problem:
        raise NotAnImage(f"{what}: {problem}")
    if len(manifest.layers) > MAX_LAYERS:
        raise InvalidImage(f"{what}: {len(manifest.layers)} layers, more than the "
                           f"{MAX_LAYERS} an overlay mount can stack")
    return manifest


def check_config(manifest: Manifest, config: "ImageConfig", what: str = "manifest") -> None:
    """The config belongs to the manifest: one diff ID per layer."""
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidImage(f"{what}: {len(manifest.layers)} layers but {len(config.diff_ids)} "
                           "diff IDs in its config")


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
    def from_json(cls, obj: Any, what: str = "config") -> "ContainerConfig":
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise InvalidImage(f"{what}: 'config' must be an object")
        health = _typed(obj, "Healthcheck", dict, what)
        if health is not None:
            _str_list(health, "Test", f"{what}: Healthcheck")
            for key in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
                _typed(health, key, int, f"{what}: Healthcheck")
        return cls(User=_typed(obj, "User", str, what),
                   ExposedPorts=_set_map(obj, "ExposedPorts", what),
                   Env=_str_list(obj, "Env", what),
                   Entrypoint=_str_list(obj, "Entrypoint", what),
                   Cmd=_str_list(obj, "Cmd", what),
                   Volumes=_set_map(obj, "Volumes", what),
                   WorkingDir=_typed(obj, "WorkingDir", str, what),
                   Labels=_str_map(obj, "Labels", what),
                   StopSignal=_typed(obj, "StopSignal", str, what),
                   ArgsEscaped=_typed(obj, "ArgsEscaped", bool, what),
                   Healthcheck=health,
                   OnBuild=_str_list(obj, "OnBuild", what),
                   Shell=_str_list(obj, "Shell", what),
                   extra=_pop_known(obj, cls._KNOWN))

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
        """Env as a mapping, later entries winning; an entry with no name is dropped."""
        out: dict[str, str] = {}
        for item in self.Env or []:
            k, _, v = item.partition("=")
            if k:
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
    def from_json(cls, obj: Any, what: str = "history") -> "History":
        if not isinstance(obj, dict):
            raise InvalidImage(f"{what}: expected an object")
        return cls(created=_typed(obj, "created", str, what),
                   created_by=_typed(obj, "created_by", str, what),
                   author=_typed(obj, "author", str, what),
                   comment=_typed(obj, "comment", str, what),
                   empty_layer=bool(_typed(obj, "empty_layer", bool, what)))

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
        obj = load_object(data, what, CONFIG_LIMIT)
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise InvalidImage(f"{what}: rootfs.type must be 'layers'")
        diff_ids = _typed(rootfs, "diff_ids", list, f"{what}: rootfs") or []
        for d in diff_ids:
            if not dg.is_digest(d):
                raise InvalidImage(f"{what}: invalid diff ID {d!r}")
        history = _typed(obj, "history", list, what) or []
        return cls(architecture=_typed(obj, "architecture", str, what) or "",
                   os=_typed(obj, "os", str, what) or "",
                   created=_typed(obj, "created", str, what),
                   author=_typed(obj, "author", str, what),
                   variant=_typed(obj, "variant", str, what),
                   os_version=_typed(obj, "os.version", str, what),
                   config=ContainerConfig.from_json(obj.get("config"), f"{what}: config"),
                   diff_ids=list(diff_ids),
                   history=[History.from_json(h, f"{what}: history {i}") for i, h in enumerate(history)],
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
