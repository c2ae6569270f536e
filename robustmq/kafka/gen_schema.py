# -*- test-case-name: tests.test_kafka_codec -*-
"""
Generate L{robustmq.kafka.schema} from Apache Kafka's JSON message definitions.

Usage::

    python -m robustmq.kafka.gen_schema SPEC_DIR OUTPUT.py

C{SPEC_DIR} holds Kafka's C{*Request.json}, C{*Response.json},
C{RequestHeader.json} and C{ResponseHeader.json} (the definitions contain
C{//} comments, which are stripped before JSON parsing).  Every API whose
request lists the C{broker} listener is kept, with every version in its
C{validVersions}.  The output is a plain Python literal table, committed to
the repository, so that the broker never reads the definitions at run time.

Each field of the table is a tuple::

    (name, type, versions, nullable_versions, tagged_versions, tag,
     default, fields, flexible_versions)

C{name} is the snake_case form of the JSON name.  C{type} is a primitive
type name (C{int8} ... C{records}), C{"[]"} followed by a primitive type for
arrays of primitives, C{"struct"} or C{"[]struct"} for (arrays of) structures,
whose own fields are in C{fields} (common structures are inlined).  Version
ranges are kept as Kafka writes them (C{"0+"}, C{"3-5"}, C{"7"}) or L{None}
when absent.  C{default} is the value a decoder gives the field when it is
absent: the JSON C{default} when one is given, else the type's natural default
(0, C{""}, C{False}, C{b""}, 16 zero bytes for a uuid, L{None} for records,
C{[]} for arrays, C{{}} for a structure holding its own defaults).
C{flexible_versions} overrides the message's flexible versions for one field
(used by the request header's client id).
"""

import json
import os
import re
import sys

PRIMITIVES = frozenset(
    [
        "bool",
        "int8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "float64",
        "uuid",
        "string",
        "bytes",
        "records",
    ]
)

# The longest line the generated module should have.
_LINE_LENGTH = 99

_INT_TYPES = frozenset(["int8", "int16", "uint16", "int32", "uint32", "int64"])


class SchemaError(Exception):
    """
    A message definition that this generator cannot represent.
    """


def strip_comments(text):
    """
    Remove C{//} comments from JSON text, leaving string literals intact.

    @param text: the JSON text with comments.
    @type text: L{str}
    @return: the text without comments.
    @rtype: L{str}
    """
    out = []
    i = 0
    n = len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        else:
            out.append(c)
            i += 1
    return "".join(out)


def load_definition(path):
    """
    Read one JSON message definition.

    @param path: the file to read.
    @return: the parsed definition.
    @rtype: L{dict}
    """
    with open(path, encoding="utf-8") as f:
        return json.loads(strip_comments(f.read()))


def snake_case(name):
    """
    Convert a Kafka field name (C{ThrottleTimeMs}) to snake_case
    (C{throttle_time_ms}).

    @type name: L{str}
    @rtype: L{str}
    """
    name = name.replace("KRaft", "Kraft")
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return name.lower()


def parse_versions(spec):
    """
    Parse a Kafka version range.

    @param spec: C{"3+"}, C{"1-4"}, C{"7"}, C{"none"} or L{None}.
    @return: C{(low, high)} with C{high} L{None} when open-ended, or L{None}
        for an empty range.
    """
    if spec is None or spec == "none":
        return None
    if spec.endswith("+"):
        return (int(spec[:-1]), None)
    if "-" in spec:
        low, high = spec.split("-")
        return (int(low), int(high))
    return (int(spec), int(spec))


def _normalise_versions(spec):
    """
    Validate a version range and return its canonical string form, or
    L{None} for an absent or empty range.
    """
    parsed = parse_versions(spec)
    if parsed is None:
        return None
    low, high = parsed
    if high is None:
        return "%d+" % (low,)
    if low == high:
        return "%d" % (low,)
    return "%d-%d" % (low, high)


