"""PII detection benchmark: llm_middleware.pii vs Presidio (regex-only), same texts, one run.

    python bench/pii.py [--data PATH] [--show-misses] [--ner] [--all-urls] [--repeat 3]
                        [--phone-regions US,CA,GB]
    python bench/pii.py --generated [--n 2000] [--presidio-n 2000] [--seed 7] [--repeat 5]
    python bench/pii.py --adversarial

By default the texts are the labelled third-party sample (``../shared/data/
pii_thirdparty_sample.jsonl`` from the repository root, read at run time, never copied), scored
as that data's README says: overlap with a label of the same type, ``optional`` labels neither
counted nor charged, each case scored only for the types in its ``scope``; ``exact`` is the share
of recalled labels found with the same boundaries. A prediction of a narrower type on a label of
the wider one (DATE_OF_BIRTH on a date the source labels DATE_TIME, having no birth-date type)
is listed apart and not counted either way. ``--adversarial`` times hostile shapes from
1 KB to 1 MB (µs per KB: flat means linear).

With ``--generated`` (or when the sample is absent), texts are generated from a seed: prose with
emails, phones, cards, IBANs, SSNs, IPs and secrets,
plus decoys (order numbers, UUIDs, ISO timestamps, ZIP codes, prices, versions, plain 9-digit
numbers, 16-digit numbers failing Luhn). The generator records the ground-truth spans.

Presidio runs with its default recognizer registry on a no-op NLP engine (no spaCy model, no
NER), i.e. only its regex/checksum/phonenumbers recognizers. Its email validator calls
tldextract, which would try to download the public suffix list: it is pointed at the snapshot
bundled in the package instead. With ``--ner`` both sides run the same spaCy pipeline (ours
through the ``[ner]`` extra, Presidio as its NLP engine) and PERSON/LOCATION are scored.
Throughput is texts/s of CPU time (``time.process_time``: on a machine shared with other jobs,
wall time bills their load to whichever detector runs) on the same texts (Presidio on the first
``--presidio-n`` of them if that is smaller), timed chunk by chunk in turns, without the
garbage collector, ours as the median of ``--repeat`` passes per chunk; quality is computed on
the texts both analysed. ``--all-urls`` runs ours with every entity named, which opts in to
reporting every URL (the sample labels plain URLs; by default only URLs with credentials are).
A prediction is a true positive when its type matches and its span overlaps a ground-truth span
of that type; a ground-truth span is recalled when some prediction of its type overlaps it.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import logging
import os
import random
import statistics
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_middleware.pii import BUILTIN_ENTITIES, PIIDetector

CHUNK = 500
COMPARED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")
OURS_ONLY = ("SECRET",)

Span = tuple[str, int, int]


# --------------------------------------------------------------------------- value generators

FIRST = ["jane", "john", "maria", "li", "ahmed", "sofia", "lucas", "emma", "noah", "olivia"]
LAST = ["doe", "smith", "garcia", "chen", "khan", "rossi", "martin", "muller", "silva", "kim"]
DOMAINS = [
    "example.com",
    "mail.example.org",
    "corp.example.co.uk",
    "example.io",
    "test.example.net",
]
US_AREAS = ["415", "212", "646", "312", "617", "206", "303", "512", "305", "202", "650", "718"]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def digits(rng: random.Random, n: int, alphabet: str = string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def gen_email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}.{last}+news", last]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def gen_phone(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind < 5:
        area = rng.choice(US_AREAS)
        exchange = str(rng.randint(200, 999))
        while exchange[1:] == "11" or exchange == "555":
            exchange = str(rng.randint(200, 999))
        line = f"{rng.randint(0, 9999):04d}"
        return [
            f"({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"+1 {area} {exchange} {line}",
            f"+1-{area}-{exchange}-{line}",
        ][kind]
    if kind == 5:
        return f"+44 20 7946 {digits(rng, 4)}"
    if kind == 6:
        return f"+49 30 {rng.randint(2, 9)}{digits(rng, 6)}"
    pairs = " ".join(digits(rng, 2) for _ in range(4))
    return f"+33 1 {pairs}" if kind == 7 else f"+33 6 {pairs}"


def gen_card(rng: random.Random) -> str:
    brand = rng.randrange(6)
    prefix, length = [
        ("4", 16),
        (str(rng.randint(51, 55)), 16),
        (rng.choice(["34", "37"]), 15),
        ("6011", 16),
        (str(rng.randint(3528, 3589)), 16),
        (str(rng.randint(2221, 2720)), 16),
    ][brand]
    number = luhn_complete(prefix, length, rng)
    style = rng.randrange(3)
    if style == 0:
        return number
    sep = " " if style == 1 else "-"
    if length == 15:
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


IBAN_FORMATS = {  # country -> BBAN as (alphabet, count) runs
    "DE": [(string.digits, 18)],
    "GB": [(string.ascii_uppercase, 4), (string.digits, 14)],
    "FR": [(string.digits, 23)],
    "NL": [(string.ascii_uppercase, 4), (string.digits, 10)],
    "ES": [(string.digits, 20)],
    "BE": [(string.digits, 12)],
    "CH": [(string.digits, 17)],
    "IT": [(string.ascii_uppercase, 1), (string.digits, 22)],
}


def gen_iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_FORMATS))
    bban = "".join(rng.choice(alphabet) for alphabet, n in IBAN_FORMATS[country] for _ in range(n))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.6:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def gen_ssn_digits(rng: random.Random) -> str:
    area = rng.randint(1, 899)
    while area == 666:
        area = rng.randint(1, 899)
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


def gen_ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        first = rng.choice([8, 23, 52, 81, 104, 151, 185, 203, 212])
        return ".".join(str(x) for x in [first, *(rng.randint(0, 255) for _ in range(3))])
    groups = [0x2001, 0xDB8, *(rng.choice([0, 0, rng.randint(1, 0xFFFF)]) for _ in range(6))]
    packed = sum(g << (16 * (7 - i)) for i, g in enumerate(groups))
    return ipaddress.IPv6Address(packed).compressed


def gen_secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.randrange(3)
    if kind == 0:
        return "sk-proj-" + digits(rng, 40, alnum)
    if kind == 1:
        return "AKIA" + digits(rng, 16, string.ascii_uppercase + string.digits)
    return "ghp_" + digits(rng, 36, alnum)


# --------------------------------------------------------------------------- decoys


UUID_HEADS = ["123e4567-e89b-12d3-a456-", "f47ac10b-58cc-4372-a567-"]
ZIPS = ["94107", "94107-1234", "10001", "60614-2201"]


def gen_decoy(rng: random.Random) -> str:
    def d(n: int) -> str:
        return digits(rng, n)

    bad_card = luhn_complete("4", 16, rng)
    bad_card = bad_card[:-1] + str((int(bad_card[-1]) + rng.randint(1, 9)) % 10)
    options = [
        f"Order ORD-{rng.randint(2019, 2025)}-{d(6)} has shipped.",
        f"Your tracking id is {rng.choice(UUID_HEADS)}{d(12)}.",
        f"Last update: {rng.randint(2020, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z.",
        f"Ship it to San Francisco, CA {rng.choice(ZIPS)}.",
        f"The total was ${rng.randint(1, 9)},{d(3)}.{d(2)} including tax.",
        f"I am running version {rng.choice(['v1.2.3', '2.14.0', '3.11.7', 'v10.4'])} of the app.",
        f"Reference number {rng.randint(1, 8)}{d(8)} was attached to the ticket.",
        f"The gift card {' '.join(bad_card[i : i + 4] for i in range(0, 16, 4))} did not work.",
        f"We met at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} in room {d(3)}.",
        f"Invoice INV-{d(8)} dated {rng.randint(1, 28)}/{rng.randint(1, 12)}/2024 is overdue.",
        f"Call center queue {d(2)}-{d(3)} had {d(4)} tickets.",
    ]
    return rng.choice(options)


PROSE = [
    "Thanks for getting back to me so quickly.",
    "The package arrived damaged and I would like a replacement.",
    "Could you please check what happened with my last payment?",
    "I have been a customer for years and this never happened before.",
    "Let me know if you need anything else from my side.",
    "The app keeps crashing when I open the settings page.",
    "Merci beaucoup pour votre aide, à bientôt !",
    "Vielen Dank für die schnelle Antwort, Grüße aus München.",
    "Best regards, and have a great weekend.",
    "I tried resetting my password twice but it still fails.",
]


@dataclass
class Sample:
    text: str
    truth: list[Span] = field(default_factory=list)
    optional: list[Span] = field(default_factory=list)
    scope: frozenset[str] | None = None  # None: every type in the text is labelled
    ident: str = ""

    def scored(self, entity: str) -> bool:
        return self.scope is None or entity in self.scope


def load_jsonl(path: str) -> list[Sample]:
    """Labelled texts in the shared data format (see ``../shared/data/README.md``)."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            case = json.loads(line)
            sample = Sample(case["text"], ident=case.get("id", ""))
            scope = case.get("scope", "all")
            sample.scope = None if scope == "all" else frozenset(scope)
            for span in case["spans"]:
                target = sample.optional if span.get("optional") else sample.truth
                target.append((span["type"], span["start"], span["end"]))
            samples.append(sample)
    return samples


