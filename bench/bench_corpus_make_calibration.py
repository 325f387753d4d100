"""Make the labelled filter-calibration set `orizuru/data/calibration/filters.jsonl.gz` (run once; shipped).

    python bench/bench_corpus_make_calibration.py --shared /work/shared/data --out orizuru/data/calibration

Clean documents are real licensed text at several lengths: Aozora Bunko works cut at line breaks into
pieces of 400 to 40,000 characters, Japanese Wikipedia articles (JSQuAD paragraphs joined per article)
and long Wikipedia country articles (raw MediaWiki markup reduced to text by `wiki_text`). Junk documents
are the kinds a crawl holds, made from real sentences with a fixed seed: keyword stuffing, repeated
lines, menus and link lists, numeric dumps, character salad, adult/gambling spam, templated doorway
pages and spun text (phrases of real sentences shuffled, what article spinners and bad machine
translation produce). Every row: {id, label: clean|junk, kind, chars, text}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import unicodedata
from pathlib import Path

SEED = 20261201
LENGTHS = ((400, 1000), (1000, 3000), (3000, 10000), (10000, 40000))  # Aozora pieces per bucket
PER_BUCKET = 40
JUNK_PER_KIND = 40
_SENT = re.compile(r"[^。！？\n]+[。！？]")


def wiki_text(markup: str) -> str:
    """MediaWiki markup -> plain paragraphs: templates, tables, refs, files and categories dropped,
    links reduced to their label, headings and list items kept as lines."""
    t = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    t = re.sub(r"<ref[^>/]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S)
    for _ in range(10):  # nested templates and tables, innermost first
        t = re.sub(r"\{\{[^{}]*\}\}", "", t)
        t = re.sub(r"\{\|(?:(?!\{\|)[\s\S])*?\|\}", "", t)
    t = re.sub(r"\[\[(?:ファイル|画像|File|Image|Category|カテゴリ):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", t)
    t = re.sub(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[https?://\S+\]", "", t)
    t = re.sub(r"<[^>]+>", "", t).replace("'''", "").replace("''", "")
    lines = []
    for line in t.split("\n"):
        line = re.sub(r"^=+\s*(.*?)\s*=+$", r"\1", line.strip()).lstrip("*#:; ").strip()
        if line and not line.startswith(("|", "!", "{", "}")):
            lines.append(line)
    return "\n".join(lines)


def pieces(text: str, lo: int, hi: int, rng: random.Random) -> list[str]:
    """Cut at line breaks into pieces whose length is drawn in [lo, hi)."""
    out, cur, size, target = [], [], 0, rng.randrange(lo, hi)
    for line in text.split("\n"):
        cur.append(line)
        size += len(line) + 1
        if size >= target:
            piece = "\n".join(cur).strip()
            if lo <= len(piece) < hi * 1.2:
                out.append(piece)
            cur, size, target = [], 0, rng.randrange(lo, hi)
    return out


def load_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def clean_documents(shared: Path, rng: random.Random) -> list[dict]:
    docs = []
    works = load_jsonl(shared / "aozora_bunko_pd" / "works.jsonl")
    rng.shuffle(works)
    for lo, hi in LENGTHS:
        got = 0
        for w in works:
            if got == PER_BUCKET:
                break
            cand = pieces(w["text"], lo, hi, rng)
            if cand:
                docs.append({"kind": "aozora", "text": rng.choice(cand), "source": w["id"]})
                got += 1
    articles: dict[str, list[str]] = {}
    for row in load_jsonl(shared / "ja_wiki_paragraphs" / "paragraphs.jsonl"):
        articles.setdefault(row["title"], []).append(row["text"])
    docs += [{"kind": "wiki_jsquad", "text": "\n".join(p), "source": t} for t, p in articles.items()
             if len("\n".join(p)) >= 400]
    country = load_jsonl(shared / "jawiki_country_markup" / "jawiki-country.json.gz")
    rng.shuffle(country)
    for row in country[:60]:
        text = wiki_text(row["text"])
        if len(text) > 20000:  # long articles kept long, but the shipped file stays small
            text = text[:text.rfind("\n", 0, 20000)]
        if len(text) >= 400:
            docs.append({"kind": "wiki_country", "text": text, "source": row["title"]})
    return docs


# ---------------------------------------------------------------- junk

NAV = ["ホーム", "トップページ", "会社概要", "お問い合わせ", "サイトマップ", "ニュース", "新着情報", "商品一覧",
       "カテゴリ", "アクセス", "よくある質問", "採用情報", "ログイン", "新規会員登録", "カートを見る", "前へ", "次へ",
       "一覧へ戻る", "続きを読む", "もっと見る", "人気記事", "関連記事", "タグ", "アーカイブ", "プロフィール", "検索"]
KEYWORDS = ["格安", "ホテル", "東京", "大阪", "予約", "最安値", "口コミ", "ランキング", "おすすめ", "比較", "人気",
            "通販", "送料無料", "激安", "即日", "脱毛", "ダイエット", "サプリ", "求人", "転職", "ブログ", "無料"]
SPAM = ["出会い系", "セフレ", "人妻", "熟女", "エロ動画", "無修正", "アダルト", "ライブチャット", "オンラインカジノ",
        "即金", "完全無料で稼げる", "パパ活", "援交"]
HOOKS = ["今すぐ登録！", "完全無料！", "【期間限定】", "クリックはこちら→", "★★★", "誰でも簡単に", "今だけ特典あり！",
         "登録は30秒！", "秘密厳守", "↓↓↓"]
CITIES = ["札幌", "仙台", "東京", "横浜", "川崎", "さいたま", "千葉", "新潟", "静岡", "浜松", "名古屋", "京都", "大阪",
          "堺", "神戸", "岡山", "広島", "北九州", "福岡", "熊本", "那覇", "金沢", "富山", "長野", "岐阜", "津", "奈良",
          "和歌山", "鳥取", "松江", "山口", "徳島", "高松", "松山", "高知", "佐賀", "長崎", "大分", "宮崎", "鹿児島"]
SERVICES = ["水道修理", "不用品回収", "引越し", "エアコンクリーニング", "鍵の交換", "外壁塗装", "ハウスクリーニング",
            "害虫駆除", "車買取", "遺品整理"]
TEMPLATES = [
    "{city}で{service}をお探しなら、{shop}にお任せください。",
    "{city}の{service}は地域最安値の{shop}が対応します。",
    "{city}エリアの{service}なら最短30分で駆けつけます。",
    "{shop}は{city}で{service}の実績多数、お見積りは無料です。",
]


def _sentences(texts: list[str]) -> list[str]:
    return [s.strip() for t in texts for s in _SENT.findall(t) if 12 <= len(s.strip()) <= 80]


def _fill(rng: random.Random, make, lo: int = 500, hi: int = 5000) -> str:
    target, lines = rng.randrange(lo, hi), []
    while sum(map(len, lines)) < target:
        lines.append(make())
    return "\n".join(lines)


def junk_documents(sentences: list[str], titles: list[str], rng: random.Random) -> list[dict]:
    def real(k: int) -> str:
        return "".join(rng.choice(sentences) for _ in range(k))

    def stuffing() -> str:
        words = rng.sample(KEYWORDS, rng.randint(3, 5))
        if rng.random() < 0.5:
            return " ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))
        return "".join(f"{rng.choice(words)}{rng.choice(words)}なら{rng.choice(words)}の{rng.choice(words)}。"
                       for _ in range(rng.randint(2, 5)))

    def repeated() -> str:
        block = [real(1) for _ in range(rng.randint(1, 6))]
        return "\n".join(block * rng.randint(3, 12) + [real(1) for _ in range(rng.randint(0, 3))])

    def menu() -> str:
        if rng.random() < 0.5:
            return rng.choice(NAV)
        title = rng.choice(titles)
        return rng.choice([f"・{title}", f"{title}（{rng.randint(2015, 2024)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}）",
                           f"{title} » 続きを読む", f"【{rng.choice(NAV)}】{title}"])

    def numbers() -> str:
        cells = [rng.choice([f"{rng.randint(0, 99999):,}", f"{rng.uniform(-10, 10):.2f}%", f"{rng.randint(100, 9999)}円",
                             f"20{rng.randint(10, 24)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}",
                             f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"]) for _ in range(rng.randint(4, 9))]
        return rng.choice([" ", "\t", ",", " | "]).join(cells)

    def salad() -> str:
        chars = list(real(rng.randint(3, 8)))
        rng.shuffle(chars)
        return "".join(chars)

    def spam() -> str:
        return "".join(rng.choice([rng.choice(SPAM), rng.choice(HOOKS), rng.choice(SPAM) + "で" + rng.choice(KEYWORDS)])
                       for _ in range(rng.randint(3, 8))) + rng.choice(["", real(1)])

    shops = [f"{rng.choice(['あんしん', 'すぐやる', 'まごころ', 'プロ', 'スピード'])}{rng.choice(SERVICES)}センター" for _ in range(5)]

    def templated() -> str:
        city, service, shop = rng.choice(CITIES), rng.choice(SERVICES), rng.choice(shops)
        return "".join(t.format(city=city, service=service, shop=shop) for t in rng.sample(TEMPLATES, rng.randint(2, 4)))

    def spun() -> str:
        phrases = re.split(r"(?<=[はがをにでとものへ、])", rng.choice(sentences).rstrip("。"))
        rng.shuffle(phrases)
        return "".join(phrases) + "。"

    makers = {"keyword_stuffing": stuffing, "repeated_lines": repeated, "menu_links": menu, "numeric_dump": numbers,
              "char_salad": salad, "spam": spam, "templated": templated, "spun_text": spun}
    docs = []
    for kind, make in makers.items():
        for _ in range(JUNK_PER_KIND):
            if kind == "spun_text":  # a paragraph of spun sentences per line
                text = _fill(rng, lambda: "".join(spun() for _ in range(rng.randint(2, 5))))
            else:
                text = _fill(rng, make)
            docs.append({"kind": kind, "text": text})
    return docs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="/work/shared/data")
    p.add_argument("--out", default="orizuru/data/calibration")
    args = p.parse_args()
    shared, rng = Path(args.shared), random.Random(SEED)
    clean = clean_documents(shared, rng)
    wiki = load_jsonl(shared / "ja_wiki_paragraphs" / "paragraphs.jsonl")
    sentences = _sentences([r["text"] for r in wiki] + [d["text"] for d in clean if d["kind"] == "aozora"])
    titles = sorted({r["title"] for r in wiki} | {d["source"] for d in clean if d["kind"] == "wiki_country"})
    junk = junk_documents(sentences, titles, rng)
    rows = [{"id": f"clean/{d['kind']}/{i}", "label": "clean", "kind": d["kind"], "source": d["source"]} | {"text": d["text"]}
            for i, d in enumerate(clean)]
    rows += [{"id": f"junk/{d['kind']}/{i}", "label": "junk", "kind": d["kind"], "text": d["text"]} for i, d in enumerate(junk)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out / "filters.jsonl.gz", "wb", mtime=0) as f:
        for r in rows:
            r["text"] = unicodedata.normalize("NFC", r["text"])
            r["chars"] = len(r["text"])
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    by = {}
    for r in rows:
        by.setdefault((r["label"], r["kind"]), []).append(r["chars"])
    print(json.dumps({f"{k[0]}/{k[1]}": {"docs": len(v), "chars": sum(v)} for k, v in by.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
