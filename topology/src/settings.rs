//! Each stage type's settings: the keys its `config:` accepts, their
//! defaults, and the typed struct they decode into, side by side, once.
//!
//! The topology validates every key against [`StageKind::config_keys`]
//! (which reads the lists here) and then decodes the stage's `config:` into
//! its [`StageSettings`]; the engine reads only these typed settings, never
//! raw keys, so a default lives in exactly one place.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::kinds::{ConfigKey, StageKind, ValueKind::*};
use crate::stream::StreamSpec;

const fn key(name: &'static str, kind: crate::kinds::ValueKind) -> ConfigKey {
    ConfigKey { name, kind }
}

/// `base` followed by `more` (`T` is `N + M`): a stage type that takes
/// another's keys and a few of its own.
const fn extend<const N: usize, const M: usize, const T: usize>(
    base: &[ConfigKey; N],
    more: &[ConfigKey; M],
) -> [ConfigKey; T] {
    assert!(N + M == T, "T must be N + M");
    let mut out = [key("", Bool); T];
    let mut i = 0;
    while i < T {
        out[i] = if i < N { base[i] } else { more[i - N] };
        i += 1;
    }
    out
}

/// Formats `parse` understands; `auto` sniffs each payload.
pub const PARSE_FORMATS: &[&str] = &["auto", "pubmed-jsonl", "pubmed-xml", "jats", "ctgov", "openalex", "tei", "ir"];
const DEVICES: &[&str] = &["cpu", "cuda"];
/// Index backends.
pub const INDEX_BACKENDS: &[&str] = &["bm25", "splade", "dense"];

impl StageKind {
    /// The configuration keys the stage accepts (declared with its
    /// settings in this module).
    pub fn config_keys(self) -> &'static [ConfigKey] {
        match self {
            StageKind::Ingest => IngestSettings::KEYS,
            StageKind::Fetch => FetchSettings::FETCH_KEYS,
            StageKind::Download => FetchSettings::DOWNLOAD_KEYS,
            StageKind::Parse => ParseSettings::KEYS,
            StageKind::Chunk => ChunkSettings::KEYS,
            StageKind::Embed => ModelSettings::EMBED_KEYS,
            StageKind::Splade => ModelSettings::SPLADE_KEYS,
            StageKind::Index => IndexSettings::KEYS,
            StageKind::Extract => ExtractSettings::KEYS,
            StageKind::Kg => KgSettings::KEYS,
        }
    }
}

/// A stage's typed settings, by stage type.
#[derive(Clone, Debug, PartialEq)]
pub enum StageSettings {
    /// `ingest`
    Ingest(IngestSettings),
    /// `fetch`
    Fetch(FetchSettings),
    /// `download`
    Download(FetchSettings),
    /// `parse`
    Parse(ParseSettings),
    /// `chunk`
    Chunk(ChunkSettings),
    /// `embed`
    Embed(ModelSettings),
    /// `splade`
    Splade(ModelSettings),
    /// `index`
    Index(IndexSettings),
    /// `extract`
    Extract(ExtractSettings),
    /// `kg`
    Kg(KgSettings),
}

impl StageSettings {
    /// Decodes a stage's validated `config` (missing keys take their defaults).
    pub fn decode(kind: StageKind, config: &Map<String, Value>) -> StageSettings {
        let c = Config(config);
        match kind {
            StageKind::Ingest => StageSettings::Ingest(IngestSettings::decode(c)),
            StageKind::Fetch => StageSettings::Fetch(FetchSettings::decode(c, false)),
            StageKind::Download => StageSettings::Download(FetchSettings::decode(c, true)),
            StageKind::Parse => StageSettings::Parse(ParseSettings::decode(c)),
            StageKind::Chunk => StageSettings::Chunk(ChunkSettings::decode(c)),
            StageKind::Embed => StageSettings::Embed(ModelSettings::decode(c, ModelSettings::EMBED)),
            StageKind::Splade => StageSettings::Splade(ModelSettings::decode(c, ModelSettings::SPLADE)),
            StageKind::Index => StageSettings::Index(IndexSettings::decode(c)),
            StageKind::Extract => StageSettings::Extract(ExtractSettings::decode(c)),
            StageKind::Kg => StageSettings::Kg(KgSettings::decode(c)),
        }
    }