def gen_text(rng: random.Random) -> Sample:
    sample = Sample("")
    parts: list[str] = []
    pos = 0

    def add(fragment: str) -> None:
        nonlocal pos
        parts.append(fragment)
        pos += len(fragment)

    def add_pii(before: str, entity: str, value: str, after: str) -> None:
        add(before)
        sample.truth.append((entity, pos, pos + len(value)))
        add(value)
        add(after)

    for i in range(rng.randint(2, 6)):
        if i:
            add(" ")
        kind = rng.randrange(12)
        if kind < 3:
            add(rng.choice(PROSE))
        elif kind < 5:
            add(gen_decoy(rng))
        elif kind == 5:
            add_pii("Please write to ", "EMAIL_ADDRESS", gen_email(rng), " about the refund.")
        elif kind == 6:
            add_pii("You can reach me at ", "PHONE_NUMBER", gen_phone(rng), " after 5pm.")
        elif kind == 7:
            add_pii("My card number is ", "CREDIT_CARD", gen_card(rng), ", expiring 09/27.")
        elif kind == 8:
            add_pii("Wire the money to ", "IBAN_CODE", gen_iban(rng), " by Friday.")
        elif kind == 9:
            digits = gen_ssn_digits(rng)
            style = rng.randrange(6)
            if style < 4:
                value = f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"
            elif style == 4:
                value = f"{digits[:3]} {digits[3:5]} {digits[5:]}"
            else:
                value = digits
            add_pii("My SSN is ", "US_SSN", value, ".")
        elif kind == 10:
            add_pii("The login came from ", "IP_ADDRESS", gen_ip(rng), " last night.")
        else:
            add_pii("Oops, I pasted the key ", "SECRET", gen_secret(rng), " in the chat.")
    sample.text = "".join(parts)
    return sample


