"""Run reports: a Markdown file with the loss curve as a PNG, key figures and stage sections."""

from __future__ import annotations

from pathlib import Path

from orizuru.files import atomic_write, read_jsonl


def plot_losses(metrics_path: str | Path, png: str | Path, title: str = "pre-training") -> None:
    """Training loss per logged step and validation loss where evaluated, against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    tokens = [r.get("tokens", r["step"]) for r in rows if "loss" in r]
    ax.plot(tokens, [r["loss"] for r in rows if "loss" in r], label="train loss", lw=1.2)
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r.get("tokens", r["step"]) for r in val], [r["val_loss"] for r in val], "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("tokens seen" if "tokens" in rows[0] else "step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(png, "wb", encoding=None) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def cell(text: str) -> str:
    """Free text (generated samples) as one Markdown table cell: no line breaks, pipes escaped."""
    return text.replace("\n", " ").replace("|", "\\|")


def table(rows: list[tuple[str, str]], header: tuple[str, str] = ("figure", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def write_report(path: str | Path, title: str, sections: list[tuple[str, str]]) -> None:
    """`sections`: (heading, Markdown body) pairs, in order."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    with atomic_write(path) as f:
        f.write("\n".join(parts))