    /// What is wrong between keys that are each valid on their own.
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        match self {
            StageSettings::Chunk(chunk) if chunk.split_overlap >= chunk.split_length => problems.push((
                "split_overlap",
                format!(
                    "split_overlap ({}) must be smaller than split_length ({})",
                    chunk.split_overlap, chunk.split_length
                ),
            )),
            StageSettings::Index(index) if index.backends.is_empty() => {
                problems.push(("backends", "backends must name at least one backend".into()))
            }
            _ => {}
        }
        problems
    }
}

/// Reads validated values (their types were checked against the key list).
#[derive(Clone, Copy)]
struct Config<'a>(&'a Map<String, Value>);

impl Config<'_> {
    fn u64(&self, key: &str) -> Option<u64> {
        self.0.get(key).and_then(Value::as_u64)
    }

    fn usize(&self, key: &str, default: usize) -> usize {
        self.u64(key).map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(Value::as_str).map(str::to_string)
    }

    fn list(&self, key: &str) -> Option<Vec<String>> {
        let items = self.0.get(key).and_then(Value::as_array)?;
        Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect())
    }
}

/// `ingest`: size limits on raw records, and the API the pipeline pages
/// through when it names one.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestSettings {
    /// Records above this size are dead-lettered (default 256 MiB).
    pub max_record_bytes: usize,
    /// `source: { adapter: ctgov, query: ..., ... }`: the pipeline reads
    /// this API unless the command line names another source.
    pub source: Option<crate::AdapterSpec>,
}

impl IngestSettings {
    /// The keys of `ingest`.
    pub const KEYS: &'static [ConfigKey] = &[key("max_record_bytes", PositiveInt), key("source", Adapter)];
    /// The default cap on one raw record (a JSONL line or a whole file).
    pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 << 20;

    fn decode(c: Config<'_>) -> IngestSettings {
        IngestSettings {
            max_record_bytes: c.usize("max_record_bytes", Self::DEFAULT_MAX_RECORD_BYTES),
            source: c.0.get("source").and_then(|v| crate::AdapterSpec::from_value(v).ok()),
        }
    }
}

/// `fetch` and `download`: one HTTP GET per record.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchSettings {
    /// The record field holding the URL (`url`; download: `pdf_url`).
    pub url_field: String,
    /// The record field holding the document id (`id`).
    pub id_field: String,
    /// The largest body taken (16 MiB; download: 64 MiB).
    pub max_bytes: usize,
    /// Hosts the stage may call (names, `*.domain`, IPs, CIDR ranges).
    pub allow_hosts: Vec<String>,
    /// Calls in flight per worker (16).
    pub max_in_flight: usize,
    /// Download only: where downloaded records go, `dir:PATH` or
    /// `kafka:TOPIC` (default: beside the source).
    pub output: Option<StreamSpec>,
}

impl FetchSettings {
    const FETCH: [ConfigKey; 5] = [
        key("url_field", Text),
        key("id_field", Text),
        key("max_bytes", PositiveInt),
        key("allow_hosts", Hosts),
        key("max_in_flight", PositiveInt),
    ];
    /// The keys of `fetch`.
    pub const FETCH_KEYS: &'static [ConfigKey] = &Self::FETCH;
    /// The keys of `download`: `fetch`'s and `output`.
    pub const DOWNLOAD_KEYS: &'static [ConfigKey] = &extend::<5, 1, 6>(&Self::FETCH, &[key("output", Stream)]);

