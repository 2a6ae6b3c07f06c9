#!/usr/bin/env python3
"""Layout rules the compiler does not check (ARCHITECTURE.md, "Where each
rule lives"):

1. No import cycle between the files of a crate. A file imports another
   when it names an item defined there (`use crate::a::b`, `super::x`,
   `crate::a::b::f()` in code), following re-exports to the defining file.
   A parent's `mod child;` and `pub use child::X` re-exports are not
   imports.
2. No file of one metadata backend imports another backend.
3. No crate outside `cli` (and the metadata crate itself) names
   `MetadataStore`: components take the narrow trait they use.

Prints each violation and exits 1 if there is any. Rule 3 is checked only
with --narrow-traits until every component has moved to narrow traits.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
CRATES = os.path.join(ROOT, 'crates')
BACKENDS = ('sqlite', 'postgres')

USE_RE = re.compile(r'^\s*(pub(?:\([a-z]+\))?\s+)?use\s+([^;]+);', re.M)
CHILD_RE = re.compile(r'(?<![:\w])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)')
PATH_RE = re.compile(r'\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)')


def module_files(src):
    """Module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for d, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            full = os.path.join(d, f)
            rel = os.path.relpath(full, src)[:-3].split(os.sep)
            # A binary beside a library uses the library by its crate
            # name, not `crate::`: only the library is a module tree.
            if rel == ['main'] and os.path.exists(os.path.join(src, 'lib.rs')):
                continue
            if rel == ['lib'] or rel == ['main']:
                mod = ()
            elif rel[-1] == 'mod':
                mod = tuple(rel[:-1])
            else:
                mod = tuple(rel)
            out[mod] = full
    return out


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    # Aliases first (`x as y`), while the spaces still mark the keyword:
    # a module named `assignors` is not an alias.
    tree = re.sub(r'\s+as\s+[A-Za-z_0-9]+', '', tree)
    tree = re.sub(r'\s+', '', tree)
    depth, i = 0, 0
    for i, ch in enumerate(tree):
        if ch == '{':
            prefix, inner = tree[:i], tree[i + 1:-1]
            parts, buf, depth = [], '', 0
            for c in inner:
                if c == ',' and depth == 0:
                    parts.append(buf)
                    buf = ''
                    continue
                depth += c == '{'
                depth -= c == '}'
                buf += c
            parts.append(buf)
            return [p for part in parts if part
                    for p in expand_use(prefix + part)]
    return [tree.rstrip(':')]


def strip_comments(text):
    text = re.sub(r'//[^\n]*', '', text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def analyse(crate_src):
    mods = module_files(crate_src)
    texts = {m: strip_comments(open(f).read()) for m, f in mods.items()}
    # Re-exports: module -> name -> absolute path of the re-exported item.
    reexports = defaultdict(dict)
    for m, text in texts.items():
        for vis, tree in USE_RE.findall(text):
            if not vis:
                continue
            for path in expand_use(tree):
                first = path.split('::')[0]
                if m + (first,) in mods:
                    path = 'self::' + path  # `pub use child::X`
                segs = absolute(m, path.split('::'), nested=False)
                if segs:
                    reexports[m][segs[-1]] = segs
    edges = defaultdict(set)
    for m, text in texts.items():
        for line in text.split('\n'):
            nested = line.startswith('    ')  # inside an inline `mod tests`
            stripped = line.strip()
            if re.match(r'pub(\([a-z]+\))?\s+use\s', stripped):
                continue  # a re-export is not an import
            paths = []
            um = USE_RE.match(line)
            if um:
                paths = ['self::' + p if m + (p.split('::')[0],) in mods else p
                         for p in expand_use(um.group(2))]
            else:
                paths = [k + rest for k, rest in PATH_RE.findall(line)]
            if not um:
                # Paths through a child module: `sqlite::parse_url(..)`.
                for child, rest in CHILD_RE.findall(line):
                    if m + (child,) in mods:
                        paths.append('self::' + child + rest)
            for p in paths:
                segs = absolute(m, p.split('::'), nested)
                if segs is None:
                    continue
                target = resolve(segs, mods, reexports)
                if target is not None and target != m:
                    edges[m].add(target)
        # A parent that uses what it re-exports imports it too.
        body = '\n'.join(l for l in text.split('\n') if not USE_RE.match(l))
        for item, segs in reexports[m].items():
            if re.search(r'\b' + re.escape(item) + r'\b', body):
                target = resolve(segs, mods, reexports)
                if target is not None and target != m:
                    edges[m].add(target)
    return mods, edges


def absolute(m, segs, nested):
    """Absolute module path of `segs` as written in module `m`, or None for
    paths outside the crate."""
    if not segs or segs[0] not in ('crate', 'super', 'self'):
        return None
    if segs[0] == 'crate':
        return tuple(segs[1:])
    base = list(m)
    if nested:
        base.append('<inline>')
    while segs and segs[0] in ('super', 'self'):
        if segs[0] == 'super':
            base = base[:-1]
        segs = segs[1:]
    base = [b for b in base if b != '<inline>']
    return tuple(base) + tuple(s for s in segs if s != '*')


def resolve(segs, mods, reexports, depth=0):
    """The file module that defines the item at absolute path `segs`."""
    for n in range(len(segs), -1, -1):
        if segs[:n] in mods:
            m = segs[:n]
            rest = segs[n:]
            if rest and rest[0] in reexports.get(m, {}) and depth < 8:
                target = reexports[m][rest[0]]
                if target[:len(m)] != m or len(target) > len(m) + 1:
                    return resolve(target + rest[1:], mods, reexports, depth + 1)
            return m
    return None


def cycles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(crate, m):
    return f"{crate}/{'::'.join(m) or 'lib'}"


def main():
    narrow = '--narrow-traits' in sys.argv
    problems = []
    for crate in sorted(os.listdir(CRATES)):
        src = os.path.join(CRATES, crate, 'src')
        if not os.path.isdir(src):
            continue
        mods, edges = analyse(src)
        for comp in cycles(edges):
            chain = []
            for a in comp:
                for b in sorted(edges[a]):
                    if b in comp:
                        chain.append(f"{'::'.join(a) or 'lib'} -> {'::'.join(b) or 'lib'}")
            problems.append(f"import cycle in {crate}: " + ', '.join(chain))
        if crate == 'meta':
            for a, targets in edges.items():
                for b in targets:
                    if a and b and a[0] in BACKENDS and b[0] in BACKENDS and a[0] != b[0]:
                        problems.append(f"backend {name(crate, a)} imports backend {name(crate, b)}")
        if narrow and crate not in ('cli', 'meta'):
            for m, f in mods.items():
                if re.search(r'\bMetadataStore\b', strip_comments(open(f).read())):
                    problems.append(f"{name(crate, m)} names MetadataStore (take the narrow trait)")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