# --------------------------------------------------------------------------- scoring


@dataclass
class Score:
    tp_pred: int = 0
    n_pred: int = 0
    found: int = 0
    n_truth: int = 0
    exact: int = 0

    def precision(self) -> float:
        return self.tp_pred / self.n_pred if self.n_pred else 1.0

    def recall(self) -> float:
        return self.found / self.n_truth if self.n_truth else 1.0

    def exact_rate(self) -> float:
        return self.exact / self.found if self.found else 1.0


def overlaps(a: Span, b: Span) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def _trimmed(text: str, span: Span) -> tuple[int, int]:
    value = text[span[1] : span[2]]
    start = span[1] + len(value) - len(value.lstrip())
    return start, start + len(value.strip())


# A narrower type than the label set of some sources has: a date of birth is a date, and
# sources without a birth-date type label it DATE_TIME. Such a prediction on a label of the
# wider type is neither a true nor a false positive (counted apart, see ``score``); the
# wider type itself is not scored (neither detector claims every date).
WIDER_LABEL = {"DATE_OF_BIRTH": "DATE_TIME"}


def score(
    samples: Sequence[Sample],
    predictions: Sequence[list[Span]],
    entities: Sequence[str],
    misses: list[str] | None = None,
    on_wider: list[str] | None = None,
) -> dict[str, Score]:
    """Overlap scoring of the shared data README (optional spans neither count nor cost).

    A prediction that overlaps nothing of its type but a label of its ``WIDER_LABEL`` type is
    left out of the counts and listed in ``on_wider``.
    """
    scores = {entity: Score() for entity in entities}
    for sample, preds in zip(samples, predictions, strict=True):
        for pred in preds:
            if pred[0] not in scores or not sample.scored(pred[0]):
                continue
            hit = any(overlaps(pred, t) for t in sample.truth)
            if not hit and any(overlaps(pred, o) for o in sample.optional):
                continue
            wider = WIDER_LABEL.get(pred[0])
            if (
                not hit
                and wider is not None
                and any(overlaps((wider, pred[1], pred[2]), t) for t in sample.truth)
            ):
                if on_wider is not None:
                    value = sample.text[pred[1] : pred[2]]
                    on_wider.append(f"{pred[0]} {value!r} on a {wider} label in {sample.ident}")
                continue
            s = scores[pred[0]]
            s.n_pred += 1
            s.tp_pred += hit
            if not hit and misses is not None:
                value = sample.text[pred[1] : pred[2]]
                misses.append(f"FP {pred[0]} {value!r} in {sample.ident}: {sample.text!r}")
        for truth in sample.truth:
            if truth[0] not in scores:
                continue
            s = scores[truth[0]]
            s.n_truth += 1
            hits = [p for p in preds if overlaps(truth, p)]
            s.found += bool(hits)
            bounds = _trimmed(sample.text, truth)
            s.exact += any(_trimmed(sample.text, p) == bounds for p in hits)
            if not hits and misses is not None:
                value = sample.text[truth[1] : truth[2]]
                misses.append(f"FN {truth[0]} {value!r} in {sample.ident}: {sample.text!r}")
    return scores


