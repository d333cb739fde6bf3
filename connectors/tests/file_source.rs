//! The file connector: splitting across workers, resuming, caps, gzip,
//! directories, and bad files.

use std::io::Write;

use medkg_connectors::{Checkpoint, DeadLetter, DeadLetterSink, FileSource, Position};

fn write_gz(path: &std::path::Path, text: &str) {
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

fn ordinals(source: &FileSource, worker: usize, peers: usize, start: u64, max: usize) -> Vec<(u64, bool)> {
    source.records(worker, peers, start, max).map(|(o, r)| (o, r.is_ok())).collect()
}

#[test]
fn workers_split_records_and_resume_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl.gz");
    write_gz(&path, "{\"a\":0}\n{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}\n{\"a\":4}");
    let source = FileSource::open(&path).unwrap();
    assert_eq!(ordinals(&source, 0, 2, 0, 1000), [(0, true), (2, true), (4, true)]);
    assert_eq!(ordinals(&source, 1, 2, 0, 1000), [(1, true), (3, true)]);
    assert_eq!(ordinals(&source, 0, 2, 3, 1000), [(4, true)]);
    let all: Vec<_> = source.records(0, 1, 0, 1000).map(|(_, r)| r.unwrap()).collect();
    assert_eq!(all[2].bytes, b"{\"a\":2}");
    assert_eq!(all[2].position.line, Some(4), "blank lines count as lines, not records");
    assert_eq!(all[3].position.to_string(), format!("{}:5", path.display()));
}

#[test]
fn oversized_lines_are_errors_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, format!("{{\"a\":1}}\n{}\n{{\"a\":3}}\n", "x".repeat(5000))).unwrap();
    let source = FileSource::open(&path).unwrap();
    let records: Vec<_> = source.records(0, 1, 0, 100).collect();
    assert_eq!(records.len(), 3);
    let (position, error) = records[1].1.as_ref().unwrap_err();
    assert_eq!((position.line, error.kind.as_str()), (Some(2), "too_large"));
    assert_eq!(records[2].1.as_ref().unwrap().bytes, b"{\"a\":3}");
}

#[test]
fn directories_are_walked_in_order_with_unknown_files_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("b.nxml"), "<article/>").unwrap();
    std::fs::write(dir.path().join("a.json"), "{}").unwrap();
    std::fs::write(dir.path().join("sub/c.jsonl"), "{\"x\":1}\n{\"x\":2}\n").unwrap();
    write_gz(&dir.path().join("sub/d.xml.gz"), "<PubmedArticleSet/>");
    std::fs::write(dir.path().join("README.txt"), "not data").unwrap();
    let source = FileSource::open(dir.path()).unwrap();
    let names: Vec<String> = source
        .records(0, 1, 0, 1 << 20)
        .map(|(_, r)| {
            let r = r.unwrap();
            format!("{}={}", r.name.unwrap(), String::from_utf8(r.bytes).unwrap())
        })
        .collect();
    assert_eq!(
        names,
        ["a.json={}", "b.nxml=<article/>", "c.jsonl={\"x\":1}", "c.jsonl={\"x\":2}", "d.xml.gz=<PubmedArticleSet/>"]
    );
    assert_eq!(source.skipped().len(), 1);
    // The same ordinals on every worker.
    assert_eq!(ordinals(&source, 1, 2, 0, 1 << 20), [(1, true), (3, true)]);
}

#[test]
fn a_corrupt_gzip_is_one_error_and_the_next_file_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    {
        let mut gz = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::fast());
        for i in 0..2000 {
            writeln!(gz, "{{\"pmid\":\"{i}\",\"title\":\"some title text here {i}\"}}").unwrap();
        }
        gz.finish().unwrap();
    }
    let half = bytes.len() / 2;
    bytes[half..half + 64].fill(0xAB);
    std::fs::write(dir.path().join("a.jsonl.gz"), &bytes).unwrap();
    std::fs::write(dir.path().join("b.jsonl"), "{\"pmid\":\"z\"}\n").unwrap();
    let source = FileSource::open(dir.path()).unwrap();
    let records: Vec<_> = source.records(0, 1, 0, 1 << 20).collect();
    let errors: Vec<_> = records.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].1.kind, "read_failed");
    assert_eq!(records.last().unwrap().1.as_ref().unwrap().bytes, b"{\"pmid\":\"z\"}");
    // Split over two workers, the error is reported exactly once.
    let a = source.records(0, 2, 0, 1 << 20).filter(|(_, r)| r.is_err()).count();
    let b = source.records(1, 2, 0, 1 << 20).filter(|(_, r)| r.is_err()).count();
    assert_eq!(a + b, 1);
}

#[test]
fn checkpoints_round_trip_atomically() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Checkpoint::load(dir.path(), "file:/x/y.jsonl").unwrap(), None);
    let cp = Checkpoint { source: "file:/x/y.jsonl".into(), committed: 42, complete: false };
    cp.store(dir.path()).unwrap();
    assert_eq!(Checkpoint::load(dir.path(), "file:/x/y.jsonl").unwrap(), Some(cp));
    assert_eq!(Checkpoint::load(dir.path(), "file:/x/z.jsonl").unwrap(), None);
}

#[test]
fn dead_letters_keep_the_original_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = DeadLetterSink::new(dir.path(), "w0");
    let position = Position { ordinal: 7, file: "f.jsonl".into(), line: Some(8), partition: None };
    sink.write(&DeadLetter::new(
        "parse",
        "file:f.jsonl",
        &position,
        None,
        "permanent",
        "invalid_utf8",
        "bad",
        b"\xff\x00ok",
    ))
    .unwrap();
    sink.write(&DeadLetter::new("parse", "file:f.jsonl", &position, None, "permanent", "bad_json", "bad", b"{oops"))
        .unwrap();
    let letters = DeadLetterSink::read_all(dir.path()).unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].bytes(), b"\xff\x00ok");
    assert_eq!(letters[1].bytes_utf8.as_deref(), Some("{oops"));
    assert_eq!(letters[1].position, "f.jsonl:8");
}
