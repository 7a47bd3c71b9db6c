"""The map matches the house: every `#include "part/..."` under src/ is allowed by the table in
docs/architecture.md (the ```parts block: `part: the parts it may use`), every folder of src/ is
on it and every part it names is a folder, the table has no circles, and the README's Layout
names every folder.

No daemon is started: this reads the source tree as it stands.
"""
import os
import re
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SRC = os.path.join(ROOT, "src")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/[^"]+"')


def read_table(text):
    m = re.search(r"```parts\n(.*?)```", text, re.S)
    if not m:
        raise AssertionError("docs/architecture.md has no ```parts block")
    table = {}
    for line in m.group(1).splitlines():
        if not line.strip():
            continue
        part, _, uses = line.partition(":")
        table[part.strip()] = set(uses.split())
    return table


def includes(src=SRC):
    """(part, file, line number, included part) for each include of another part."""
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        part = rel.split(os.sep)[0]
        for f in sorted(files):
            if not f.endswith((".cpp", ".hpp")):
                continue
            path = os.path.join(root, f)
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    m = INCLUDE.match(line)
                    if m and m.group(1) != part:
                        yield part, os.path.relpath(path, ROOT), n, m.group(1)


def breaches(table, found):
    out = []
    for part, path, n, used in found:
        if used not in table.get(part, set()):
            out.append(f"{path}:{n}: {part}/ includes {used}/, which docs/architecture.md "
                       f"does not let it use")
    return out


def circles(table):
    seen, stack, out = set(), [], []

    def visit(p):
        if p in stack:
            out.append(" -> ".join(stack[stack.index(p):] + [p]))
            return
        if p in seen:
            return
        seen.add(p)
        stack.append(p)
        for q in sorted(table.get(p, ())):
            visit(q)
        stack.pop()

    for p in sorted(table):
        visit(p)
    return out


class ArchitectureTest(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as f:
            self.table = read_table(f.read())
        self.folders = {d for d in os.listdir(SRC) if os.path.isdir(os.path.join(SRC, d))}

    def test_every_include_is_allowed_by_the_table(self):
        self.assertEqual(breaches(self.table, includes()), [])

    def test_the_table_names_every_folder_and_only_folders(self):
        self.assertEqual(sorted(self.folders - set(self.table)), [], "folders not on the table")
        named = set(self.table) | set().union(*self.table.values())
        self.assertEqual(sorted(named - self.folders), [], "parts on the table with no folder")

    def test_the_table_has_no_circles(self):
        self.assertEqual(circles(self.table), [])

    def test_the_readme_layout_names_every_folder(self):
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        m = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
        self.assertIsNotNone(m, "README.md has no ## Layout section")
        missing = sorted(d for d in self.folders if f"`{d}/`" not in m.group(1))
        self.assertEqual(missing, [], "folders the README's Layout does not name")

    def test_a_forbidden_include_is_caught(self):
        # The check itself can fail: a store/ file including smtp/ is a breach.
        found = [("store", "src/store/x.cpp", 3, "smtp")]
        self.assertEqual(len(breaches(self.table, found)), 1)
        self.assertEqual(circles({"a": {"b"}, "b": {"a"}}), ["a -> b -> a"])


if __name__ == "__main__":
    unittest.main()