def _parse_default(field, ftype, nullable):
    """
    The decoded default value of a field.
    """
    raw = field.get("default")
    if isinstance(raw, bool):
        raw = "true" if raw else "false"
    elif isinstance(raw, (int, float)):
        raw = str(raw)
    if raw == "null":
        if not nullable:
            raise SchemaError("field %s: null default but not nullable" % (field["name"],))
        return None
    if ftype in _INT_TYPES:
        return 0 if raw in (None, "") else int(raw, 0)
    if ftype == "float64":
        return 0.0 if raw in (None, "") else float(raw)
    if ftype == "bool":
        if raw in (None, ""):
            return False
        if raw.lower() not in ("true", "false"):
            raise SchemaError("field %s: bad bool default %r" % (field["name"], raw))
        return raw.lower() == "true"
    if ftype == "string":
        return "" if raw is None else raw
    if raw not in (None, ""):
        raise SchemaError("field %s: unsupported default %r for %s" % (field["name"], raw, ftype))
    if ftype == "uuid":
        return b"\x00" * 16
    if ftype == "bytes":
        return b""
    if ftype == "records":
        return None
    if ftype.startswith("[]"):
        return []
    return {}


class _Converter:
    """
    Converts the fields of one message definition, resolving struct types
    against its common structures and its inline structures.

    @ivar structs: struct name to its JSON field list.
    """

    def __init__(self, definition):
        self.name = definition["name"]
        self.structs = {}
        for common in definition.get("commonStructs", []):
            self.structs[common["name"]] = common["fields"]
        self._collect(definition.get("fields", []))

    def _collect(self, fields):
        for field in fields:
            if "fields" in field:
                struct_name = field["type"]
                if struct_name.startswith("[]"):
                    struct_name = struct_name[2:]
                self.structs.setdefault(struct_name, field["fields"])
                self._collect(field["fields"])

    def convert(self, fields, seen=()):
        """
        Convert a JSON field list to table tuples.
        """
        out = []
        names = set()
        for field in fields:
            out.append(self._field(field, seen))
            if out[-1][0] in names:
                raise SchemaError("%s: duplicate field name %s" % (self.name, out[-1][0]))
            names.add(out[-1][0])
        return tuple(out)

    def _field(self, field, seen):
        jtype = field["type"]
        is_array = jtype.startswith("[]")
        element = jtype[2:] if is_array else jtype
        nested = None
        if element in PRIMITIVES:
            if is_array and element == "records":
                raise SchemaError("%s: array of records" % (self.name,))
            ftype = jtype
        else:
            if element in seen:
                raise SchemaError("%s: recursive struct %s" % (self.name, element))
            sub = field.get("fields")
            if sub is None:
                sub = self.structs.get(element)
            if sub is None:
                raise SchemaError("%s: unknown struct %s" % (self.name, element))
            nested = self.convert(sub, seen + (element,))
            ftype = "[]struct" if is_array else "struct"
        versions = _normalise_versions(field.get("versions"))
        if versions is None:
            raise SchemaError("%s: field %s has no versions" % (self.name, field["name"]))
        nullable = _normalise_versions(field.get("nullableVersions"))
        tagged = _normalise_versions(field.get("taggedVersions"))
        tag = field.get("tag")
        if (tagged is None) != (tag is None):
            raise SchemaError(
                "%s: field %s: tag without taggedVersions" % (self.name, field["name"]))
        if nullable is not None and ftype not in (
            "string", "bytes", "records", "struct") and not ftype.startswith("[]"):
            raise SchemaError(
                "%s: field %s: %s cannot be nullable" % (self.name, field["name"], ftype))
        default = _parse_default(field, element if not is_array else jtype, nullable is not None)
        flexible = field.get("flexibleVersions")
        if flexible is not None:
            flexible = _normalise_versions(flexible) or "none"
        return (
            snake_case(field["name"]),
            ftype,
            versions,
            nullable,
            tagged,
            tag,
            default,
            nested,
            flexible,
        )


def _format_fields(fields, indent):
    """
    Format a field tuple as Python source, one field per line, nested
    structures indented below their field.
    """
    if not fields:
        return "()"
    pad = " " * indent
    lines = ["("]
    for name, ftype, versions, nullable, tagged, tag, default, nested, flexible in fields:
        default_source = "bytes(16)" if default == b"\x00" * 16 else repr(default)
        rest = "%r, %r, %r, %r, %r, %s, " % (
            ftype, versions, nullable, tagged, tag, default_source)
        head = "%s(%r, %s" % (pad + "    ", name, rest)
        if len(head) + 12 > _LINE_LENGTH:
            # Too long for one line: the rest of the field goes below its name.
            head = "%s(%r,\n%s %s" % (pad + "    ", name, pad + "    ", rest)
        if nested is None:
            lines.append("%sNone, %r)," % (head, flexible))
        else:
            lines.append("%s%s, %r)," % (
                head, _format_fields(nested, indent + 4), flexible))
    lines.append(pad + ")")
    return "\n".join(lines)


