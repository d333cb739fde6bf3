#!/usr/bin/env python3
"""Makes the GPU variants of the shared models (issue [6]):

- ``splade-tiny.pooled.onnx``: SPLADE-tiny whose pooling never materialises
  the ``[batch, seq, 30522]`` logits. The MLM decoder runs in an ONNX ``Loop``
  over chunks of the sequence, keeping a running ``[batch, 30522]`` max:
  ``max_t log(1 + relu(l_t)) * m_t == log(1 + relu(max_t (l_t - (1 - m_t) * 1e4)))``
  because ``log1p . relu`` is monotone and zero at or below zero. Same inputs,
  same output (``sparse_embedding``), a chunk's logits at a time.
- ``*.fp16.onnx``: float16 weights and activations (inputs and outputs stay
  int64 / float32), made with onnxconverter-common; LayerNormalization stays
  fp32, and the model's own casts to float are made to cast to float16.

Every variant is run with ONNX Runtime on the CPU against the original on
``reference.json``'s sentences before it is written (cosine >= 0.999 for the
dense model; for SPLADE, cosine >= 0.999 and the same top terms).

Usage: make_gpu_models.py --models ../shared/models --out DIR [--chunk 16]
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


def check(name, variant, original, tokenizer, sentences, output, top=20):
    want = encode(original, tokenizer, sentences, output)
    got = encode(variant, tokenizer, sentences, output)
    worst = min(cosine(w, g) for w, g in zip(want, got))
    overlap = 1.0
    if output == "sparse_embedding":
        overlap = min(len(set(np.argsort(-w)[:top]) & set(np.argsort(-g)[:top])) / top for w, g in zip(want, got))
    print(f"{name}: worst cosine {worst:.6f}, top-{top} overlap {overlap:.2f} ({len(sentences)} sentences)")
    if worst < 0.999 or overlap < 0.9:
        raise SystemExit(f"{name} does not match its original (cosine {worst}, overlap {overlap})")
    return worst


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

    report = {}
    variants = [
        (f"{SPLADE}.pooled", SPLADE, lambda: splade_pooled(onnx.load(src(f"{SPLADE}.onnx")), args.chunk), "sparse_embedding"),
        (f"{SPLADE}.pooled.fp16", SPLADE, lambda: fp16(onnx.load(dst(f"{SPLADE}.pooled.onnx"))), "sparse_embedding"),
        (f"{DENSE}.fp16", DENSE, lambda: fp16(onnx.load(src(f"{DENSE}.onnx"))), "sentence_embedding"),
    ]
    for name, base, make, output in variants:
        model = make()
        tmp = dst(f".{name}.onnx.tmp")
        onnx.save(model, tmp)
        tokenizer = src(f"{base}.tokenizer.json")
        report[name] = check(name, tmp, src(f"{base}.onnx"), tokenizer, sentences, output)
        os.replace(tmp, dst(f"{name}.onnx"))
        if not os.path.exists(dst(f"{name}.tokenizer.json")):
            shutil.copyfile(tokenizer, dst(f"{name}.tokenizer.json"))
    json.dump(report, open(dst("variants.json"), "w"), indent=1)
    print(json.dumps({"out": args.out, "worst_cosine": report}))


if __name__ == "__main__":
    sys.exit(main())