    fn decode(c: Config<'_>, download: bool) -> FetchSettings {
        let (url_field, max_bytes) = if download { ("pdf_url", 64 << 20) } else { ("url", 16 << 20) };
        FetchSettings {
            url_field: c.text("url_field").unwrap_or_else(|| url_field.into()),
            id_field: c.text("id_field").unwrap_or_else(|| "id".into()),
            max_bytes: c.usize("max_bytes", max_bytes),
            allow_hosts: c.list("allow_hosts").unwrap_or_default(),
            max_in_flight: c.usize("max_in_flight", 16),
            output: c.text("output").filter(|_| download).and_then(|o| o.parse().ok()),
        }
    }
}

/// `parse`: payload → document IR.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseSettings {
    /// One of [`PARSE_FORMATS`] (`auto`).
    pub format: String,
    /// The largest document taken (8 MiB).
    pub max_doc_bytes: usize,
}

impl ParseSettings {
    /// The keys of `parse`.
    pub const KEYS: &'static [ConfigKey] = &[key("format", OneOf(PARSE_FORMATS)), key("max_doc_bytes", PositiveInt)];

    fn decode(c: Config<'_>) -> ParseSettings {
        ParseSettings {
            format: c.text("format").unwrap_or_else(|| "auto".into()),
            max_doc_bytes: c.usize("max_doc_bytes", 8 << 20),
        }
    }
}

/// `chunk`: document → chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkSettings {
    /// `word`, `sentence` or `passage` (`word`).
    pub split_by: String,
    /// Units per chunk (200).
    pub split_length: usize,
    /// Units shared with the previous chunk (20; less than `split_length`).
    pub split_overlap: usize,
    /// With `word`: pack whole sentences (true).
    pub respect_sentence_boundary: bool,
}

impl ChunkSettings {
    /// The keys of `chunk`.
    pub const KEYS: &'static [ConfigKey] = &[
        key("split_by", OneOf(&["word", "sentence", "passage"])),
        key("split_length", PositiveInt),
        key("split_overlap", NonNegInt),
        key("respect_sentence_boundary", Bool),
    ];

    fn decode(c: Config<'_>) -> ChunkSettings {
        ChunkSettings {
            split_by: c.text("split_by").unwrap_or_else(|| "word".into()),
            split_length: c.usize("split_length", 200),
            split_overlap: c.usize("split_overlap", 20),
            respect_sentence_boundary: c.0.get("respect_sentence_boundary").and_then(Value::as_bool).unwrap_or(true),
        }
    }
}

/// `embed` and `splade`: an ONNX model over every chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    /// A model name in the models directory, or a path to an `.onnx` file
    /// (embed: `all-MiniLM-L6-v2`; splade: `splade-tiny.pooled`).
    pub model: String,
    /// Its tokenizer (default: beside the model).
    pub tokenizer: Option<String>,
    /// `cpu` or `cuda` (`cpu`; `--device` overrides it).
    pub device: String,
    /// `fp32`, `fp16` or `int8`: which variant of a model name to load
    /// (`{model}.{precision}`; `fp32` is the name itself).
    pub precision: String,
    /// Truncation (256).
    pub max_seq_len: usize,
    /// Padded tokens per batch (4096: 16 sequences of 256).
    pub max_batch_tokens: usize,
    /// ONNX Runtime threads per worker (default: the cores shared among workers).
    pub intra_threads: Option<usize>,
    /// SPLADE: terms kept per chunk (128).
    pub top_k: usize,
    /// SPLADE: least weight kept (0).
    pub threshold: f32,
}

/// The precisions a model stage can ask for.
pub const PRECISIONS: &[&str] = &["fp32", "fp16", "int8"];

/// A model stage's defaults.
pub struct ModelDefaults {
    model: &'static str,
    max_batch_tokens: usize,
}

