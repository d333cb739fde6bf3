//! The ONNX models against the outputs of the original PyTorch models
//! (../shared/models/reference.json), batching invariance, and CUDA
//! fail-fast on a machine without CUDA.

use std::path::PathBuf;

use medkg_operators::models::{models_dir, token_budget_batches, DenseEncoder, Device, ModelFiles, SpladeEncoder};
use serde_json::Value;

fn shared() -> PathBuf {
    std::env::var_os("MEDKG_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

fn models() -> PathBuf {
    models_dir(Some(&shared().join("models"))).unwrap()
}

/// The folder of the variants: `MEDKG_MODELS` (scripts/test.sh points it at
/// what scripts/models.sh makes).
fn variants() -> PathBuf {
    let dir = models_dir(None).unwrap();
    assert!(dir.join("variants.json").is_file(), "{}: not made by scripts/models.sh", dir.display());
    dir
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(shared().join("models/reference.json")).unwrap()).unwrap()
}

fn sentences(reference: &Value) -> Vec<String> {
    reference["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn minilm() -> ModelFiles {
    ModelFiles::resolve(&models(), "all-MiniLM-L6-v2", None).unwrap()
}

fn splade() -> ModelFiles {
    ModelFiles::resolve(&models(), "splade-tiny", None).unwrap()
}

#[test]
fn dense_vectors_match_pytorch() {
    dense_matches_pytorch(&minilm(), 0.9999);
}

/// The variants scripts/make_models.py makes (scripts/test.sh runs it into
/// `MEDKG_MODELS`), run on the CPU through medkg's own encoders: fp16
/// MiniLM, SPLADE pooled in chunks (fp32 and fp16), against the original
/// PyTorch outputs.
#[test]
fn gpu_variants_fp16_and_pooled_match_pytorch() {
    let dir = variants();
    let files = |name: &str| ModelFiles::resolve(&dir, name, None).unwrap();
    dense_matches_pytorch(&files("all-MiniLM-L6-v2.fp16"), 0.999);
    splade_matches_pytorch(&files("splade-tiny.pooled"), 20, 1e-3);
    splade_matches_pytorch(&files("splade-tiny.pooled.fp16"), 10, 2e-2);
}

/// The int8 variants (dynamic quantization) against PyTorch: the dense
/// vectors within cosine 0.99 on average (0.97 each), SPLADE's top-10 terms
/// the same on average 95% (90% each) with the vectors within cosine 0.99.
#[test]
fn int8_variants_stay_close_to_pytorch() {
    let dir = variants();
    let reference = reference();
    let texts = sentences(&reference);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let dense =
        DenseEncoder::load(&ModelFiles::resolve(&dir, "all-MiniLM-L6-v2.int8", None).unwrap(), Device::Cpu, 256, 1)
            .unwrap();
    let got = dense.encode(&refs).unwrap();
    let cosines: Vec<f64> = reference["dense_all_minilm_l6_v2"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&got)
        .map(|(want, got)| cosine(got, &pytorch_vector(want)))
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    assert!(mean >= 0.99 && cosines.iter().all(|&c| c >= 0.97), "dense int8: {cosines:?}");

    let files = ModelFiles::resolve(&dir, "splade-tiny.pooled.int8", None).unwrap();
    let splade = SpladeEncoder::load(&files, Device::Cpu, 256, 1, 30522, 0.0).unwrap();
    let got = splade.encode(&refs).unwrap();
    let mut overlaps = Vec::new();
    for (i, want) in reference["sparse_splade_tiny"].as_array().unwrap().iter().enumerate() {
        let (want, ours) = (pytorch_terms(want), heaviest_first(&got[i]));
        // (Terms of weight 0 tie, in any order: only weighted terms count.)
        let top = |v: &[(u32, f32)]| {
            v.iter().filter(|t| t.1 > 0.0).take(10).map(|t| t.0).collect::<std::collections::HashSet<u32>>()
        };
        let expected = top(&want);
        overlaps.push(top(&ours).intersection(&expected).count() as f64 / expected.len().max(1) as f64);
        let c = sparse_cosine(&ours, &want);
        assert!(c >= 0.99, "splade int8: sentence {i}: cosine {c}");
    }
    let mean = overlaps.iter().sum::<f64>() / overlaps.len() as f64;
    assert!(mean >= 0.95 && overlaps.iter().all(|&o| o >= 0.9), "splade int8 top-10 overlaps: {overlaps:?}");
}

/// A dense vector of reference.json.
fn pytorch_vector(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A SPLADE vector of reference.json (`{"term id": weight}`), heaviest first.
fn pytorch_terms(value: &Value) -> Vec<(u32, f32)> {
    let mut terms: Vec<(u32, f32)> =
        value.as_object().unwrap().iter().map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap() as f32)).collect();
    terms.sort_by(|a, b| b.1.total_cmp(&a.1));
    terms
}

/// Our SPLADE vector's terms, heaviest first.
fn heaviest_first(vector: &medkg_operators::models::SparseVector) -> Vec<(u32, f32)> {
    let mut terms: Vec<(u32, f32)> = vector.indices.iter().copied().zip(vector.weights.iter().copied()).collect();
    terms.sort_by(|a, b| b.1.total_cmp(&a.1));
    terms
}

/// The cosine of two SPLADE vectors over the whole vocabulary.
fn sparse_cosine(a: &[(u32, f32)], b: &[(u32, f32)]) -> f64 {
    let dense = |v: &[(u32, f32)]| {
        let mut d = vec![0f32; 30522];
        v.iter().for_each(|&(id, w)| d[id as usize] = w);
        d
    };
    cosine(&dense(a), &dense(b))
}

fn dense_matches_pytorch(files: &ModelFiles, min_cosine: f64) {
    let reference = reference();
    let texts = sentences(&reference);
    let encoder = DenseEncoder::load(files, Device::Cpu, 256, 1).unwrap();
    assert_eq!(encoder.dim(), 384);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // One padded batch, and one at a time: both must match.
    let batched = encoder.encode(&refs).unwrap();
    for (i, expected) in reference["dense_all_minilm_l6_v2"].as_array().unwrap().iter().enumerate() {
        let expected = pytorch_vector(expected);
        let single = encoder.encode(&[refs[i]]).unwrap().remove(0);
        for (how, got) in [("batched", &batched[i]), ("single", &single)] {
            let c = cosine(got, &expected);
            assert!(c >= min_cosine, "{}: {how} sentence {i} {:?}: cosine {c}", files.model.display(), texts[i]);
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "not L2-normalised: {norm}");
        }
    }
}

