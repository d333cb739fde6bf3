#!/usr/bin/env python3
"""A held-out retrieval set from the bundled PubMed sample: a title finds
its abstract.

Writes DIR/abstracts.jsonl, the first --docs records that have an abstract
of 50 words or more, with their titles taken out (so a query never meets
its own words in a title field), and DIR/relevance.tsv, --queries of those
titles (three words or more, drawn with --seed), each with the document it
should find: `TITLE<TAB>pmid:PMID`, the format of `medkg bench --queries`.
No model has seen these pairs: all-MiniLM-L6-v2 and SPLADE-tiny come
from their PyPI packages, and medkg tunes nothing on them.

Usage: relevance.py --out DIR [--docs 5000] [--queries 500] [--seed 7]
"""

import argparse
import gzip
import json
import os
import random


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = os.environ.get("MEDKG_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    parser.add_argument("--sample", default=os.path.join(shared, "data", "pubmed_sample.jsonl.gz"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    kept = []
    with gzip.open(args.sample, "rt") as sample, open(os.path.join(args.out, "abstracts.jsonl"), "w") as out:
        for line in sample:
            record = json.loads(line)
            if len((record.get("abstract") or "").split()) < 50:
                continue
            kept.append((record["pmid"], " ".join((record.get("title") or "").split())))
            record["title"] = ""
            out.write(json.dumps(record) + "\n")
            if len(kept) == args.docs:
                break
    titled = [(pmid, title) for pmid, title in kept if len(title.split()) >= 3 and "\t" not in title]
    random.Random(args.seed).shuffle(titled)
    with open(os.path.join(args.out, "relevance.tsv"), "w") as out:
        for pmid, title in titled[: args.queries]:
            out.write(f"{title}\tpmid:{pmid}\n")
    print(f"{args.out}: {len(kept)} abstracts, {min(len(titled), args.queries)} judged queries")


if __name__ == "__main__":
    main()