def micro(scores: dict[str, Score]) -> Score:
    total = Score()
    for s in scores.values():
        total.tp_pred += s.tp_pred
        total.n_pred += s.n_pred
        total.found += s.found
        total.n_truth += s.n_truth
        total.exact += s.exact
    return total


# --------------------------------------------------------------------------- runners


Runner = Callable[[str], Sequence[Any]]


def timed(run: Runner, texts: Sequence[str]) -> tuple[float, list[Sequence[Any]]]:
    # Like timeit, without the garbage collector: with spaCy and Presidio loaded the heap is
    # large, and full collections would bill whichever detector happens to trigger them.
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        results = [run(t) for t in texts]
        return time.process_time() - start, results
    finally:
        gc.enable()


def spans(results: Sequence[Sequence[Any]]) -> list[list[Span]]:
    """Findings (ours) or RecognizerResults (Presidio) as (type, start, end), after timing."""
    return [[(r.entity_type, r.start, r.end) for r in found] for found in results]


# Presidio's recognizers for the types both detectors handle (DATE_TIME and the like would score
# Presidio on types we do not claim).
PRESIDIO_ENTITIES = (*COMPARED, "URL", "UK_NINO", "PERSON", "LOCATION")
NER_TYPES = ("PERSON", "LOCATION")


def make_ours(
    ner: bool,
    all_urls: bool = False,
    phone_regions: Sequence[str] | None = None,
) -> Runner:
    # Naming the entities (URL among them) is how an app opts in to masking every URL.
    entities = None
    if all_urls:
        entities = set(BUILTIN_ENTITIES) | (set(NER_TYPES) if ner else set())
    phones: dict[str, Any] = {"phone_regions": phone_regions} if phone_regions else {}
    if not ner:
        return PIIDetector(entities, **phones).detect
    from llm_middleware.pii.ner import spacy_ner

    return PIIDetector(entities, ner=spacy_ner(), **phones).detect


def make_presidio(ner: bool = False) -> Runner:
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tldextract.extract = offline  # type: ignore[assignment]  # EmailRecognizer.validate_result
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)

    if ner:
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        from llm_middleware.pii.ner import DEFAULT_MODEL

        config = {
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": DEFAULT_MODEL}],
        }
        engine = NlpEngineProvider(nlp_configuration=config).create_engine()
    else:
        engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    supported = set(analyzer.get_supported_entities("en"))
    entities = [
        e for e in PRESIDIO_ENTITIES if e in supported and (ner or e not in ("PERSON", "LOCATION"))
    ]
    return lambda text: analyzer.analyze(text=text, language="en", entities=entities)


