"""Offline tokenizers for token estimates: id-for-id parity on a varied corpus, and their speed.

The provider counts tokens with ``splintr-rs`` (``airflow_provider_batch.tokens``), whose wheels bundle
OpenAI's ``o200k_base`` and ``cl100k_base``. This script checks it against the reference, ``tiktoken``,
and against ``bpe-openai`` when that is installed, with the network forbidden throughout:

1. splintr's bundled ranks, written back as a ``.tiktoken`` file, must hash to the sha256 that tiktoken
   itself expects of OpenAI's published file; that file then feeds tiktoken through its own cache
   (``TIKTOKEN_CACHE_DIR``), so tiktoken runs offline with its own pattern and special tokens, and checks
   the hash again as it loads.
2. A corpus generated here (seeded): English prose with contractions, code, JSON, emoji sequences, CJK,
   other scripts with combining marks, numbers, whitespace runs, long repeats, text that looks like special
   tokens, and random mixes. Every text is encoded as ordinary text by each implementation; ids must match
   exactly.
3. Single-thread throughput of each implementation over the same corpus, and the time to load each
   vocabulary.

Exits non-zero on any mismatch, and when no second implementation is installed to compare with (the
``bench`` extra brings ``tiktoken``: ``pip install -e '.[bench]'``, which ``make bench`` does).

    .venv/bin/python benchmarks/tokenizer_parity.py [--fuzz 3000] [--repeat 3]
"""

# ruff: noqa: RUF001  (the corpus is written in many scripts on purpose)
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata

import splintr

ENCODINGS = {
    # name: (mergeable ranks in OpenAI's file, its URL, the sha256 tiktoken expects of it)
    "o200k_base": (
        199_998,
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        100_256,
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

Encode = Callable[[str], list[int]]


# The corpus -------------------------------------------------------------------------------------------

PROSE = "the batch api runs requests within a day at half the price of synchronous calls while every line"
WORDS = [*PROSE.split(" "), "keeps", "its", "custom", "id", "and", "results", "come", "back", "in", "order"]
CONTRACTIONS = ["don't", "I'M", "they've", "It'S", "we'll", "she'd", "you're", "O'Neil's", "rock'n'roll"]
CODE = [
    'def f(x: int) -> int:\n    """Docstring."""\n    return x ** 2  # square\n',
    "for (let i = 0; i < n; i++) {\n\tif (a[i] !== b[i]) return false;\n}\n",
    "fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u8> = vec![0xFF; 16];\n    Ok(())\n}\n",
    "SELECT id, COUNT(*) AS n FROM t WHERE x >= 10 GROUP BY id HAVING n > 1 ORDER BY n DESC;\n",
    '#include <stdio.h>\nint main(void){printf("%d\\n",42);return 0;}\n',
    "curl -sS https://example.com/v1/batches?limit=100&after=batch_abc | jq '.data[].id'\n",
    "    \n\t\t}\r\n  ]\n}\n// trailing comment   \n",
    "x=>x*2; a::b::<T>(); y ?? z; p?.q; i += 1; j -= 2; k <<= 3; m >>>= 4; @decorator\n",
]
EMOJI = [
    "🙂", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻", "🫠", "🐍", "✨", "🚀", "🤷‍♀️",
]  # fmt: skip
CJK = [
    "日本語のテキストを数える。",
    "東京都は日本の首都です",
    "カタカナとひらがなとカンジ",
    "中文分词测试，包括标点符号。",
    "汉字和繁體字混合",
    "한국어 문장도 포함합니다.",
    "全角スペース\u3000と全角数字１２３",
    "「引用」『二重』【括弧】",
]
OTHER_SCRIPTS = [
    "Привет, мир! Ёжик в тумане.",
    "Γειά σου Κόσμε· αλφάβητο",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם! מה שלומך?",
    "नमस्ते दुनिया, यह हिंदी है।",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
    "Tiếng Việt có dấu: ăâđêôơư",
    "e\u0301te\u0301 cafe\u0301 n\u0303 a\u0308\u0304",  # combining marks (NFD)
    "Zalgo: Z\u0351\u036b\u0343a\u0352\u036bl\u0346g\u0344o\u0350",
    "ﬁ ﬂ ǅ ǈ ǋ ᾈ Σίσυφος ß ẞ",  # ligatures and titlecase letters
]
SPECIAL_LOOKING = [
    "<|endoftext|>",
    "text <|endoftext|> more",
    "<|endofprompt|><|im_start|>user\nhi<|im_end|>",
    "<|fim_prefix|>a<|fim_middle|>b<|fim_suffix|>",
    "<|", "|>", "<||>",
]  # fmt: skip
WHITESPACE = [
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    " \n",
    "\t \t",
    "\u00a0",
    "\u3000",
    "\u2003",
    "\r",
    "\x0b",
]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS + CONTRACTIONS) for _ in range(rng.randint(3, 25))]
    words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words = [w.upper() if rng.random() < 0.3 else w for w in words]
    return " ".join(words) + rng.choice([".", "!", "?", "...", ";", " —", ":"])


