#!/usr/bin/env python3
"""Lists what a wasm module needs from its host and what it exports.

usage: wasm_imports.py MODULE.wasm

Prints the imports (module.name and signature), the exports, the memory and the size
of every section, code vs custom (debug info, names). Standard library only.
"""
import sys

KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}
VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
            0x70: "funcref", 0x6F: "externref"}
SECTIONS = {0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory",
            6: "global", 7: "export", 8: "start", 9: "element", 10: "code", 11: "data",
            12: "datacount", 13: "tag"}


class Reader:
    def __init__(self, data, pos=0, end=None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def name(self):
        n = self.uleb()
        s = self.data[self.pos:self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s

    def limits(self):
        flags = self.byte()
        lo = self.uleb()
        hi = self.uleb() if flags & 1 else None
        return lo, hi


def parse(data):
    if data[:4] != b"\0asm":
        raise SystemExit("not a wasm module")
    r = Reader(data, 8)
    types, imports, exports, funcs, memories, sections = [], [], [], [], [], []
    while r.pos < len(data):
        sid = r.byte()
        size = r.uleb()
        start = r.pos
        s = Reader(data, start, start + size)
        label = SECTIONS.get(sid, str(sid))
        if sid == 0:
            label = "custom " + s.name()
        sections.append((label, size))
        if sid == 1:
            for _ in range(s.uleb()):
                assert s.byte() == 0x60
                params = [VALTYPES.get(s.byte(), "?") for _ in range(s.uleb())]
                results = [VALTYPES.get(s.byte(), "?") for _ in range(s.uleb())]
                types.append((params, results))
        elif sid == 2:
            for _ in range(s.uleb()):
                module, field, kind = s.name(), s.name(), s.byte()
                if kind == 0:
                    imports.append((module, field, "func", s.uleb()))
                elif kind == 1:
                    s.byte()
                    imports.append((module, field, "table", s.limits()))
                elif kind == 2:
                    imports.append((module, field, "memory", s.limits()))
                elif kind == 3:
                    imports.append((module, field, "global", (s.byte(), s.byte())))
                else:
                    imports.append((module, field, KINDS.get(kind, kind), s.uleb()))
        elif sid == 3:
            funcs = [s.uleb() for _ in range(s.uleb())]
        elif sid == 5:
            memories = [s.limits() for _ in range(s.uleb())]
        elif sid == 7:
            for _ in range(s.uleb()):
                exports.append((s.name(), KINDS.get(s.byte(), "?"), s.uleb()))
        r.pos = start + size
    return types, imports, exports, funcs, memories, sections


def sig(types, index):
    params, results = types[index]
    return "(%s) -> %s" % (", ".join(params), ", ".join(results) or "()")


def main():
    path = sys.argv[1]
    data = open(path, "rb").read()
    types, imports, exports, funcs, memories, sections = parse(data)
    print("%s: %d bytes" % (path, len(data)))
    custom = sum(size for label, size in sections if label.startswith("custom"))
    print("  %d bytes in custom sections (debug info, names), %d without them"
          % (custom, len(data) - custom))
    print("\nimports (%d):" % len(imports))
    imported_funcs = 0
    for module, field, kind, desc in imports:
        if kind == "func":
            imported_funcs += 1
            print("  %s.%s %s" % (module, field, sig(types, desc)))
        else:
            print("  %s.%s %s %s" % (module, field, kind, desc))
    print("\nexports (%d):" % len(exports))
    for name, kind, index in exports:
        if kind == "func" and index >= imported_funcs:
            print("  %s %s" % (name, sig(types, funcs[index - imported_funcs])))
        else:
            print("  %s (%s)" % (name, kind))
    for lo, hi in memories:
        print("\nmemory: %d pages (%d KiB) initial, max %s" % (lo, lo * 64, hi))
    print("\nsections:")
    for label, size in sections:
        print("  %-28s %9d" % (label, size))


if __name__ == "__main__":
    main()