def default_data() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "shared", "data", "pii_thirdparty_sample.jsonl")
    return path if os.path.exists(path) else None


ADVERSARIAL = {
    "digit run": "4" * 64 + " ",
    "digit groups": "4111 " * 12 + "\n",
    "many @": "a@" * 16 + " ",
    "many dots": "1." * 24 + " ",
    "long token": "x" * 200 + "@example.com ",
    "nested separators": "(+1) (415)-(555)-.-0132-" * 3 + " ",
    "colons": "db8::1:" * 10 + " ",
    "overlapping pair": "jane@example.com 4111 1111 1111 1111 +1 415 555 0132 ",
    "obfuscated e-mails": "jo [at] acme [dot] com jo.d at gmail dot com x(at)y ",
    "at/dot chain": "x at a dot at dot ",
    "@ and brackets": "a@(b[c ",
}


def adversarial(sizes: Sequence[int] = (1_000, 10_000, 100_000, 1_000_000)) -> None:
    """µs per KB of text on hostile shapes: flat across sizes means linear time."""
    detect = PIIDetector().detect
    print("| shape | " + " | ".join(f"{n // 1000} KB µs/KB" for n in sizes) + " | max/min |")
    print("|---|" + "---:|" * (len(sizes) + 1))
    for name, unit in ADVERSARIAL.items():
        row = []
        for size in sizes:
            text = (unit * (size // len(unit) + 1))[:size]
            runs = max(1, 200_000 // size)
            elapsed, _ = timed(lambda t: detect(t), [text] * runs)
            row.append(elapsed / runs / (size / 1000) * 1e6)
        cells = " | ".join(f"{v:.1f}" for v in row)
        print(f"| {name} | {cells} | {max(row) / min(row):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", help="labelled JSONL (default: the shared sample when present)")
    parser.add_argument("--generated", action="store_true", help="use the generated corpus")
    parser.add_argument("--n", type=int, default=2000, help="generated texts for our detector")
    parser.add_argument("--presidio-n", type=int, default=2000, help="texts for Presidio")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5, help="passes of ours per chunk (median)")
    parser.add_argument("--show-misses", action="store_true", help="list misses and FPs")
    parser.add_argument("--adversarial", action="store_true", help="hostile shapes 1 KB-1 MB")
    parser.add_argument(
        "--ner", action="store_true", help="both sides with spaCy (the [ner] extra)"
    )
    parser.add_argument(
        "--all-urls",
        action="store_true",
        help="ours with every entity named, URL included: every URL (opt-in), not only "
        "URLs with credentials",
    )
    parser.add_argument(
        "--phone-regions",
        help="ours with phone candidates checked by libphonenumber for these comma-separated "
        "regions (the [phones] extra); ours without the check is then timed and scored too",
    )
    args = parser.parse_args()

    if args.adversarial:
        adversarial()
        return
    data = None if args.generated else (args.data or default_data())
    if data is not None:
        samples = load_jsonl(data)
        source = data
    else:
        rng = random.Random(args.seed)
        samples = [gen_text(rng) for _ in range(args.n)]
        source = f"generated, seed {args.seed}"
    texts = [s.text for s in samples]
    subset = samples[: args.presidio_n]
    total_bytes = sum(len(t.encode()) for t in texts)
    subset_bytes = sum(len(s.text.encode()) for s in subset)

    regions = args.phone_regions.split(",") if args.phone_regions else None
    ours = make_ours(args.ner, args.all_urls, regions)
    # With phone validation, the same detector without it, timed in the same turns.
    plain = make_ours(args.ner, args.all_urls) if regions else None
    presidio = make_presidio(args.ner)
    for t in texts[:20]:  # warm-up: regex compilation, lazy imports
        ours(t)
        presidio(t)
        if plain is not None:
            plain(t)

    # Interleaved by chunks, so that both see the same load on a shared machine.
    ours_time = presidio_time = plain_time = 0.0
    plain_results: list[Sequence[Any]] = []
    ours_results: list[Sequence[Any]] = []
    presidio_results: list[Sequence[Any]] = []
    for first in range(0, len(texts), CHUNK):
        chunk = texts[first : first + CHUNK]
        passes = [timed(ours, chunk) for _ in range(args.repeat)]
        ours_time += statistics.median(elapsed for elapsed, _ in passes)
        ours_results += passes[0][1]
        if plain is not None:
            passes = [timed(plain, chunk) for _ in range(args.repeat)]
            plain_time += statistics.median(elapsed for elapsed, _ in passes)
            plain_results += passes[0][1]
        if first < len(subset):
            elapsed, results = timed(presidio, chunk[: len(subset) - first])
            presidio_time += elapsed
            presidio_results += results
    ours_preds, presidio_preds = spans(ours_results), spans(presidio_results)

    ours_tps = len(texts) / ours_time
    presidio_tps = len(subset) / presidio_time
    print(
        f"{len(texts)} texts ({total_bytes / 1e6:.2f} MB, avg {total_bytes / len(texts):.0f} B) "
        f"from {source}; Presidio on {len(subset)} of them\n"
    )
    print("| detector | texts/s | MB/s | µs/text |")
    print("|---|---:|---:|---:|")
    print(
        f"| llm_middleware.pii | {ours_tps:,.0f} | {total_bytes / ours_time / 1e6:.2f} "
        f"| {1e6 / ours_tps:.1f} |"
    )
    if plain is not None:
        plain_tps = len(texts) / plain_time
        print(
            f"| llm_middleware.pii without [phones] | {plain_tps:,.0f} "
            f"| {total_bytes / plain_time / 1e6:.2f} | {1e6 / plain_tps:.1f} |"
        )
    print(
        f"| Presidio | {presidio_tps:,.0f} | {subset_bytes / presidio_time / 1e6:.3f} "
        f"| {1e6 / presidio_tps:.1f} |"
    )
    print(f"\nspeed ratio (texts/s): **{ours_tps / presidio_tps:.0f}×**", end="")
    if plain is not None:
        print(f" ({len(texts) / plain_time / presidio_tps:.0f}× without [phones])", end="")
    print("\n")

    labelled = {t[0] for s in subset for t in s.truth}
    predicted_ours = {p[0] for preds in ours_preds for p in preds}
    predicted_theirs = {p[0] for preds in presidio_preds for p in preds}
    entities = sorted(labelled & (predicted_ours | predicted_theirs))
    entities += sorted((predicted_ours | predicted_theirs) - labelled)
    our_misses: list[str] = []
    on_wider: list[str] = []
    ours_scores = score(subset, ours_preds[: len(subset)], entities, our_misses, on_wider)
    presidio_scores = score(subset, presidio_preds, entities)
    print(
        f"quality on the {len(subset)} texts both analysed (overlap scoring, exact = boundaries)\n"
    )
    print("| entity | truth | ours P | ours R | ours exact | Presidio P | Presidio R | its exact |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(e, ours_scores[e], presidio_scores[e]) for e in entities]
    rows.append(("**micro**", micro(ours_scores), micro(presidio_scores)))
    for entity, o, p in rows:
        print(
            f"| {entity} | {o.n_truth} | {o.precision():.3f} | {o.recall():.3f} "
            f"| {o.exact_rate():.3f} | {p.precision():.3f} | {p.recall():.3f} "
            f"| {p.exact_rate():.3f} |"
        )
    if plain is not None:
        plain_scores = score(subset, spans(plain_results)[: len(subset)], entities)
        for name, o in (
            ("PHONE_NUMBER", plain_scores["PHONE_NUMBER"]),
            ("micro", micro(plain_scores)),
        ):
            print(
                f"\nwithout [phones], {name}: P {o.precision():.3f} R {o.recall():.3f} "
                f"exact {o.exact_rate():.3f}",
                end="",
            )
        print()
    if on_wider:
        print(
            f"\n{len(on_wider)} of our predictions are on labels of a wider type (not counted; "
            "a true positive each if the wider label is taken as the narrower type, a false "
            "positive each if scored strictly by type):"
        )
        for line in sorted(on_wider):
            print(f"- {line}")
    if args.show_misses:
        print(f"\n{len(our_misses)} misses (FN) and false positives (FP) of ours:")
        for line in sorted(our_misses):
            print(line)


if __name__ == "__main__":
    main()