def _number(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randint(1, 30)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}"
    if kind == 2:
        return f"{rng.randrange(10**9):,}"
    if kind == 3:
        return f"+1 ({rng.randint(200, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    if kind == 4:
        return f"{rng.random():.3e}"
    if kind == 5:
        return hex(rng.getrandbits(64))
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 200)))


def _json(rng: random.Random) -> str:
    def value(depth: int) -> object:
        kind = rng.randrange(7 if depth < 4 else 4)
        if kind == 0:
            return rng.choice([True, False, None])
        if kind == 1:
            return rng.randint(-(10**12), 10**12)
        if kind == 2:
            return rng.uniform(-1000, 1000)
        if kind == 3:
            return rng.choice([_sentence(rng), rng.choice(CJK), rng.choice(EMOJI), ""])
        if kind in (4, 5):
            return {f"key_{rng.randrange(100)}": value(depth + 1) for _ in range(rng.randint(0, 5))}
        return [value(depth + 1) for _ in range(rng.randint(0, 5))]

    return json.dumps(value(0), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2, 4, "\t"]))


def _random_codepoints(rng: random.Random) -> str:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x10FF), (0x2000, 0x2BFF), (0x3000, 0x9FFF)]
    ranges += [(0xAC00, 0xD7A3), (0xE000, 0xFFFD), (0x10000, 0x1FAFF), (0x20000, 0x2A6DF)]
    chars = []
    for _ in range(rng.randint(1, 120)):
        low, high = rng.choice(ranges)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def _repeat(rng: random.Random) -> str:
    unit = rng.choice(["a", " ", "\n", "ab", "🙂", "日本", "0", "=-", "\t", ". ", "xyz ", "<|", "aaaaaaaaab"])
    return unit * rng.choice([100, 1000, 5000, 20000])


def corpus(fuzz: int, seed: int = 0) -> dict[str, list[str]]:
    """Texts by category; ``fuzz`` texts mix samples of every category at random."""
    rng = random.Random(seed)
    texts: dict[str, list[str]] = {
        "english": [" ".join(_sentence(rng) for _ in range(rng.randint(1, 12))) for _ in range(300)],
        "code": [
            "".join(rng.choice(CODE) for _ in range(rng.randint(1, 6))).replace(
                "    ", rng.choice(["    ", "\t"])
            )
            for _ in range(200)
        ],
        "json": [_json(rng) for _ in range(300)],
        "emoji": [
            "".join(rng.choice([*EMOJI, " ", "a"]) for _ in range(rng.randint(1, 40))) for _ in range(200)
        ],
        "cjk": ["".join(rng.choice(CJK) for _ in range(rng.randint(1, 8))) for _ in range(200)],
        "other scripts": [
            " ".join(rng.choice(OTHER_SCRIPTS) for _ in range(rng.randint(1, 5))) for _ in range(200)
        ],
        "numbers": [" ".join(_number(rng) for _ in range(rng.randint(1, 10))) for _ in range(300)],
        "whitespace": [
            "".join(
                rng.choice([*WHITESPACE, "word", "Word", "x", "1", "!", "é"])
                for _ in range(rng.randint(1, 80))
            )
            for _ in range(400)
        ],
        "repeats": [_repeat(rng) for _ in range(60)],
        "special-looking": [
            *SPECIAL_LOOKING,
            *(rng.choice(SPECIAL_LOOKING) * rng.randint(2, 50) for _ in range(40)),
        ],
        "random code points": [_random_codepoints(rng) for _ in range(500)],
        "edge": ["", " ", "\n", "a", "'", "'s", " 's", "\r\n\r\n", "  a", "a  ", "\ufeffBOM", "\u200b\u200d"],
    }
    generators = [
        _sentence, _number, _json, _random_codepoints,
        lambda r: r.choice(CODE), lambda r: r.choice(CJK), lambda r: r.choice(EMOJI),
        lambda r: r.choice(OTHER_SCRIPTS), lambda r: r.choice(WHITESPACE) * r.randint(1, 30),
        lambda r: r.choice(SPECIAL_LOOKING),
    ]  # fmt: skip
    texts["random mixes"] = [
        "".join(rng.choice(generators)(rng) for _ in range(rng.randint(1, 10))) for _ in range(fuzz)
    ]
    return texts


