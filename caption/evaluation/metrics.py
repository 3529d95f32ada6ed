"""COCO caption metrics from pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and SPICE.

Java is needed by the PTB tokenizer and METEOR (and SPICE): it is checked up front, and a failure of a
Java scorer is reported with what Java printed, not as a bare parse error.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from caption.config import METRIC_NAMES
from caption.config import score_names as score_names  # defined with the config that validates against it
from caption.utils.logging import logger

# What pycocoevalcap's tokenizer strips after PTB tokenisation (copied from its ptbtokenizer.py).
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class MetricError(RuntimeError):
    """A scorer could not run; the message says why and what to do."""


def check_java() -> str:
    """Return the java executable, or raise a MetricError that says how to get one."""
    java = shutil.which("java")
    if java is None:
        raise MetricError(
            "Java is not installed or not on PATH; the COCO caption metrics need it for the PTB tokenizer "
            "and METEOR. Install a Java runtime (Debian/Ubuntu: apt-get install default-jre-headless)."
        )
    result = subprocess.run([java, "-version"], capture_output=True, text=True)
    if result.returncode != 0:
        raise MetricError(f"'{java} -version' failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return java


def _package_dir() -> Path:
    from pycocoevalcap.tokenizer import ptbtokenizer  # the top level is a namespace package: no __file__

    return Path(ptbtokenizer.__file__).parent.parent


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run here, else a one-line reason."""
    lib = _package_dir() / "spice" / "lib"
    missing = [jar for jar in SPICE_CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        return (f"SPICE skipped: {', '.join(missing)} missing from {lib} "
                "(with internet: python -c 'from pycocoevalcap.spice.get_stanford_models "
                "import get_stanford_models as g; g()')")
    return None


def one_line(text: str) -> str:
    """``text`` with every line or paragraph break (\\n, \\r, \\v, \\f, U+0085, U+2028, U+2029, ...) a space.
    The tokenizer reads one caption per line, so a break inside a caption would shift every later caption
    onto the wrong image's line."""
    return " ".join(text.splitlines())


def ptb_tokenize(captions: dict, java: str) -> dict:
    """PTB-tokenise {key: [caption, ...]} in one Java call, exactly as pycocoevalcap's tokenizer does."""
    keys = [key for key, texts in captions.items() for _ in texts]
    lines = [one_line(text) for texts in captions.values() for text in texts]
    # An empty caption is sent as no line at all: the tokenizer drops trailing empty lines.
    sent = [i for i, line in enumerate(lines) if line.strip()]
    lines = [lines[i] for i in sent]
    jar = _package_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as handle:
        handle.write("\n".join(lines))
        name = handle.name
    try:
        result = subprocess.run(
            [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
             name],
            capture_output=True,
        )
    finally:
        Path(name).unlink(missing_ok=True)
    if result.returncode != 0:
        raise MetricError(f"the PTB tokenizer (Java) failed with exit code {result.returncode}: "
                          f"{result.stderr.decode(errors='replace').strip()[:500]}")
    out_lines = result.stdout.decode("utf-8").split("\n")
    if out_lines and out_lines[-1] == "":
        out_lines.pop()
    if len(out_lines) != len(sent):  # a caption read as two lines would score the rest against other images
        raise MetricError(f"the PTB tokenizer gave {len(out_lines)} lines for {len(sent)} captions: some "
                          "caption holds a character it reads as a line break")
    words = [""] * len(keys)
    for i, line in zip(sent, out_lines):
        words[i] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    tokenized: dict = {key: [] for key in captions}
    for key, text in zip(keys, words):
        tokenized[key].append(text)
    return tokenized


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return scorer.compute_score(gts, res)
    except (ValueError, BrokenPipeError, OSError) as err:
        process = scorer.meteor_p
        process.kill()
        stderr = process.stderr.read().decode(errors="replace").strip()[-500:] if process.stderr else ""
        raise MetricError(f"METEOR (Java, needs about 2 GB of heap) failed: {stderr or err}") from None
    finally:
        scorer.meteor_p.kill()


def compute_metrics(
    references: dict, predictions: dict, metrics: Iterable[str] = METRIC_NAMES
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, str]]:
    """Score ``predictions`` {id: caption} against ``references`` {id: [captions]}.

    Returns (corpus scores, per-item scores, skipped metrics with the reason). Every predicted id must
    have references; references without a prediction are ignored.
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {METRIC_NAMES}")
    missing = [key for key in predictions if key not in references]
    if missing:
        raise ValueError(f"{len(missing)} predicted item(s) have no references, e.g. {missing[:5]}")
    if not predictions:
        raise ValueError("there are no predictions to score")
    java = check_java()

    keys = sorted(predictions)
    both = {("ref", k): list(references[k]) for k in keys}
    both.update({("hyp", k): [predictions[k]] for k in keys})
    tokens = ptb_tokenize(both, java)
    gts = {k: tokens[("ref", k)] for k in keys}
    res = {k: tokens[("hyp", k)] for k in keys}

    scores: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    for metric in metrics:
        if metric == "BLEU":
            from pycocoevalcap.bleu.bleu import Bleu

            corpus, items = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                scores[f"Bleu_{n + 1}"] = float(corpus[n])
                per_item[f"Bleu_{n + 1}"] = [float(x) for x in items[n]]
            continue
        if metric == "METEOR":
            corpus, items = _meteor(gts, res)
        elif metric == "ROUGE_L":
            from pycocoevalcap.rouge.rouge import Rouge

            corpus, items = Rouge().compute_score(gts, res)
        elif metric == "CIDEr":
            from pycocoevalcap.cider.cider import Cider

            corpus, items = Cider().compute_score(gts, res)
        else:  # SPICE
            reason = spice_unavailable_reason()
            if reason:
                logger.warning(reason)
                skipped[metric] = reason
                continue
            from pycocoevalcap.spice.spice import Spice

            try:
                corpus, items = Spice().compute_score(gts, res)
            except subprocess.CalledProcessError as err:
                raise MetricError(
                    f"SPICE (Java, needs about 8 GB of heap) failed with exit code {err.returncode}"
                ) from None
            items = [item["All"]["f"] for item in items]
        scores[metric] = float(corpus)
        per_item[metric] = [float(x) for x in items]
    return scores, per_item, skipped