#[test]
fn splade_terms_match_pytorch() {
    splade_matches_pytorch(&splade(), 20, 1e-3);
    // Top-k and threshold are honoured, ids come back sorted.
    let texts = sentences(&reference());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let small = SpladeEncoder::load(&splade(), Device::Cpu, 256, 1, 5, 0.5).unwrap();
    for v in small.encode(&refs).unwrap() {
        assert!(v.indices.len() <= 5);
        assert!(v.weights.iter().all(|&w| w > 0.5));
        assert!(v.indices.windows(2).all(|w| w[0] < w[1]));
    }
}

/// The `top` heaviest terms of each sentence are PyTorch's, with weights
/// within `tolerance`, and the whole vectors' cosine is at least 0.999.
fn splade_matches_pytorch(files: &ModelFiles, top: usize, tolerance: f32) {
    let reference = reference();
    let texts = sentences(&reference);
    let encoder = SpladeEncoder::load(files, Device::Cpu, 256, 1, 30522, 0.0).unwrap();
    let name = files.model.display();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = encoder.encode(&refs).unwrap();
    for (i, expected) in reference["sparse_splade_tiny"].as_array().unwrap().iter().enumerate() {
        let (expected, ours) = (pytorch_terms(expected), heaviest_first(&got[i]));
        let heaviest = |v: &[(u32, f32)]| {
            let mut ids: Vec<u32> = v.iter().take(top).map(|t| t.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(heaviest(&ours), heaviest(&expected), "{name}: sentence {i} {:?}: top-{top} terms differ", texts[i]);
        for (id, weight) in expected.iter().take(top) {
            let w = ours.iter().find(|t| t.0 == *id).map(|t| t.1).unwrap();
            assert!((w - weight).abs() <= tolerance, "{name}: sentence {i} term {id}: {w} vs {weight}");
        }
        let c = sparse_cosine(&ours, &expected);
        assert!(c >= 0.999, "{name}: sentence {i}: cosine {c}");
    }
    assert!(encoder.term(got[0].indices[0]).is_some());
}

#[test]
fn token_budget_batches_give_the_same_vectors() {
    let texts = ["short", "a somewhat longer sentence about aspirin and stroke", "mid length text here", "x"];
    let encoder = DenseEncoder::load(&minilm(), Device::Cpu, 256, 1).unwrap();
    let lengths = encoder.token_lengths(&texts).unwrap();
    assert_eq!(lengths[0], 3, "[CLS] short [SEP]");
    let whole = encoder.encode(&texts).unwrap();
    let many = encoder.encode_many(&texts, 24).unwrap();
    for (a, b) in many.iter().zip(&whole) {
        assert!(cosine(a, b) > 0.99999, "encode_many keeps input order");
    }
    for batch in token_budget_batches(&lengths, 24) {
        let part: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
        for (vector, &i) in encoder.encode(&part).unwrap().iter().zip(&batch) {
            assert!(cosine(vector, &whole[i]) > 0.99999);
        }
    }
}

#[test]
fn cuda_fails_fast_and_names_cuda() {
    // This machine (and CI) has no CUDA: asking for it must fail, loudly.
    let error =
        DenseEncoder::load(&minilm(), Device::Cuda, 256, 1).err().expect("device cuda must not fall back to the CPU");
    assert_eq!(error.kind, "cuda_unavailable");
    assert!(error.message.contains("CUDA"), "{}", error.message);
    let error = SpladeEncoder::load(&splade(), Device::Cuda, 256, 1, 128, 0.0)
        .err()
        .expect("no CPU fallback for SPLADE either");
    assert_eq!(error.kind, "cuda_unavailable");
}

#[test]
fn missing_models_are_clear_errors() {
    let error = ModelFiles::resolve(&models(), "no-such-model", None).unwrap_err();
    assert_eq!(error.kind, "model_missing");
    assert!(error.message.contains("no-such-model.onnx"));
}
