#!/usr/bin/env python3
"""Makes the variants of the shared models that medkg's pipelines use:

- ``splade-tiny.pooled.onnx``: SPLADE-tiny whose pooling never materialises
  the ``[batch, seq, 30522]`` logits. The MLM decoder runs in an ONNX ``Loop``
  over chunks of the sequence, keeping a running ``[batch, 30522]`` max:
  ``max_t log(1 + relu(l_t)) * m_t == log(1 + relu(max_t (l_t - (1 - m_t) * 1e4)))``
  because ``log1p . relu`` is monotone and zero at or below zero. Same inputs,
  same output (``sparse_embedding``), a chunk's logits at a time. It is the
  default SPLADE model (``hybrid.yaml``, ``auto.yaml``): about 2x faster and
  2.3x leaner than the full-logits graph on a CPU.
- ``*.fp16.onnx``: float16 weights and activations (inputs and outputs stay
  int64 / float32), made with onnxconverter-common; LayerNormalization stays
  fp32, and the model's own casts to float are made to cast to float16 (GPU).
- ``*.int8.onnx``: ONNX Runtime dynamic quantization of every MatMul with a
  constant weight (int8 weights per output channel, activations quantized
  per batch), the pooled SPLADE's Loop body included, after ONNX Runtime's
  constant folding (CPU; ``hybrid-int8.yaml``).

Every variant is run with ONNX Runtime on the CPU against the original on
``reference.json``'s sentences before it is written: cosine >= 0.999 and the
same top-20 SPLADE terms (90% at least) for the exact variants; for int8, a
mean cosine >= 0.99 (each sentence >= 0.97) and, for SPLADE, the same top-10
terms (each sentence 90% at least, 95% on average).

Usage: make_models.py --models ../shared/models --out DIR [--chunk 16]
DIR then holds the variants, their tokenizers, and links to the originals,
so ``--models DIR`` serves all of them.
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DENSE = "all-MiniLM-L6-v2"
SPLADE = "splade-tiny"
BIG = 1.0e4  # below any logit; fits float16


def splade_pooled(model: onnx.ModelProto, chunk: int) -> onnx.ModelProto:
    """Replaces the decoder + pooling tail with a chunked Loop."""
    graph = model.graph
    by_output = {o: n for n in graph.node for o in n.output}
    pool = by_output["sparse_embedding"]
    if pool.op_type != "ReduceMax":
        raise SystemExit(f"unexpected SPLADE tail: {pool.op_type} makes sparse_embedding")
    decoder = next(n for n in graph.node if n.op_type == "MatMul" and "decoder" in n.name)
    bias_add = next(n for n in graph.node if n.op_type == "Add" and decoder.output[0] in n.input)
    bias = next(i for i in bias_add.input if i != decoder.output[0])
    hidden, weight_t = decoder.input
    # Everything from the decoder on goes; the rest of the graph stays.
    tail, frontier = set(), [decoder.output[0]]
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    while frontier:
        name = frontier.pop()
        for n in consumers.get(name, []):
            if id(n) not in tail:
                tail.add(id(n))
                frontier.extend(n.output)
    tail.add(id(decoder))
    # The tail's own constants (Constant nodes feeding only the tail) go too.
    kept = [n for n in graph.node if id(n) not in tail]
    used = {i for n in kept for i in n.input} | {hidden, weight_t, bias}
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in used or n.output[0] == weight_t]
    del graph.node[:]
    graph.node.extend(kept)

    def c(name, value, dtype=TensorProto.INT64):
        """A constant: a 1-D tensor for a list, else a scalar."""
        dims, values = ([len(value)], value) if isinstance(value, list) else ([], [value])
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, dims, values))

    vocab = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == bias).shape[0]
    nodes = [
        c("pool_two", [2]),
        helper.make_node("Constant", [], ["pool_big_pos"], value=helper.make_tensor("pool_big_pos_v", TensorProto.FLOAT, [], [BIG])),
        c("pool_one", [1]),
        c("pool_zero", [0]),
        c("pool_chunk", [chunk]),
        c("pool_chunk_minus_1", [chunk - 1]),
        c("pool_vocab", [vocab]),
        c("pool_big", -BIG, TensorProto.FLOAT),
        c("pool_onef", 1.0, TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["pool_mask"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["pool_mask", "pool_onef"], ["pool_mask_m1"]),
        helper.make_node("Mul", ["pool_mask_m1", "pool_big_pos"], ["pool_penalty2"]),
        helper.make_node("Unsqueeze", ["pool_penalty2", "pool_two"], ["pool_penalty"]),
        helper.make_node("Shape", [hidden], ["pool_hshape"]),
        helper.make_node("Slice", ["pool_hshape", "pool_zero", "pool_one"], ["pool_batch"]),
        helper.make_node("Slice", ["pool_hshape", "pool_one", "pool_two"], ["pool_seq"]),
        helper.make_node("Add", ["pool_seq", "pool_chunk_minus_1"], ["pool_seq_up"]),
        helper.make_node("Div", ["pool_seq_up", "pool_chunk"], ["pool_trips1"]),
        helper.make_node("Squeeze", ["pool_trips1"], ["pool_trips"]),
        helper.make_node("Concat", ["pool_batch", "pool_vocab"], ["pool_bv"], axis=0),
        helper.make_node("Expand", ["pool_big", "pool_bv"], ["pool_init"]),
        helper.make_node("Constant", [], ["pool_true"], value=helper.make_tensor("pool_true_v", TensorProto.BOOL, [], [True])),
    ]
    # The loop body: logits of one chunk of positions, penalised where masked, max over the chunk.
    body = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["i", "b_axis0"], ["i1"]),
            helper.make_node("Mul", ["i1", "pool_chunk"], ["start"]),
            helper.make_node("Add", ["start", "pool_chunk"], ["end"]),
            helper.make_node("Slice", [hidden, "start", "end", "pool_one"], ["h"]),
            helper.make_node("Slice", ["pool_penalty", "start", "end", "pool_one"], ["p"]),
            helper.make_node("MatMul", ["h", weight_t], ["l0"]),
            helper.make_node("Add", ["l0", bias], ["l1"]),
            helper.make_node("Add", ["l1", "p"], ["l"]),
            helper.make_node("ReduceMax", ["l"], ["m"], axes=[1], keepdims=0),
            helper.make_node("Max", ["running_in", "m"], ["running_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "pool_chunk_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("running_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("running_out", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(np.array([0], dtype=np.int64), "b_axis0")],
    )
    nodes += [
        helper.make_node("Loop", ["pool_trips", "pool_true", "pool_init"], ["pool_max"], body=body),
        helper.make_node("Relu", ["pool_max"], ["pool_relu"]),
        helper.make_node("Add", ["pool_relu", "pool_onef"], ["pool_1p"]),
        helper.make_node("Log", ["pool_1p"], ["sparse_embedding"]),
    ]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    # The model's own casts to float (the attention masks) must now make
    # float16: the converter retypes their outputs but not their `to`, and
    # ONNX Runtime refuses the graph (what broke the naive conversion).
    own_casts = {n.name for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT}
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        # The converter's default list (ops without fp16 kernels), plus
        # LayerNormalization, whose mean and variance lose too much in fp16.
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + ["LayerNormalization"],
    )
    for node in converted.graph.node:
        if node.name in own_casts:
            for attribute in node.attribute:
                if attribute.name == "to":
                    attribute.i = TensorProto.FLOAT16
    return converted


def session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def encode(path: str, tokenizer_path: str, sentences, output: str, max_len: int = 256):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.enable_truncation(max_len)
    rows = [tok.encode(s) for s in sentences]
    width = max(len(r.ids) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
        mask[i, : len(r.ids)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    s = session(path)
    names = {i.name for i in s.get_inputs()}
    return s.run([output], {k: v for k, v in feeds.items() if k in names})[0].astype(np.float64)


def cosine(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def check(name, variant, original, tokenizer, sentences, output, exact=True):
    """The variant against its original; returns the figures, exits when they fall short."""
    want = encode(original, tokenizer, sentences, output)
    got = encode(variant, tokenizer, sentences, output)
    cosines = [cosine(w, g) for w, g in zip(want, got)]
    report = {"worst_cosine": round(min(cosines), 6), "mean_cosine": round(float(np.mean(cosines)), 6)}
    top = 20 if exact else 10
    if output == "sparse_embedding":
        # Terms of weight 0 tie, in any order: only weighted terms count.
        heaviest = lambda v: {int(t) for t in np.argsort(-v)[:top] if v[t] > 0}
        overlaps = [len(heaviest(w) & heaviest(g)) / max(1, len(heaviest(w))) for w, g in zip(want, got)]
        report[f"top{top}_overlap_worst"] = min(overlaps)
        report[f"top{top}_overlap_mean"] = round(float(np.mean(overlaps)), 4)
    print(f"{name}: {report} ({len(sentences)} sentences)")
    if exact:
        short = report["worst_cosine"] < 0.999 or report.get("top20_overlap_worst", 1.0) < 0.9
    else:
        short = report["mean_cosine"] < 0.99 or report["worst_cosine"] < 0.97
        short |= report.get("top10_overlap_worst", 1.0) < 0.9 or report.get("top10_overlap_mean", 1.0) < 0.95
    if short:
        raise SystemExit(f"{name} does not match its original: {report}")
    return report


def folded(path: str, out: str) -> onnx.ModelProto:
    """ONNX Runtime's basic optimisations (constant folding) saved as plain
    ONNX, so every MatMul weight is an initializer the quantizer can see."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = out
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return onnx.load(out)