# The implementations ----------------------------------------------------------------------------------


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse every connection and name lookup for the duration: the tokenizers must work offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(f"network access attempted during the tokenizer check: {args[:2]!r}")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect = refuse  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign,assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo = saved


def splintr_ranks_file(name: str) -> bytes:
    """splintr's bundled mergeable ranks, written in OpenAI's ``.tiktoken`` format (``base64 rank`` lines)."""
    count = ENCODINGS[name][0]
    tokenizer = splintr.Tokenizer.from_pretrained(name)
    return b"".join(
        base64.b64encode(tokenizer.decode_token_bytes(rank)) + b" %d\n" % rank for rank in range(count)
    )


def load_implementations(cache_dir: str) -> dict[str, dict[str, tuple[Encode, float]]]:
    """``{implementation: {encoding: (encode ordinary text, seconds to load)}}`` for what is installed.

    splintr's ``encode`` turns ``<|endoftext|>`` in the text into the special token; ``encode_ordinary``
    does not, and neither does the API for text a user sends, so ordinary encoding is compared everywhere.
    """
    found: dict[str, dict[str, tuple[Encode, float]]] = {}
    with contextlib.suppress(ImportError):
        import tiktoken

        os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
        found[f"tiktoken {tiktoken.__version__}"] = {}
        for name in ENCODINGS:
            started = time.perf_counter()
            encoding = tiktoken.get_encoding(name)  # from the cache, hash-checked by tiktoken
            found[f"tiktoken {tiktoken.__version__}"][name] = (
                encoding.encode_ordinary,
                time.perf_counter() - started,
            )
    found[f"splintr-rs {metadata.version('splintr-rs')}"] = {}
    for name in ENCODINGS:
        started = time.perf_counter()
        tokenizer = splintr.Tokenizer.from_pretrained(name)
        found[f"splintr-rs {metadata.version('splintr-rs')}"][name] = (
            tokenizer.encode_ordinary,
            time.perf_counter() - started,
        )
    with contextlib.suppress(ImportError):
        import bpe_openai

        version = metadata.version("bpe-openai")
        found[f"bpe-openai {version}"] = {}
        for name in ENCODINGS:
            started = time.perf_counter()
            bpe_encoding = bpe_openai.get_encoding(name)
            found[f"bpe-openai {version}"][name] = (
                bpe_encoding.encode_ordinary,
                time.perf_counter() - started,
            )
    return found


def prime_tiktoken_cache(cache_dir: str) -> dict[str, bool]:
    """Write splintr's ranks where tiktoken looks for OpenAI's files; whether each hashes as OpenAI's."""
    identical = {}
    for name, (_, url, expected) in ENCODINGS.items():
        data = splintr_ranks_file(name)
        identical[name] = hashlib.sha256(data).hexdigest() == expected
        with open(os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()), "wb") as out:
            out.write(data)
    return identical


