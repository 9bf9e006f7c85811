#!/usr/bin/env python3
"""Build longforge's bundled multi-domain sample corpus from text already on this machine.

Every document is real text that nobody on the project wrote: CPython standard-library
source and docstrings, the Python documentation topics shipped in ``pydoc_data``,
licence texts, Debian ``copyright`` files and ``changelog.Debian.gz`` files, and
rendered English man pages.

The build is deterministic: file walks are sorted, selection uses fixed rules
(evenly spaced picks over sorted candidates, no randomness), exact-duplicate texts are
dropped keeping the first by sorted id, and the gzip stream is written with
``mtime=0`` and no embedded file name, so rebuilding on the same Debian / Python
install gives identical bytes.

Usage (from the repository root; run with CPython 3.11.7 so the stdlib matches the
shipped PROVENANCE.md)::

    python scripts/build_sample_corpus.py            # writes src/longforge/data/sample/
    python scripts/build_sample_corpus.py --out-dir out/sample-corpus

Output: ``corpus.jsonl.gz`` (one JSON object per line:
``{"id", "text", "source", "meta": {"path", "license", ...}}``) and ``PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "src" / "longforge" / "data" / "sample"

MIN_CHARS = 200  # documents shorter than this are dropped
MAX_CHARS = 80_000  # longer documents are cut at a line boundary
CHANGELOG_MAX_CHARS = 15_000  # changelogs: keep only the most recent entries
MAX_PER_DOMAIN = 550  # evenly spaced deterministic pick over sorted candidates
MAN_SECTIONS = ("man1", "man2", "man3", "man4", "man5", "man6", "man7", "man8")
MAN_ROOT = Path("/usr/share/man")
DOC_ROOT = Path("/usr/share/doc")
COMMON_LICENSES = Path("/usr/share/common-licenses")
DPKG_INFO = Path("/var/lib/dpkg/info")

PSF = "PSF-2.0 (Python Software Foundation License Version 2)"

DOMAINS = (
    "python-stdlib-code",
    "python-docstrings",
    "python-docs",
    "licenses",
    "debian-copyright",
    "debian-changelog",
    "man-pages",
)


@dataclass
class Doc:
    id: str
    text: str
    source: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        obj = {"id": self.id, "text": self.text, "source": self.source, "meta": self.meta}
        return json.dumps(obj, ensure_ascii=False)


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def decode_bytes(raw: bytes) -> str | None:
    """Decode file bytes to clean text, or None for binary-looking data."""
    if not raw:
        return None
    if raw.count(b"\x00") > max(1, len(raw) // 1000):
        return None  # binary
    raw = raw.replace(b"\x00", b"")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old Debian files are occasionally Latin-1
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # drop C0 controls other than tab/newline/form feed (e.g. stray escapes)
    text = re.sub(r"[\x00-\x08\x0b\x0d-\x1f\x7f]", "", text)
    return text


def read_text(path: Path) -> str | None:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return decode_bytes(raw)


def cut_at_line(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at the last line boundary."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    if cut <= 0:
        cut = limit
    return text[:cut].rstrip()


def pick_evenly(items: list, m: int) -> list:
    """Deterministic evenly spaced subset of ``items`` (kept in order)."""
    n = len(items)
    if n <= m:
        return list(items)
    return [items[(i * n) // m] for i in range(m)]


def finish(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip("\n ").replace("\x00", "")
    text = cut_at_line(text, MAX_CHARS)
    if len(text) < MIN_CHARS:
        return None
    return text


def run_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- Debian licence lookup


def parse_dep5(text: str) -> list[dict[str, str]] | None:
    """Parse a machine-readable (DEP-5) copyright file into stanzas (first line of each field)."""
    first = text.lstrip().split("\n", 1)[0]
    if not re.match(r"(?i)format(-specification)?:\s*\S*copyright-format", first) and not re.match(
        r"(?i)format(-specification)?:.*(dep-?5|copyright-format)", first
    ):
        return None
    stanzas: list[dict[str, str]] = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            m = re.match(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$", line)
            if m:
                key = m.group(1).lower()
                fields[key] = m.group(2).strip()
            elif key and line[:1] in (" ", "\t") and not fields[key]:
                fields[key] = line.strip()  # value starts on a continuation line
        if fields:
            stanzas.append(fields)
    return stanzas


_LICENSE_CACHE: dict[str, tuple[str | None, str | None]] = {}


def package_licenses(pkg: str) -> tuple[str | None, str | None]:
    """(licence of ``Files: *``, licence of ``Files: debian/*``) from the package's copyright file."""
    if pkg in _LICENSE_CACHE:
        return _LICENSE_CACHE[pkg]
    main = deb = None
    path = DOC_ROOT / pkg / "copyright"
    if path.is_file():
        text = read_text(path) or ""
        stanzas = parse_dep5(text)
        if stanzas:
            for st in stanzas:
                files = st.get("files", "").split()
                lic = st.get("license", "").strip()
                if not lic:
                    continue
                if main is None and "*" in files:
                    main = lic
                if deb is None and any(f in ("debian/*", "debian/", "debian") for f in files):
                    deb = lic
    _LICENSE_CACHE[pkg] = (main, deb)
    return main, deb


def debian_packaging_license(pkg: str) -> str:
    main, deb = package_licenses(pkg)
    where = f"/usr/share/doc/{pkg}/copyright"
    if deb:
        return f"{deb} (licence of the Debian packaging of {pkg}, per {where})"
    if main:
        return f"{main} (package {pkg}'s main licence; no separate debian/* stanza in {where})"
    return f"see {where} (not machine-readable; Debian packaging of {pkg})"


def package_license(pkg: str | None) -> str:
    if not pkg:
        return "unknown (file not owned by any dpkg package)"
    main, _ = package_licenses(pkg)
    where = f"/usr/share/doc/{pkg}/copyright"
    if main:
        return f"{main} (licence of package {pkg}, per {where})"
    return f"as stated by package {pkg} in {where}"


def dpkg_owners() -> dict[str, str]:
    """Map every dpkg-owned path to its (arch-stripped) package name."""
    owners: dict[str, str] = {}
    for lst in sorted(DPKG_INFO.glob("*.list")):
        pkg = lst.name[: -len(".list")].split(":", 1)[0]
        for line in lst.read_text(encoding="utf-8", errors="replace").splitlines():
            owners.setdefault(line, pkg)
    return owners


# --------------------------------------------------------------------------- Python domains

EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "_bundled"}


def stdlib_path(path: Path, stdlib: Path) -> str:
    """A stdlib file as ``CPython-<version>/Lib/<relative path>``: where it sits in any CPython
    source tree, not on the machine that built the corpus."""
    return f"CPython-{platform.python_version()}/Lib/{Path(path).relative_to(stdlib).as_posix()}"


def stdlib_modules(stdlib: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        rel = Path(dirpath).relative_to(stdlib)
        if any(p in EXCLUDED_DIRS or p.startswith("config-") for p in rel.parts):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                out.append(Path(dirpath) / fn)
    return sorted(out, key=lambda p: p.relative_to(stdlib).as_posix())


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def build_stdlib_code(stdlib: Path, modules: list[Path]) -> list[Doc]:
    docs = []
    for path in modules:
        rel = path.relative_to(stdlib).as_posix()
        if rel == "pydoc_data/topics.py":
            continue  # a generated data dict; used as the python-docs domain instead
        text = read_text(path)
        if text is None or "gencodec.py" in text:
            continue  # skip generated charmap codec tables (encodings/cp*.py etc.)
        text = finish(text)
        if text:
            docs.append(Doc(f"python-stdlib-code/{rel}", text, "python-stdlib-code", {"path": stdlib_path(path, stdlib), "license": PSF}))
    return docs


def collect_docstrings(tree: ast.Module, modname: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        found.append((modname, doc))

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}.{child.name}"
                d = ast.get_docstring(child, clean=True)
                if d:
                    found.append((qual, d))
                if isinstance(child, ast.ClassDef):
                    visit(child, qual)
            elif isinstance(child, ast.stmt):
                visit(child, prefix)  # if/try/with blocks at module or class level

    visit(tree, modname)
    return found


def build_stdlib_docstrings(stdlib: Path, modules: list[Path]) -> list[Doc]:
    docs = []
    for path in modules:
        rel = path.relative_to(stdlib)
        text = read_text(path)
        if text is None:
            continue
        try:
            tree = ast.parse(text, filename=str(path))
        except SyntaxError:
            continue
        modname = module_name(rel)
        parts = []
        seen = set()
        for qual, d in collect_docstrings(tree, modname):
            if qual in seen:
                continue  # e.g. alternative definitions under if/else
            seen.add(qual)
            level = "#" if qual == modname else "##"
            parts.append(f"{level} {qual}\n\n{d.strip()}\n")
        body = finish("\n".join(parts))
        if body:
            docs.append(Doc(f"python-docstrings/{modname}", body, "python-docstrings", {"path": stdlib_path(path, stdlib), "license": PSF}))
    return docs


def build_python_docs(stdlib: Path) -> list[Doc]:
    path = stdlib / "pydoc_data" / "topics.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    topics = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
    if not isinstance(topics, dict):
        return []
    docs = []
    for key in sorted(topics):
        text = finish(decode_bytes(topics[key].encode("utf-8")))
        if text:
            docs.append(
                Doc(
                    f"python-docs/{key}",
                    text,
                    "python-docs",
                    {"path": f"{stdlib_path(path, stdlib)}#{key}", "license": PSF + "; from the Python documentation (pydoc topics)"},
                )
            )
    return docs


# --------------------------------------------------------------------------- licence texts

LICENSE_NAME_RE = re.compile(r"(?i)^(licen[cs]es?|copying)([._-](txt|md|rst|bsd|apache|golang|mit|lesser))?(\.gz)?$")
VERBATIM = "the licence text itself; verbatim redistribution permitted by its own terms / its steward"


def build_licenses(stdlib: Path, owners: dict[str, str]) -> list[Doc]:
    docs = []
    for path in sorted(COMMON_LICENSES.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue  # e.g. GPL -> GPL-3
        text = finish(read_text(path))
        if text:
            docs.append(Doc(f"licenses/common-licenses/{path.name}", text, "licenses", {"path": str(path), "license": VERBATIM, "package": "base-files"}))
    py_license = stdlib / "LICENSE.txt"
    if py_license.is_file():
        text = finish(read_text(py_license))
        if text:
            docs.append(Doc("licenses/cpython/LICENSE.txt", text, "licenses", {"path": stdlib_path(py_license, stdlib), "license": VERBATIM}))
    # LICENSE / COPYING files shipped inside installed Debian packages (dpkg-owned only)
    for p in sorted(owners):
        path = Path(p)
        if not LICENSE_NAME_RE.match(path.name) or p.startswith(str(COMMON_LICENSES)):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        text = finish(read_text(path))
        if text:
            name = p.lstrip("/").removesuffix(".gz")
            docs.append(Doc(f"licenses/{name}", text, "licenses", {"path": p, "license": VERBATIM, "package": owners[p]}))
    return docs


# --------------------------------------------------------------------------- Debian docs

CHANGELOG_HEADER = re.compile(r"^\S.*\(.*\).*;.*urgency=", re.M)


def cut_changelog(text: str) -> str:
    if len(text) <= CHANGELOG_MAX_CHARS:
        return text
    starts = [m.start() for m in CHANGELOG_HEADER.finditer(text, 0, CHANGELOG_MAX_CHARS)]
    starts = [s for s in starts if s > 0]
    if starts and starts[-1] >= 2000:
        return text[: starts[-1]].rstrip()  # keep whole entries
    return cut_at_line(text, CHANGELOG_MAX_CHARS)


def doc_packages() -> list[str]:
    """Packages with their own (non-symlinked) /usr/share/doc directory, sorted."""
    return sorted(e.name for e in os.scandir(DOC_ROOT) if e.is_dir(follow_symlinks=False))


def build_debian_copyright() -> list[Doc]:
    docs = []
    for pkg in doc_packages():
        path = DOC_ROOT / pkg / "copyright"
        if path.is_symlink() or not path.is_file():
            continue
        text = finish(read_text(path))
        if text:
            docs.append(Doc(f"debian-copyright/{pkg}", text, "debian-copyright", {"path": str(path), "license": debian_packaging_license(pkg), "package": pkg}))
    return docs


def build_debian_changelog() -> list[Doc]:
    docs = []
    for pkg in doc_packages():
        path = DOC_ROOT / pkg / "changelog.Debian.gz"
        if path.is_symlink() or not path.is_file():
            continue
        text = read_text(path)
        if text is None:
            continue
        text = finish(cut_changelog(text.strip()))
        if text:
            docs.append(Doc(f"debian-changelog/{pkg}", text, "debian-changelog", {"path": str(path), "license": debian_packaging_license(pkg), "package": pkg}))
    return docs


# --------------------------------------------------------------------------- man pages


def man_candidates(owners: dict[str, str]) -> list[tuple[str, Path]]:
    """(package, path) for real (non-symlink, non-.so-stub) English man pages, sorted by path."""
    out = []
    for sec in MAN_SECTIONS:
        d = MAN_ROOT / sec
        if not d.is_dir():
            continue
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            if not e.is_file(follow_symlinks=False):
                continue
            path = Path(e.path)
            try:
                head = read_text(path) if e.stat().st_size < 400 else "x" * 1000
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            if head is None or head.lstrip().startswith(".so ") and len(head) < 400:
                continue  # .so redirect stub
            out.append((owners.get(str(path), ""), path))
    return out


def select_man_pages(cands: list[tuple[str, Path]], total: int) -> list[tuple[str, Path]]:
    """Balance across packages: the largest per-package cap k with sum(min(n_p, k)) <= total,
    then an evenly spaced pick of k pages inside each package (google-cloud-cli alone ships
    ~16k generated gcloud pages)."""
    by_pkg: dict[str, list[Path]] = {}
    for pkg, path in cands:
        by_pkg.setdefault(pkg, []).append(path)
    k = 1
    while sum(min(len(v), k + 1) for v in by_pkg.values()) <= total and k < max(len(v) for v in by_pkg.values()):
        k += 1
    chosen = []
    for pkg in sorted(by_pkg):
        for path in pick_evenly(by_pkg[pkg], k):
            chosen.append((pkg, path))
    return sorted(chosen, key=lambda t: str(t[1]))


def render_man(path: Path) -> str | None:
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "MANWIDTH": "80",
        "MANPAGER": "cat",
        "PAGER": "cat",
        "HOME": "/nonexistent",
        "MAN_DISABLE_SECCOMP": "1",
    }
    try:
        man = subprocess.run(["man", "--nh", "--nj", "-l", str(path)], capture_output=True, env=env, timeout=60)
        if man.returncode != 0 or not man.stdout:
            return None
        col = subprocess.run(["col", "-bx"], input=man.stdout, capture_output=True, env=env, timeout=60)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if col.returncode != 0:
        return None
    text = decode_bytes(col.stdout)
    if text is None:
        return None
    # collapse runs of blank lines left by the formatter
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.split("\n")))
    return text


def man_id(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return f"man-pages/{path.parent.name}/{name}"


def build_man_pages(owners: dict[str, str], limit: int) -> list[Doc]:
    cands = man_candidates(owners)
    # render a few more than needed: some pages fail, are too short, or duplicate others
    chosen = select_man_pages(cands, int(limit * 1.1))
    log(f"  man-pages: {len(cands)} candidates, rendering {len(chosen)}")
    docs = []
    for i, (pkg, path) in enumerate(chosen):
        text = finish(render_man(path))
        if text:
            docs.append(Doc(man_id(path), text, "man-pages", {"path": str(path), "license": package_license(pkg), "package": pkg or None}))
        if (i + 1) % 100 == 0:
            log(f"    rendered {i + 1}/{len(chosen)}")
    return docs


# --------------------------------------------------------------------------- assembly


def dedup(docs: list[Doc]) -> tuple[list[Doc], int]:
    seen: set[str] = set()
    out = []
    dropped = 0
    for d in sorted(docs, key=lambda d: d.id):
        h = hashlib.sha256(d.text.encode("utf-8")).hexdigest()
        if h in seen:
            dropped += 1
            continue
        seen.add(h)
        out.append(d)
    return out, dropped


def write_gz(path: Path, lines: list[str]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") + b"\n")
    path.write_bytes(buf.getvalue())


def versions() -> dict[str, str]:
    def dpkg_ver(pkg: str) -> str:
        return run_out(["dpkg-query", "-W", "-f=${Version}", pkg]) or "?"

    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    osrel = {}
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                osrel[k] = v.strip('"')
    return {
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "debian": debian,
        "os": osrel.get("PRETTY_NAME", "?"),
        "man-db": dpkg_ver("man-db"),
        "groff-base": dpkg_ver("groff-base"),
        "bsdextrautils (col)": dpkg_ver("bsdextrautils"),
        "base-files": dpkg_ver("base-files"),
        "google-cloud-cli": dpkg_ver("google-cloud-cli"),
    }


def length_stats(docs: list[Doc]) -> tuple[int, int, int]:
    lens = sorted(len(d.text) for d in docs)
    return lens[0], int(statistics.median(lens)), lens[-1]


PROVENANCE_TEMPLATE = """\
# Sample corpus provenance

`corpus.jsonl.gz` is a small multi-domain corpus of **real text that nobody on the
longforge project wrote**, assembled deterministically from files installed on the
build machine (a Debian container with a pyenv CPython). It exists so that tests,
demos and benchmarks have varied, realistic long and short documents without any
network access.

Each line is a JSON object:

```json
{{"id": "<domain>/<stable-name>", "text": "...", "source": "<domain>",
 "meta": {{"path": "<file it came from>", "license": "<licence of that text>", "package": "<dpkg package, where relevant>"}}}}
```

## Build

```sh
{command}
```

Rebuilding on the same installation gives byte-identical output (sorted walks, fixed
selection rules, no randomness, gzip with `mtime=0` and no embedded file name; this
file is generated by the same run).

Build environment:

| component | version |
|---|---|
{versions_table}

## Rules

* Texts are decoded as UTF-8 (Latin-1 fallback), NULs and C0 control characters other
  than tab / newline / form feed removed, CRLF normalised, leading/trailing blank lines
  stripped. Files with many NUL bytes are treated as binary and skipped.
* Documents longer than {max_chars:,} characters are cut at a line boundary; documents
  shorter than {min_chars} characters are dropped.
* Exact duplicate texts are removed across all domains, keeping the first by sorted id
  ({dup_dropped} duplicates dropped).
* At most {per_domain} documents per domain, chosen as an evenly spaced pick over the
  candidates sorted by id (`items[(i * n) // m]`).

## Domains

| domain | documents | min chars | median chars | max chars | source |
|---|---:|---:|---:|---:|---|
{domain_table}
| **total** | **{total}** | {tmin} | {tmed} | {tmax} | |

Documents longer than 8,000 characters: {n_long}.

### `python-stdlib-code`
Source of CPython {python} standard-library modules (`{stdlib}`, `*.py`, sorted walk),
one document per module, excluding `test`/`tests`/`idle_test` packages, `site-packages`,
bundled wheels, generated charmap codec tables (files mentioning `gencodec.py`) and
`pydoc_data/topics.py`. **Licence: PSF License Version 2** (Python Software Foundation
License; see `licenses/cpython/LICENSE.txt` in the corpus itself).

### `python-docstrings`
Module, class, function and method docstrings of the same modules, extracted with `ast`
(no module is imported), concatenated in source order under `#`/`##` headings with the
qualified name. **Licence: PSF License Version 2.**

### `python-docs`
The documentation topics of `pydoc_data/topics.py` (`help()`'s topic texts, generated
from the Python Language Reference and Library docs), one document per topic, read
with `ast.literal_eval`. **Licence: PSF License Version 2** (the Python documentation
is distributed under the PSF licence; code examples in it are also under the Zero-Clause
BSD licence).

### `licenses`
Licence texts: `/usr/share/common-licenses/*` (package `base-files`; symlinks such as
`GPL -> GPL-3` skipped), the CPython `LICENSE.txt`, and the `LICENSE`/`COPYING`-named
files shipped inside installed Debian packages (dpkg-owned paths only, mostly the
vendored third-party libraries of `google-cloud-cli`, plus nodejs/npm, git, ICU, LLVM).
**Licence:** these are the licence texts themselves; verbatim copies may be
redistributed under the texts' own terms (e.g. the GNU licences: "Everyone is
permitted to copy and distribute verbatim copies of this license document, but
changing it is not allowed"). `meta.package` names the owning package.

### `debian-copyright`
`/usr/share/doc/<package>/copyright` (Debian copyright files, plain text), for packages
with their own (non-symlinked) doc directory. **Licence:** each file is part of its
package's Debian packaging; `meta.license` gives the licence of the `Files: debian/*`
stanza where the file is machine-readable (DEP-5), else the package's `Files: *`
licence, else refers to the file itself.

### `debian-changelog`
`/usr/share/doc/<package>/changelog.Debian.gz`, decompressed, keeping the most recent
entries up to ~{changelog_chars:,} characters (cut at an entry boundary). **Licence:**
as for `debian-copyright` (the changelog is part of the Debian packaging).

### `man-pages`
English man pages from `/usr/share/man/man1`..`man8` (language subdirectories,
symlinks and `.so` redirect stubs skipped), rendered to plain text with
`MANWIDTH=80 LC_ALL=C.UTF-8 man --nh --nj -l FILE | col -bx`. Because
`google-cloud-cli` alone ships ~16,600 generated `gcloud` pages, pages are balanced
across owning packages: the largest per-package cap `k` such that the total stays
within {man_budget} is chosen and an evenly spaced `k` pages are rendered per package
(sorted by path); the domain is then capped like the others. **Licence:** as stated by
the owning package's `/usr/share/doc/<package>/copyright` (`Files: *` stanza);
`meta.license` records it per page.
"""


def write_provenance(out_dir: Path, docs: list[Doc], dup_dropped: int, stdlib: Path, command: str) -> str:
    v = versions()
    versions_table = "\n".join(f"| {k} | {val} |" for k, val in v.items())
    rows = []
    sources = {
        "python-stdlib-code": "CPython stdlib `*.py`",
        "python-docstrings": "CPython stdlib docstrings (ast)",
        "python-docs": "`pydoc_data.topics`",
        "licenses": "licence texts",
        "debian-copyright": "`/usr/share/doc/*/copyright`",
        "debian-changelog": "`/usr/share/doc/*/changelog.Debian.gz`",
        "man-pages": "`/usr/share/man/man[1-8]`",
    }
    for dom in DOMAINS:
        ds = [d for d in docs if d.source == dom]
        if not ds:
            continue
        mn, md, mx = length_stats(ds)
        rows.append(f"| `{dom}` | {len(ds)} | {mn} | {md} | {mx} | {sources[dom]} |")
    tmin, tmed, tmax = length_stats(docs)
    text = PROVENANCE_TEMPLATE.format(
        command=command,
        versions_table=versions_table,
        max_chars=MAX_CHARS,
        min_chars=MIN_CHARS,
        dup_dropped=dup_dropped,
        per_domain=MAX_PER_DOMAIN,
        domain_table="\n".join(rows),
        total=len(docs),
        tmin=tmin,
        tmed=tmed,
        tmax=tmax,
        n_long=sum(len(d.text) > 8000 for d in docs),
        python=v["python"],
        stdlib=f"CPython-{v['python']}/Lib",
        changelog_chars=CHANGELOG_MAX_CHARS,
        man_budget=int(MAX_PER_DOMAIN * 1.1),
    )
    (out_dir / "PROVENANCE.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]), help="CPython stdlib directory (default: this interpreter's)")
    args = ap.parse_args(argv)
    stdlib = args.stdlib.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    log("indexing dpkg-owned files ...")
    owners = dpkg_owners()
    modules = stdlib_modules(stdlib)

    builders = [
        ("python-stdlib-code", lambda: build_stdlib_code(stdlib, modules)),
        ("python-docstrings", lambda: build_stdlib_docstrings(stdlib, modules)),
        ("python-docs", lambda: build_python_docs(stdlib)),
        ("licenses", lambda: build_licenses(stdlib, owners)),
        ("debian-copyright", build_debian_copyright),
        ("debian-changelog", build_debian_changelog),
        ("man-pages", lambda: build_man_pages(owners, MAX_PER_DOMAIN)),
    ]
    candidates: list[Doc] = []
    for name, fn in builders:
        log(f"building {name} ...")
        got = fn()
        log(f"  {len(got)} candidates")
        candidates.extend(got)

    ids = [d.id for d in candidates]
    assert len(ids) == len(set(ids)), "duplicate ids"
    unique, dup_dropped = dedup(candidates)

    final: list[Doc] = []
    for dom in DOMAINS:
        ds = [d for d in unique if d.source == dom]  # already sorted by id
        final.extend(pick_evenly(ds, MAX_PER_DOMAIN))
    final.sort(key=lambda d: d.id)

    out = args.out_dir / "corpus.jsonl.gz"
    write_gz(out, [d.to_json() for d in final])
    rel_out = os.path.relpath(args.out_dir, REPO_ROOT) if args.out_dir.resolve().is_relative_to(REPO_ROOT) else str(args.out_dir)
    command = "python scripts/build_sample_corpus.py" + ("" if args.out_dir == DEFAULT_OUT else f" --out-dir {rel_out}")
    write_provenance(args.out_dir, final, dup_dropped, stdlib, f"# CPython {platform.python_version()}\n{command}")

    log(f"wrote {out} ({out.stat().st_size:,} bytes, {len(final)} documents, {dup_dropped} duplicates dropped)")
    for dom in DOMAINS:
        ds = [d for d in final if d.source == dom]
        if ds:
            log(f"  {dom:20s} {len(ds):5d}  min/median/max chars = {length_stats(ds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
