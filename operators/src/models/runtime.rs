//! Loading ONNX Runtime and building sessions.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;

use crate::StageError;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// The CUDA execution provider, or an error (never the CPU instead).
    Cuda,
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("unknown device `{other}` (cpu | cuda)")),
        }
    }
}

/// The ONNX Runtime version whose library `scripts/fetch-onnxruntime.sh` caches.
pub const ORT_VERSION: &str = "1.31.1";

/// The ONNX Runtime library to load: `ORT_DYLIB_PATH`, else the copy cached
/// by `scripts/fetch-onnxruntime.sh`. An empty `ORT_DYLIB_PATH` counts as
/// unset (a shell's `ORT_DYLIB_PATH= medkg …`), and one that names a
/// directory is refused with a message saying so, not handed to `dlopen`.
pub fn ort_library() -> Result<PathBuf, StageError> {
    ort_library_from(std::env::var_os("ORT_DYLIB_PATH"), cache_dir())
}

/// medkg's cache: `MEDKG_CACHE`, else `~/.cache/medkg` (what the scripts fill).
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("MEDKG_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medkg")))
}

fn ort_library_from(variable: Option<std::ffi::OsString>, cache: Option<PathBuf>) -> Result<PathBuf, StageError> {
    let given = variable.map(PathBuf::from).filter(|p| !p.as_os_str().to_string_lossy().trim().is_empty());
    if let Some(path) = given {
        if path.is_dir() {
            return Err(StageError::unavailable(
                "no_onnxruntime",
                format!(
                    "ORT_DYLIB_PATH={} is a directory: name the library file in it (libonnxruntime.so…)",
                    path.display()
                ),
            ));
        }
        return Ok(path);
    }
    if let Some(cache) = cache {
        let lib = cache.join(format!("onnxruntime-{ORT_VERSION}/libonnxruntime.so.{ORT_VERSION}"));
        if lib.is_file() {
            return Ok(lib);
        }
    }
    Err(StageError::unavailable(
        "no_onnxruntime",
        "ONNX Runtime was not found: set ORT_DYLIB_PATH to libonnxruntime.so (≥ 1.31), or run scripts/fetch-onnxruntime.sh",
    ))
}

/// The process's one ONNX Runtime environment (ONNX Runtime allows one).
fn environment() -> Result<Environment, StageError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = ort_library().map_err(|e| e.message)?;
        let builder =
            ort::init_from(&lib).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
        builder.with_name("medkg").build().map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .clone()
    .map_err(|message| StageError::unavailable("onnxruntime", message))
}

/// A model's ONNX graph and tokenizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The `.onnx` file.
    pub model: PathBuf,
    /// Its `tokenizer.json`.
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// `name` is a path to an `.onnx` file, or a model name looked up in
    /// `dir` as `{name}.onnx` + `{name}.tokenizer.json`; `tokenizer`
    /// overrides the tokenizer's path.
    pub fn resolve(dir: &Path, name: &str, tokenizer: Option<&str>) -> Result<ModelFiles, StageError> {
        let model = if name.ends_with(".onnx") { PathBuf::from(name) } else { dir.join(format!("{name}.onnx")) };
        let tokenizer = match tokenizer {
            Some(t) => PathBuf::from(t),
            None => {
                let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                model.with_file_name(format!("{stem}.tokenizer.json"))
            }
        };
        for file in [&model, &tokenizer] {
            if !file.is_file() {
                return Err(StageError::unavailable(
                    "model_missing",
                    format!("{} not found (models come from --models, MEDKG_MODELS, ~/.cache/medkg/models or ../shared/models; scripts/models.sh makes the pooled, int8 and fp16 variants, ../shared/models/MODELS.md the originals)", file.display()),
                ));
            }
        }
        Ok(ModelFiles { model, tokenizer })
    }
}

/// The models directory: `explicit`, else `MEDKG_MODELS`, else the folder
/// `scripts/models.sh` makes (`~/.cache/medkg/models`: the shared models
/// and their pooled, int8 and fp16 variants) when it exists, else
/// `../shared/models` when it exists.
pub fn models_dir(explicit: Option<&Path>) -> Result<PathBuf, StageError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("MEDKG_MODELS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let made = cache_dir().map(|cache| cache.join("models")).filter(|dir| dir.join("variants.json").is_file());
    if let Some(made) = made {
        return Ok(made);
    }
    let shared = PathBuf::from("../shared/models");
    if shared.is_dir() {
        return Ok(shared);
    }
    Err(StageError::unavailable(
        "no_models",
        "no models directory: run scripts/models.sh, or pass --models DIR or set MEDKG_MODELS (../shared/models/MODELS.md says how to build the models)",
    ))
}

