# -*- test-case-name: tests.test_amqp_codec -*-
"""
Generate L{robustmq.amqp.spec} from RabbitMQ's machine-readable AMQP 0-9-1
definition (the JSON input of its code generator).

Usage::

    python -m robustmq.amqp.gen_spec MAIN.json [EXTENSION.json ...] OUT.py

Extension documents are merged as RabbitMQ's generator merges them: new
domains and constants are added (a name defined twice is a conflict), a class
defined again contributes only its methods and properties, appended to the
existing ones.

The output is a plain Python module of tuples and dicts: argument domains are
resolved to wire types, defaults are filled in, and the Python names of
classes, methods and arguments are chosen here, so that the codec does no
parsing of the definition at import time.
"""

import json
import keyword
import sys

#: The wire types a domain finally resolves to.
WIRE_TYPES = frozenset(
    ["octet", "short", "long", "longlong", "bit", "shortstr", "longstr",
     "timestamp", "table"])

#: The value an argument without a default in the definition gets.
ZERO_VALUES = {
    "octet": 0,
    "short": 0,
    "long": 0,
    "longlong": 0,
    "timestamp": 0,
    "bit": False,
    "shortstr": "",
    "longstr": b"",
    "table": {},
}

#: Properties per flag word: bit 0 of each word is the continuation bit.
PROPERTIES_PER_WORD = 15

#: Argument names that would hide the attributes every method class has
#: (its own C{class_id} and C{method_id}): the failing method named in
#: connection.close and channel.close gets these names instead.
RENAMED_ARGUMENTS = {
    "class_id": "reply_class_id",
    "method_id": "reply_method_id",
}

#: Other attributes of every method class; an argument may not take them.
RESERVED_NAMES = frozenset(
    ["name", "synchronous", "content", "fields", "types", "defaults"])


class SpecError(Exception):
    """
    The definition is inconsistent (unknown domain, duplicate name...).
    """


def python_name(name):
    """
    Turn a definition name (C{routing-key}) into a Python attribute name
    (C{routing_key}); keywords get a trailing underscore (C{global_}).
    """
    result = name.replace("-", "_")
    if keyword.iskeyword(result):
        result += "_"
    return result


def camel_name(*parts):
    """
    Join definition names into a class name: C{("basic", "recover-async")}
    gives C{BasicRecoverAsync}.
    """
    words = []
    for part in parts:
        words.extend(part.replace("_", "-").split("-"))
    return "".join(word[:1].upper() + word[1:] for word in words if word)


def constant_name(name):
    """
    C{FRAME-METHOD} -> C{FRAME_METHOD}.
    """
    return name.replace("-", "_").upper()


def merge(documents):
    """
    Merge a main definition and extensions into one document.

    @param documents: parsed JSON documents, the main one first.
    @return: a new document with C{domains}, C{constants} and C{classes}.
    @raise SpecError: on a true conflict.
    """
    main = documents[0]
    merged = {
        "major-version": main["major-version"],
        "minor-version": main["minor-version"],
        "revision": main.get("revision", 0),
        "port": main["port"],
        "domains": {},
        "constants": [],
        "classes": [],
    }
    constant_names = set()
    classes = {}
    for doc in documents:
        for name, wire_type in doc.get("domains", []):
            if name in merged["domains"]:
                raise SpecError("domain %r defined twice" % (name,))
            merged["domains"][name] = wire_type
        for const in doc.get("constants", []):
            if const["name"] in constant_names:
                raise SpecError("constant %r defined twice" % (const["name"],))
            constant_names.add(const["name"])
            merged["constants"].append(const)
        for cls in doc.get("classes", []):
            existing = classes.get(cls["name"])
            if existing is None:
                existing = {
                    "name": cls["name"],
                    "id": cls["id"],
                    "methods": [],
                    "properties": [],
                }
                classes[cls["name"]] = existing
                merged["classes"].append(existing)
            method_names = set(m["name"] for m in existing["methods"])
            for method in cls.get("methods", []):
                if method["name"] in method_names:
                    raise SpecError("method %s.%s defined twice"
                                    % (cls["name"], method["name"]))
                method_names.add(method["name"])
                existing["methods"].append(method)
            prop_names = set(p["name"] for p in existing["properties"])
            for prop in cls.get("properties", []) or []:
                if prop["name"] in prop_names:
                    raise SpecError("property %s.%s defined twice"
                                    % (cls["name"], prop["name"]))
                prop_names.add(prop["name"])
                existing["properties"].append(prop)
    return merged


def resolve_type(field, domains):
    """
    The wire type of an argument or property, following domains.
    """
    name = field.get("type") or field.get("domain")
    if name is None:
        raise SpecError("field %r has neither type nor domain" % (field,))
    seen = set()
    while domains.get(name, name) != name:
        if name in seen:
            raise SpecError("domain %r is defined in a cycle" % (name,))
        seen.add(name)
        name = domains[name]
    if name not in WIRE_TYPES:
        raise SpecError("cannot resolve %r to a wire type" % (name,))
    return name


def default_value(field, wire_type):
    """
    The default of an argument: the definition's, converted to the type the
    codec uses (C{bytes} for long strings), or the zero value of its type.
    """
    if "default-value" not in field:
        return ZERO_VALUES[wire_type]
    value = field["default-value"]
    if wire_type == "longstr" and isinstance(value, str):
        return value.encode("utf-8")
    if wire_type == "bit":
        return bool(value)
    if wire_type == "table":
        if value:
            raise SpecError("non-empty default table in %r" % (field,))
        return {}
    return value


