"""Make JSON schemas survive openai-harmony's JSON-schema -> TypeScript rendering.

The renderer understands `type` (string or list), `properties`/`required`, `items`, string
`enum`, `oneOf`, `nullable`, `description`, `default`, `title`, `examples` -- and renders
everything else as `any`: `$ref`/`$defs`, `anyOf`, `allOf`, `const`, non-string enums, objects
without `type`. Pydantic and most tool libraries emit exactly those, so before handing a schema
over we rewrite it into the subset, keeping the meaning:

- `$ref` to `#/$defs/X` or `#/definitions/X` is inlined (a cycle becomes `any` with a note);
- `anyOf` becomes `oneOf`; `anyOf: [X, {type: null}]` becomes X with `nullable: true`;
- `allOf` merges its members (properties, required, type);
- `const: v` becomes a one-value string enum, or the type of v with "(always v)" in the description;
- non-string enums become their type with the allowed values in the description;
- `properties` without `type` gets `type: object`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .errors import HarmonyIOError

# A schema's size once its $refs are inlined: `$defs` referring to each other twice per level expand
# exponentially (40 levels: 2**40 nodes), so flattening counts what it builds and stops early.
MAX_SCHEMA_NODES = 10_000

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
               list: "array", dict: "object"}


def _type_of(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "string")


def _append_description(schema: dict, note: str) -> None:
    desc = schema.get("description")
    schema["description"] = f"{desc} {note}" if desc else note


class _Flattener:
    def __init__(self, root: dict):
        self.nodes = 0
        self.defs: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            defs = root.get(key)
            if isinstance(defs, dict):
                for name, value in defs.items():
                    self.defs[f"#/{key}/{name}"] = value

    def __call__(self, schema: Any, stack: tuple[str, ...] = ()) -> Any:
        if isinstance(schema, bool):
            return {} if schema else {"description": "(never valid)"}
        if not isinstance(schema, dict):
            return schema
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise HarmonyIOError(f"tool schema: more than {MAX_SCHEMA_NODES} nodes once its $refs are resolved")
        s = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
        if "$ref" in s:
            ref = s.pop("$ref")
            if ref in stack:
                out = {k: v for k, v in s.items()}
                _append_description(out, f"(recursive {ref.rsplit('/', 1)[-1]})")
                return out
            if ref not in self.defs:
                raise HarmonyIOError(f"tool schema: unresolvable $ref {ref!r}")
            target = self(self.defs[ref], stack + (ref,))
            merged = dict(target)
            merged.update({k: self(v, stack) if isinstance(v, dict) else v for k, v in s.items()})
            return merged
        if "allOf" in s:
            parts = [self(p, stack) for p in s.pop("allOf")]
            merged: dict[str, Any] = {}
            for p in parts:
                for k, v in p.items():
                    if k == "properties":
                        merged.setdefault("properties", {}).update(v)
                    elif k == "required":
                        merged["required"] = sorted(set(merged.get("required", [])) | set(v))
                    else:
                        merged.setdefault(k, v)
            for k, v in s.items():
                merged[k] = v
            s = merged
        if "anyOf" in s:
            variants = [self(v, stack) for v in s.pop("anyOf")]
            non_null = [v for v in variants if v.get("type") != "null"]
            if len(non_null) == 1 and len(variants) == 2:
                base = dict(non_null[0])
                base["nullable"] = True
                for k, v in s.items():
                    base.setdefault(k, v)
                s = base
            else:
                s["oneOf"] = variants
        if "oneOf" in s:
            s["oneOf"] = [self(v, stack) for v in s["oneOf"]]
        if "const" in s:
            value = s.pop("const")
            if isinstance(value, str):
                s.setdefault("type", "string")
                s["enum"] = [value]
            else:
                s.setdefault("type", _type_of(value))
                _append_description(s, f"(always {json.dumps(value)})")
        if "enum" in s and not all(isinstance(v, str) for v in s["enum"]):
            values = s.pop("enum")
            if "type" not in s:
                types = sorted({_type_of(v) for v in values})
                s["type"] = types[0] if len(types) == 1 else types
            _append_description(s, "(one of: " + ", ".join(json.dumps(v) for v in values) + ")")
        if "properties" in s:
            s.setdefault("type", "object")
            props = s["properties"]
            if not isinstance(props, dict):
                raise HarmonyIOError("tool schema: 'properties' must be an object")
            s["properties"] = {k: self(v, stack) for k, v in props.items()}
        if "items" in s:
            s["items"] = self(s["items"], stack)
        if isinstance(s.get("additionalProperties"), dict):
            s["additionalProperties"] = self(s["additionalProperties"], stack)
        return s


def flatten_schema(schema: Any) -> dict:
    """A copy of `schema` rewritten into what openai-harmony renders (see module docstring)."""
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise HarmonyIOError(f"tool schema must be a JSON object, got {type(schema).__name__}")
    try:
        out = _Flattener(schema)(copy.deepcopy(schema))
    except RecursionError:
        raise HarmonyIOError("tool schema: nested too deeply") from None
    if out.get("type") not in (None, "object"):
        raise HarmonyIOError(f"tool parameters must be an object schema, got type {out.get('type')!r}")
    out.setdefault("type", "object")
    return out