impl ModelSettings {
    /// `embed`'s defaults.
    pub const EMBED: ModelDefaults = ModelDefaults { model: "all-MiniLM-L6-v2", max_batch_tokens: 4096 };
    /// `splade`'s defaults.
    pub const SPLADE: ModelDefaults = ModelDefaults { model: "splade-tiny.pooled", max_batch_tokens: 4096 };
    const MODEL: [ConfigKey; 7] = [
        key("model", Text),
        key("tokenizer", Text),
        key("device", OneOf(DEVICES)),
        key("precision", OneOf(PRECISIONS)),
        key("max_seq_len", PositiveInt),
        key("max_batch_tokens", PositiveInt),
        key("intra_threads", PositiveInt),
    ];
    /// The keys of `embed`.
    pub const EMBED_KEYS: &'static [ConfigKey] = &Self::MODEL;
    /// The keys of `splade`: `embed`'s, `top_k` and `threshold`.
    pub const SPLADE_KEYS: &'static [ConfigKey] =
        &extend::<7, 2, 9>(&Self::MODEL, &[key("top_k", PositiveInt), key("threshold", NonNegFloat)]);

    fn decode(c: Config<'_>, defaults: ModelDefaults) -> ModelSettings {
        ModelSettings {
            model: c.text("model").unwrap_or_else(|| defaults.model.into()),
            tokenizer: c.text("tokenizer"),
            device: c.text("device").unwrap_or_else(|| "cpu".into()),
            precision: c.text("precision").unwrap_or_else(|| "fp32".into()),
            max_seq_len: c.usize("max_seq_len", 256),
            max_batch_tokens: c.usize("max_batch_tokens", defaults.max_batch_tokens),
            intra_threads: c.u64("intra_threads").map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            top_k: c.usize("top_k", 128),
            threshold: c.0.get("threshold").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        }
    }
}

/// `index`: tantivy BM25 (+ SPLADE terms) and FAISS, committed per epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexSettings {
    /// Of [`INDEX_BACKENDS`] (`[bm25]`).
    pub backends: Vec<String>,
    /// When a shard commits once the frontier has passed what it wrote (`1s`).
    pub commit_interval: CommitInterval,
    /// Indexing memory per shard, MiB (64).
    pub writer_memory_mb: usize,
}

impl IndexSettings {
    /// The keys of `index`.
    pub const KEYS: &'static [ConfigKey] = &[
        key("backends", ListOf(INDEX_BACKENDS)),
        key("commit_interval", crate::kinds::ValueKind::CommitInterval),
        key("writer_memory_mb", PositiveInt),
    ];

    fn decode(c: Config<'_>) -> IndexSettings {
        IndexSettings {
            backends: c.list("backends").unwrap_or_else(|| vec!["bm25".into()]),
            commit_interval: c.text("commit_interval").and_then(|t| t.parse().ok()).unwrap_or_default(),
            writer_memory_mb: c.usize("writer_memory_mb", 64),
        }
    }

    /// Whether the index writes `backend`.
    pub fn has(&self, backend: &str) -> bool {
        self.backends.iter().any(|b| b == backend)
    }
}

/// When an index commits, once the dataflow's frontier has passed the
/// epochs it wrote: `auto` (the default), or at most once per a fixed
/// interval (`1s`, say).
///
/// `auto` commits at most every 100 ms while the run's sources have
/// headroom (over the last second, they spent a tenth or more of their
/// time waiting for something to read: a topic read as fast as it is
/// written, an API between polls), and at most once a second while they
/// have none (a file, a topic read behind its producers). A commit costs
/// more than the documents it makes searchable: a tantivy segment of its
/// own, fsyncs, later merges. Where there is time to spare, it buys
/// freshness; where there is none, it would slow the engine down, so
/// `auto` then commits as seldom as the former fixed 1 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommitInterval {
    /// [`CommitInterval::AUTO_FRESH`] with headroom, else [`CommitInterval::AUTO_BUSY`].
    #[default]
    Auto,
    /// At most once per this long.
    Every(Duration),
}

impl CommitInterval {
    /// What `auto` waits between two commits while the sources have headroom.
    pub const AUTO_FRESH: Duration = Duration::from_millis(100);
    /// What `auto` waits while they have none.
    pub const AUTO_BUSY: Duration = Duration::from_secs(1);
    /// The share of their time the sources must spend waiting for `auto` to commit fresh.
    pub const AUTO_HEADROOM: f64 = 0.1;
    /// How often `auto` measures the headroom.
    pub const AUTO_WINDOW: Duration = Duration::from_secs(1);