# The checks -------------------------------------------------------------------------------------------


def check_parity(
    texts: dict[str, list[str]], implementations: dict[str, dict[str, tuple[Encode, float]]]
) -> int:
    """Print, per encoding and category, the texts whose ids differ from the first implementation's."""
    names = list(implementations)
    reference, others = names[0], names[1:]
    mismatches = 0
    for encoding in ENCODINGS:
        print(f"\n{encoding}: ids compared with {reference}")
        header = f"{'category':<20}{'texts':>7}{'chars':>11}{'tokens':>11}"
        print(header + "".join(f"{'≠ ' + other.split()[0]:>16}" for other in others))
        totals = [0, 0, 0] + [0] * len(others)
        first: dict[str, tuple[str, list[int], list[int]]] = {}
        for category, items in texts.items():
            row = [len(items), sum(map(len, items)), 0] + [0] * len(others)
            for text in items:
                expected = implementations[reference][encoding][0](text)
                row[2] += len(expected)
                for index, other in enumerate(others):
                    got = implementations[other][encoding][0](text)
                    if got != expected:
                        row[3 + index] += 1
                        first.setdefault(other, (text, expected, got))
            totals = [a + b for a, b in zip(totals, row, strict=True)]
            print(
                f"{category:<20}{row[0]:>7,}{row[1]:>11,}{row[2]:>11,}"
                + "".join(f"{n:>16,}" for n in row[3:])
            )
        print(
            f"{'all':<20}{totals[0]:>7,}{totals[1]:>11,}{totals[2]:>11,}"
            + "".join(f"{n:>16,}" for n in totals[3:])
        )
        for other, (text, expected, got) in first.items():
            print(f"  first difference, {other}: {text[:60]!r}: {expected[:12]} vs {got[:12]}")
        mismatches += sum(totals[3:])
    return mismatches


def throughput(
    texts: dict[str, list[str]], implementations: dict[str, dict[str, tuple[Encode, float]]], repeat: int
) -> None:
    """Median single-thread encode throughput over the corpus, and each vocabulary's load time."""
    everything = [text for items in texts.values() for text in items]
    prose = texts["english"] + texts["code"] + texts["json"]
    sizes = {
        "corpus": sum(len(t.encode()) for t in everything),
        "prose+code+json": sum(len(t.encode()) for t in prose),
    }
    print(f"\nsingle-thread encode_ordinary throughput, median of {repeat} runs; MB = 10^6 bytes of UTF-8")
    print(
        f"{'implementation':<24}{'encoding':<13}{'load s':>8}{'corpus MB/s':>13}{'prose+code+json MB/s':>22}"
    )
    for implementation, encodings in implementations.items():
        for encoding, (encode, load) in encodings.items():
            rates = []
            for sample, size in ((everything, sizes["corpus"]), (prose, sizes["prose+code+json"])):
                runs = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    for text in sample:
                        encode(text)
                    runs.append(time.perf_counter() - started)
                rates.append(size / 1e6 / statistics.median(runs))
            print(f"{implementation:<24}{encoding:<13}{load:>8.3f}{rates[0]:>13.1f}{rates[1]:>22.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=3000, help="random mixed texts added to the corpus")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with no_network(), tempfile.TemporaryDirectory() as cache_dir:
        identical = prime_tiktoken_cache(cache_dir)
        for name, same in identical.items():
            verdict = "are" if same else "are NOT"
            print(f"splintr's bundled {name} ranks {verdict} byte-identical to OpenAI's file")
        implementations = load_implementations(cache_dir)
        texts = corpus(args.fuzz)
        print(f"implementations: {', '.join(implementations)}; network refused throughout")
        if len(implementations) < 2:
            sys.exit("only splintr-rs is installed: install tiktoken (the bench extra) to compare with it")
        mismatches = check_parity(texts, implementations)
        throughput(texts, implementations, args.repeat)
    if mismatches or not all(identical.values()):
        sys.exit(f"{mismatches} texts encode differently")
    print("\nparity: every text encodes to the same ids in every implementation")


if __name__ == "__main__":
    main()