/// A session for `model` on `device` with `intra_threads` CPU threads.
pub(crate) fn session(model: &Path, device: Device, intra_threads: usize) -> Result<Session, StageError> {
    let env = environment()?;
    // Builder errors carry the builder and are not Send: keep only their text.
    let fail = |what: &str, e: &dyn std::fmt::Display| StageError::unavailable("onnxruntime", format!("{what}: {e}"));
    let mut builder = Session::builder(&env).map_err(|e| fail("cannot create a session", &e))?;
    builder = builder.with_intra_threads(intra_threads.max(1)).map_err(|e| fail("intra_threads", &e))?;
    if device == Device::Cuda {
        let cuda = ort::ep::CUDA::default().build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| {
            StageError::unavailable(
                "cuda_unavailable",
                format!("device cuda was asked for, but the CUDA execution provider cannot be registered ({e}); medkg does not fall back to the CPU: use device: cpu, or run where ONNX Runtime CUDA is installed"),
            )
        })?;
    } else {
        // No memory pattern on the CPU: a pattern plans (and keeps) one
        // block per input shape seen, and length-sorted token-budget batches
        // come in many shapes. The arena alone reuses its blocks at the same
        // speed, with a quarter less memory (benches/RESULTS.md). (Turning
        // the arena off as well halves the speed.)
        builder = builder.with_memory_pattern(false).map_err(|e| fail("memory pattern", &e))?;
    }
    builder.commit_from_file(model).map_err(|e| fail(&format!("cannot load {}", model.display()), &e))
}

/// Runs a BERT-style session (`input_ids`, `attention_mask`,
/// `token_type_ids`) on a batch and maps each row of its 2-D `output`.
pub(crate) fn run_rows<T>(
    session: &std::sync::Mutex<Session>,
    batch: &super::Tokenized,
    output: &str,
    model: &str,
    row: impl FnMut(ndarray::ArrayView1<'_, f32>) -> T,
) -> Result<Vec<T>, StageError> {
    use ort::value::TensorRef;
    let fail = |e: ort::Error| StageError::unavailable("inference", format!("{model}: {e}"));
    let mut session =
        session.lock().map_err(|_| StageError::unavailable("inference", format!("a {model} session panicked")))?;
    let outputs = session
        .run(ort::inputs![
            "input_ids" => TensorRef::from_array_view(batch.input_ids.view()).map_err(fail)?,
            "attention_mask" => TensorRef::from_array_view(batch.attention_mask.view()).map_err(fail)?,
            "token_type_ids" => TensorRef::from_array_view(batch.token_type_ids.view()).map_err(fail)?,
        ])
        .map_err(fail)?;
    let rows = outputs
        .get(output)
        .ok_or_else(|| StageError::unavailable("inference", format!("the {model} has no `{output}` output")))?
        .try_extract_array::<f32>()
        .map_err(fail)?;
    let rows = rows.into_dimensionality::<ndarray::Ix2>().map_err(|e| {
        StageError::unavailable("inference", format!("the {model}'s `{output}` is not [batch, dim]: {e}"))
    })?;
    Ok(rows.outer_iter().map(row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_ort_dylib_path_is_unset_and_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cached = dir.path().join(format!("onnxruntime-{ORT_VERSION}/libonnxruntime.so.{ORT_VERSION}"));
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, b"").unwrap();
        let cache = Some(dir.path().to_path_buf());
        for empty in ["", "  "] {
            assert_eq!(ort_library_from(Some(empty.into()), cache.clone()).unwrap(), cached, "{empty:?}");
        }
        let error = ort_library_from(Some(dir.path().as_os_str().to_owned()), cache.clone()).unwrap_err();
        assert!(error.message.contains("is a directory"), "{error}");
        assert_eq!(
            ort_library_from(Some("/opt/ort/libonnxruntime.so".into()), cache).unwrap(),
            PathBuf::from("/opt/ort/libonnxruntime.so")
        );
        assert_eq!(ort_library_from(None, None).unwrap_err().kind, "no_onnxruntime");
    }
}