    /// How long to wait between two commits, given the share of their time
    /// the sources spent waiting for input lately (`spare`, in [0, 1]).
    pub fn wait(self, spare: f64) -> Duration {
        match self {
            CommitInterval::Every(interval) => interval,
            CommitInterval::Auto if spare >= Self::AUTO_HEADROOM => Self::AUTO_FRESH,
            CommitInterval::Auto => Self::AUTO_BUSY,
        }
    }
}

impl std::str::FromStr for CommitInterval {
    type Err = String;

    fn from_str(text: &str) -> Result<CommitInterval, String> {
        match text.trim() {
            "auto" => Ok(CommitInterval::Auto),
            other => crate::duration::parse_duration(other)
                .map(CommitInterval::Every)
                .ok_or_else(|| format!("expected auto or a duration such as 250ms or 1s, found \"{other}\"")),
        }
    }
}

/// `extract`: dictionary NER and claims over a vocabulary of concepts.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractSettings {
    /// The extractor: `dictionary` (the only one this build has).
    pub model: String,
    /// The vocabulary file (JSON lines of concepts; default: `$MEDKG_VOCAB`,
    /// else what `scripts/vocab.sh` builds under `~/.cache/medkg/vocab`).
    pub vocabulary: Option<String>,
    /// Claims below this confidence are left out.
    pub min_confidence: f64,
}

impl ExtractSettings {
    /// The keys of `extract`.
    pub const KEYS: &'static [ConfigKey] =
        &[key("model", Text), key("vocabulary", Text), key("min_confidence", NonNegFloat)];

    fn decode(c: Config<'_>) -> ExtractSettings {
        ExtractSettings {
            model: c.text("model").unwrap_or_else(|| "dictionary".into()),
            vocabulary: c.text("vocabulary"),
            min_confidence: c.0.get("min_confidence").and_then(Value::as_f64).unwrap_or(0.0),
        }
    }
}

/// `kg`: the knowledge graph's store.
#[derive(Clone, Debug, PartialEq)]
pub struct KgSettings {
    /// The store: `oxigraph` (embedded, the default) or `sparql` (a
    /// SPARQL 1.1 endpoint).
    pub backend: String,
    /// Where it is: for `oxigraph`, a directory (default `DATA_DIR/graph`);
    /// for `sparql`, the endpoint's base URL (queries go to `URI/query`,
    /// updates to `URI/update`).
    pub uri: Option<String>,
}

impl KgSettings {
    /// The keys of `kg`.
    pub const KEYS: &'static [ConfigKey] = &[key("backend", Text), key("uri", Text)];

    fn decode(c: Config<'_>) -> KgSettings {
        KgSettings { backend: c.text("backend").unwrap_or_else(|| "oxigraph".into()), uri: c.text("uri") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_commits_for_freshness_with_headroom_and_for_throughput_without() {
        let auto = CommitInterval::default();
        assert_eq!(auto, CommitInterval::Auto);
        assert_eq!(auto.wait(1.0), Duration::from_millis(100));
        assert_eq!(auto.wait(0.1), Duration::from_millis(100));
        assert_eq!(auto.wait(0.05), Duration::from_secs(1));
        assert_eq!(auto.wait(0.0), Duration::from_secs(1));
        let every = CommitInterval::Every(Duration::from_secs(3));
        assert_eq!((every.wait(1.0), every.wait(0.0)), (Duration::from_secs(3), Duration::from_secs(3)));
        assert_eq!("auto".parse::<CommitInterval>(), Ok(CommitInterval::Auto));
        assert_eq!(" 250ms ".parse::<CommitInterval>(), Ok(CommitInterval::Every(Duration::from_millis(250))));
        assert!("soon".parse::<CommitInterval>().unwrap_err().contains("expected auto or a duration"));
    }
}
