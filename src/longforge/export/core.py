"""``export(run, fmt, output)``: one finished synth run -> one folder a trainer reads.

The folder is built under a temporary name beside ``output`` and renamed into place when
complete (settings.json, the format's files, manifest.json; timings.json apart, so that the
manifest is the same for the same inputs). A rerun with the same settings finds the finished
export and leaves it; other settings are refused (:class:`longforge.runs.SettingsMismatch`).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from longforge.corpus import atomic_write_json
from longforge.export import to_datatrove, to_hf, to_mds, to_megatron
from longforge.export.source import BATCH, Packed, SynthRun
from longforge.progress import progress, say
from longforge.runs import MANIFEST, SETTINGS, RunFolder, SettingsMismatch

WRITERS = {"megatron": to_megatron, "mds": to_mds, "hf": to_hf, "datatrove": to_datatrove}
FORMATS = tuple(WRITERS)
BOUNDARIES = ("sequence", "documents")
TIMINGS = "timings.json"


def check_options(fmt: str, boundaries: str) -> None:
    """A ValueError naming the option, before any work."""
    if fmt not in WRITERS:
        raise ValueError(f"--to must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if boundaries not in BOUNDARIES:
        raise ValueError(f"--boundaries must be one of {', '.join(BOUNDARIES)}, not {boundaries!r}")
    if fmt == "megatron" and boundaries != "sequence":
        raise ValueError("--to megatron keeps document ends as EOD tokens whatever --boundaries "
                         "says; Megatron attends within documents when trained with "
                         "--reset-attention-mask --reset-position-ids (see docs/export.md)")


class _Counts:
    """Totals gathered while the batches stream past (and a progress bar)."""

    def __init__(self, run: SynthRun, fmt: str):
        self.run, self.fmt = run, fmt
        self.sequences = self.pieces = self.pad = 0

    def batches(self, batch_size: int) -> Iterator[list[Packed]]:
        with progress(total=self.run.num_sequences, desc=f"export {self.fmt}", unit="seq") as bar:
            for batch in self.run.batches(batch_size):
                self.sequences += len(batch)
                self.pieces += sum(len(s.spans) for s in batch)
                self.pad += sum(s.n_pad for s in batch)
                bar.update(len(batch))
                yield batch


def _versions(fmt: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("longforge", "numpy", "pyarrow", {"megatron": "megatron-core", "hf": "datasets",
                                                   "datatrove": "datatrove"}.get(fmt)):
        try:
            if pkg:
                out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _files(folder: Path) -> dict[str, int]:
    skip = {SETTINGS, MANIFEST, TIMINGS}
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def _fill(facts, out: str):
    """The writer's facts with ``{out}`` standing for the output folder."""
    if isinstance(facts, dict):
        return {k: _fill(v, out) for k, v in facts.items()}
    return facts.replace("{out}", out) if isinstance(facts, str) else facts


def _finished(out: Path, settings: dict) -> dict | None:
    """The manifest of a finished export with these settings in ``out``, None when there is
    none to keep; refuse a folder of other settings or of unknown content."""
    folder = RunFolder(out, "export")
    if folder.pinned() is not None:
        folder.pin(settings)
        return json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else None
    if out.exists() and any(out.iterdir()):
        raise SettingsMismatch(f"{out} holds files but no {SETTINGS}, so they are not an "
                               "export of this run: choose another --output")
    return None


def export(run_dir: str | Path, fmt: str, output: str | Path, boundaries: str = "sequence",
           retokenize: bool = False, batch_size: int = BATCH) -> dict:
    """Write the synth run ``run_dir`` as ``fmt`` into ``output``; return the manifest."""
    check_options(fmt, boundaries)
    writer = WRITERS[fmt]
    run = SynthRun(run_dir, retokenize)
    writer.check()  # a missing library fails here, before any work
    out = Path(output)
    settings = {"run": str(run.path.resolve()), "run_manifest_sha256": run.manifest_sha256,
                "format": fmt, "boundaries": boundaries, "retokenize": run.retokenize}
    done = _finished(out, settings)
    if done is not None:
        say(f"{out} already holds this export")
        return done
    t0 = time.time()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        RunFolder(tmp, "export").pin(settings)
        counts = _Counts(run, fmt)
        facts = writer.write(run, counts.batches(batch_size), tmp, boundaries)
        facts = _fill(facts, str(out))
        manifest = {
            "source": {"run": str(run_dir), "method": run.method,
                       "manifest_sha256": run.manifest_sha256,
                       "sequences_file": run.sequences_path.name, "token_ids": run.token_source},
            "tokenizer": run.tokenizer, "context_length": run.length, "format": fmt,
            "boundaries": boundaries, "sequences": counts.sequences,
            "tokens": counts.sequences * run.length, "pad_tokens": counts.pad,
            "pieces": counts.pieces, "eos_id": run.eos_id, "pad_id": run.pad_id,
            "eos_inside_documents": run.eos_inside_documents,
            **facts, "files": _files(tmp), "versions": _versions(fmt)}
        RunFolder(tmp, "export").write_manifest(manifest)
        seconds = time.time() - t0
        atomic_write_json(tmp / TIMINGS, {
            "export_s": round(seconds, 3), "sequences_per_s": round(counts.sequences / seconds, 1),
            "tokens_per_s": round(counts.sequences * run.length / seconds),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        if out.exists():
            shutil.rmtree(out)  # an empty folder, or an unfinished export of these settings
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
