"""The product speaks of the product only: no machine paths, no lock-file rituals, no citation of
a spec file that is not in the repository (committed results, which record the commands that
made them, are exempt)."""
import gzip
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXEMPT = ("benchmarks/results/", "reports/")
# built from pieces so that this file does not match itself
FORBIDDEN = [re.compile(p) for p in (r"\bfl" + r"ock\s", r"SP" + r"EC\.md", r"/wo" + r"rk/",
                                     r"/ro" + r"ot/", r"/ho" + r"me/\w+",
                                     r"heavy-job " + r"lock")]


def _files():
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        names = out.splitlines()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()
                 and not any(x in p.parts for x in (".git", ".venv", "out", "__pycache__"))]
    return [n for n in names if not n.startswith(EXEMPT) and (ROOT / n).is_file()]


def test_no_machine_paths_lock_rituals_or_outside_spec_in_the_product():
    hits = []
    for name in _files():
        data = (ROOT / name).read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary (the corpus is checked below)
        for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            hits += [f"{name}:{lineno}: {line.strip()[:80]}" for p in FORBIDDEN if p.search(line)]
    assert not hits, "\n".join(hits)


def test_sample_corpus_names_no_path_of_the_machine_that_built_it():
    path = ROOT / "src" / "longforge" / "data" / "sample" / "corpus.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        bad = [d["id"] for d in map(json.loads, fh)
               if any(p.search(d["meta"].get("path", "")) for p in FORBIDDEN)]
    assert not bad, bad[:5]