def generate(spec_dir):
    """
    Build the source text of the schema module.

    @param spec_dir: the directory of Kafka's JSON definitions.
    @return: the Python source.
    @rtype: L{str}
    """
    requests = {}
    responses = {}
    headers = {}
    for filename in sorted(os.listdir(spec_dir)):
        if not filename.endswith(".json"):
            continue
        definition = load_definition(os.path.join(spec_dir, filename))
        kind = definition.get("type")
        if kind == "request":
            requests[definition["apiKey"]] = (filename, definition)
        elif kind == "response":
            responses[definition["apiKey"]] = (filename, definition)
        elif kind == "header":
            headers[definition["name"]] = (filename, definition)

    used_files = []
    apis = []
    for api_key in sorted(requests):
        req_file, req = requests[api_key]
        if "broker" not in req.get("listeners", ()):
            continue
        resp_file, resp = responses[api_key]
        if req["validVersions"] != resp["validVersions"]:
            raise SchemaError("api %d: request and response versions differ" % (api_key,))
        if req["flexibleVersions"] != resp["flexibleVersions"]:
            raise SchemaError("api %d: request and response flexible versions differ" % (api_key,))
        used_files.extend([req_file, resp_file])
        name = req["name"]
        if name.endswith("Request"):
            name = name[: -len("Request")]
        low, high = parse_versions(req["validVersions"])
        flexible = parse_versions(req["flexibleVersions"])
        if flexible is not None and flexible[1] is not None:
            raise SchemaError("api %d: bounded flexible versions" % (api_key,))
        apis.append(
            (
                api_key,
                name,
                (low, high),
                None if flexible is None else flexible[0],
                _normalise_versions(req.get("deprecatedVersions")),
                _Converter(req).convert(req["fields"]),
                _Converter(resp).convert(resp["fields"]),
            )
        )

    header_entries = []
    for header_name in ("RequestHeader", "ResponseHeader"):
        filename, definition = headers[header_name]
        used_files.append(filename)
        low, high = parse_versions(definition["validVersions"])
        flexible = parse_versions(definition["flexibleVersions"])
        header_entries.append(
            (
                header_name,
                (low, high),
                None if flexible is None else flexible[0],
                _Converter(definition).convert(definition["fields"]),
            )
        )

    out = []
    out.append("# -*- test-case-name: tests.test_kafka_codec -*-")
    out.append("# GENERATED by robustmq.kafka.gen_schema: do not edit by hand.")
    out.append('"""')
    out.append("Kafka message schemas, generated by L{robustmq.kafka.gen_schema} from Apache")
    out.append("Kafka's JSON message definitions (Apache License 2.0; from")
    out.append("C{clients/src/main/resources/common/message/}).  Generated from these files::")
    out.append("")
    line = ""
    for filename in used_files:
        if line and len(line) + len(filename) + 2 > 90:
            out.append("    " + line)
            line = ""
        line = filename if not line else line + "  " + filename
    out.append("    " + line)
    out.append("")
    out.append("A field is C{(name, type, versions, nullable_versions, tagged_versions, tag,")
    out.append("default, fields, flexible_versions)}; see L{robustmq.kafka.gen_schema}.")
    out.append('"""')
    out.append("")
    out.append("# api_key: (name, (min_version, max_version), first flexible version or None,")
    out.append("#           deprecated versions, request fields, response fields)")
    out.append("APIS = {")
    for api_key, name, valid, flexible, deprecated, req_fields, resp_fields in apis:
        out.append("    %d: (" % (api_key,))
        out.append("        %r, %r, %r, %r," % (name, valid, flexible, deprecated))
        out.append("        " + _format_fields(req_fields, 8) + ",")
        out.append("        " + _format_fields(resp_fields, 8) + ",")
        out.append("    ),")
    out.append("}")
    out.append("")
    for header_name, valid, flexible, fields in header_entries:
        const = "REQUEST_HEADER" if header_name == "RequestHeader" else "RESPONSE_HEADER"
        out.append("# ((min_version, max_version), first flexible version, fields)")
        out.append("%s = (" % (const,))
        out.append("    %r, %r," % (valid, flexible))
        out.append("    " + _format_fields(fields, 4) + ",")
        out.append(")")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    """
    Command-line entry point: C{gen_schema SPEC_DIR OUTPUT}.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.stderr.write("usage: python -m robustmq.kafka.gen_schema SPEC_DIR OUTPUT.py\n")
        return 2
    source = generate(argv[0])
    with open(argv[1], "w", encoding="utf-8") as f:
        f.write(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