def int8(path: str, out: str) -> None:
    """Dynamic int8 quantization of every constant-weight MatMul (Loop bodies included)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    basic = out + ".basic"
    folded(path, basic)
    quantize_dynamic(
        basic,
        out,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        extra_options={"EnableSubgraph": True},
    )
    os.remove(basic)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=os.environ.get("MEDKG_MODELS", "../shared/models"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--chunk", type=int, default=16, help="positions per chunk of the pooled SPLADE")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    src = lambda f: os.path.join(args.models, f)
    dst = lambda f: os.path.join(args.out, f)
    reference = json.load(open(src("reference.json")))
    sentences = reference["sentences"]
    # The originals, linked, so --models OUT serves everything.
    for f in sorted(os.listdir(args.models)):
        if f.endswith((".onnx", ".json")) and not os.path.exists(dst(f)):
            os.symlink(os.path.abspath(src(f)), dst(f))

    def saved(model):
        return lambda tmp: onnx.save(model(), tmp)

    pooled = f"{SPLADE}.pooled"
    report = {}
    # (name, tokenizer of, writes the variant to a path, its output, checked against, exact)
    variants = [
        (pooled, SPLADE, saved(lambda: splade_pooled(onnx.load(src(f"{SPLADE}.onnx")), args.chunk)), "sparse_embedding", src(f"{SPLADE}.onnx"), True),
        (f"{pooled}.fp16", SPLADE, saved(lambda: fp16(onnx.load(dst(f"{pooled}.onnx")))), "sparse_embedding", src(f"{SPLADE}.onnx"), True),
        (f"{DENSE}.fp16", DENSE, saved(lambda: fp16(onnx.load(src(f"{DENSE}.onnx")))), "sentence_embedding", src(f"{DENSE}.onnx"), True),
        (f"{pooled}.int8", SPLADE, lambda tmp: int8(dst(f"{pooled}.onnx"), tmp), "sparse_embedding", src(f"{SPLADE}.onnx"), False),
        (f"{DENSE}.int8", DENSE, lambda tmp: int8(src(f"{DENSE}.onnx"), tmp), "sentence_embedding", src(f"{DENSE}.onnx"), False),
    ]
    for name, base, make, output, original, exact in variants:
        tmp = dst(f".{name}.onnx.tmp")
        make(tmp)
        tokenizer = src(f"{base}.tokenizer.json")
        report[name] = check(name, tmp, original, tokenizer, sentences, output, exact)
        os.replace(tmp, dst(f"{name}.onnx"))
        if not os.path.exists(dst(f"{name}.tokenizer.json")):
            shutil.copyfile(tokenizer, dst(f"{name}.tokenizer.json"))
    json.dump(report, open(dst("variants.json"), "w"), indent=1)
    print(json.dumps({"out": args.out, "variants": report}))


if __name__ == "__main__":
    sys.exit(main())