def build_model(document):
    """
    Reduce a merged document to the tables written to the spec module.
    """
    domains = document["domains"]
    constants = []
    errors = []
    for const in document["constants"]:
        name = constant_name(const["name"])
        constants.append((name, const["value"]))
        if "class" in const:
            errors.append((const["value"], name, const["class"]))
    classes = []
    properties = {}
    for cls in document["classes"]:
        methods = []
        ids = set()
        for method in cls["methods"]:
            if method["id"] in ids:
                raise SpecError("method id %d used twice in class %s"
                                % (method["id"], cls["name"]))
            ids.add(method["id"])
            args = []
            for arg in method["arguments"]:
                wire_type = resolve_type(arg, domains)
                attr = python_name(arg["name"])
                attr = RENAMED_ARGUMENTS.get(attr, attr)
                if attr in RESERVED_NAMES or attr.startswith("_"):
                    raise SpecError("argument name %r of %s.%s is reserved"
                                    % (attr, cls["name"], method["name"]))
                args.append((attr, wire_type, default_value(arg, wire_type)))
            methods.append((
                method["id"], method["name"],
                camel_name(cls["name"], method["name"]),
                bool(method.get("synchronous", False)),
                bool(method.get("content", False)),
                tuple(args)))
        classes.append((cls["id"], cls["name"], tuple(methods)))
        props = []
        for index, prop in enumerate(cls.get("properties", [])):
            word, position = divmod(index, PROPERTIES_PER_WORD)
            props.append((python_name(prop["name"]),
                          resolve_type(prop, domains),
                          word, 1 << (15 - position)))
        if props:
            properties[cls["id"]] = tuple(props)
    return {
        "version": (document["major-version"], document["minor-version"],
                    document["revision"]),
        "port": document["port"],
        "constants": constants,
        "errors": errors,
        "classes": classes,
        "properties": properties,
    }


def _literal(value):
    """
    Python source for a value, strings in double quotes.
    """
    text = repr(value)
    if (isinstance(value, (str, bytes)) and text.endswith("'")
            and '"' not in text):
        start = text.index("'")
        return text[:start] + '"' + text[start + 1:-1] + '"'
    return text


def render(model, sources=()):
    """
    The text of the spec module.

    @param model: what L{build_model} returns.
    @param sources: the file names the model was read from, for the header.
    """
    out = []
    w = out.append
    w("# -*- test-case-name: tests.test_amqp_codec -*-")
    w('"""')
    w("AMQP %d-%d-%d protocol tables, with RabbitMQ's extensions."
      % model["version"])
    w("")
    w("GENERATED by C{python -m robustmq.amqp.gen_spec} from RabbitMQ's")
    w("machine-readable definition (%s; MIT licence,"
      % (", ".join(sources) or "amqp-rabbitmq-0.9.1.json",))
    w("Copyright (C) 2008-2020 VMware, Inc. or its affiliates). Do not edit:")
    w("change the generator and run it again.")
    w("")
    w("C{CLASSES}: C{(class_id, name, methods)}; each method is")
    w("C{(method_id, name, class_name, synchronous, content, arguments)};")
    w("each argument is C{(attribute, wire_type, default)}. The failing")
    w("class and method named by connection.close and channel.close are")
    w("C{reply_class_id} and C{reply_method_id}: C{class_id} and C{method_id}")
    w("are the method's own.")
    w("C{PROPERTIES}: class id -> C{(attribute, wire_type, flag_word, mask)},")
    w("in wire order; C{flag_word} counts the 16-bit property-flag words,")
    w("C{mask} is the bit of the property in its word (bit 0 is the")
    w("continuation bit).")
    w('"""')
    w("")
    w("VERSION = %r" % (model["version"],))
    w("PORT = %d" % (model["port"],))
    w("")
    for name, value in model["constants"]:
        w("%s = %r" % (name, value))
    w("")
    w("#: reply code -> (name, \"soft-error\" | \"hard-error\")")
    w("ERRORS = {")
    for value, name, kind in sorted(model["errors"]):
        w("    %d: (%s, %s)," % (value, _literal(name), _literal(kind)))
    w("}")
    w("")
    w("CLASSES = (")
    for class_id, name, methods in model["classes"]:
        w("    (%d, %s, (" % (class_id, _literal(name)))
        for (method_id, mname, cname, sync, content, args) in methods:
            head = "        (%d, %s, %s, %r, %r, (" % (
                method_id, _literal(mname), _literal(cname), sync, content)
            if not args:
                w(head + ")),")
                continue
            w(head)
            for attr, wire_type, default in args:
                w("            (%s, %s, %s)," % (
                    _literal(attr), _literal(wire_type), _literal(default)))
            w("        )),")
        w("    )),")
    w(")")
    w("")
    w("PROPERTIES = {")
    for class_id in sorted(model["properties"]):
        w("    %d: (" % (class_id,))
        for attr, wire_type, word, mask in model["properties"][class_id]:
            w("        (%s, %s, %d, 0x%04X)," % (
                _literal(attr), _literal(wire_type), word, mask))
        w("    ),")
    w("}")
    return "\n".join(out) + "\n"


def generate(paths):
    """
    Read definition files and return the spec module text.
    """
    documents = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            documents.append(json.load(f))
    names = [path.replace("\\", "/").rsplit("/", 1)[-1] for path in paths]
    return render(build_model(merge(documents)), names)


def main(argv=None):
    """
    Command line entry point: C{MAIN [EXTENSION ...] OUT}.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.stderr.write(
            "usage: python -m robustmq.amqp.gen_spec MAIN.json "
            "[EXTENSION.json ...] OUT.py\n")
        return 2
    text = generate(argv[:-1])
    with open(argv[-1], "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
