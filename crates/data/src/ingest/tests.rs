use std::path::PathBuf;

use mlmesh_protocol::data::ColumnType;

use super::*;

fn shared(path: &str) -> PathBuf {
    mlmesh_testkit::shared_data(&format!("tabular/{path}"))
}

fn run(content: &[u8], options: &Options) -> Result<(Ingested, tempfile::TempDir), IngestError> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, content).unwrap();
    let out = dir.path().join("out.parquet");
    ingest(&input, &out, options).map(|i| (i, dir))
}

fn error(content: &[u8], options: &Options) -> String {
    match run(content, options) {
        Ok((ingested, _)) => panic!("accepted: {ingested:?}"),
        Err(IngestError::Invalid(message)) => message,
        Err(other) => panic!("not a 400: {other}"),
    }
}

fn types(ingested: &Ingested) -> Vec<(&str, ColumnType)> {
    ingested
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.column_type))
        .collect()
}

#[test]
fn wine_quality_semicolons_and_quoted_header() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wine.parquet");
    let options = Options {
        target: Some("quality".into()),
        ..Options::default()
    };
    let ingested = ingest(&shared("wine_quality/winequality-red.csv"), &out, &options).unwrap();
    assert_eq!(ingested.rows, 1599);
    assert_eq!(ingested.columns.len(), 12);
    assert_eq!(ingested.columns[0].name, "fixed acidity");
    assert_eq!(ingested.columns[0].column_type, ColumnType::Float);
    let quality = &ingested.columns[11];
    assert_eq!(
        (quality.name.as_str(), quality.column_type),
        ("quality", ColumnType::Integer)
    );
    assert_eq!(
        (quality.stats.min, quality.stats.max),
        (Some(3.0), Some(8.0))
    );
    assert_eq!(quality.stats.distinct, 6);
    // Python: statistics.fmean = 10.422983114446529, statistics.pstdev = 1.0653343003437483
    let alcohol = &ingested.columns[10];
    assert!((alcohol.stats.mean.unwrap() - 10.422_983_114_446_529).abs() < 1e-9);
    assert!((alcohol.stats.std.unwrap() - 1.065_334_300_343_748_3).abs() < 1e-9);

    let (_, total, rows) = read_rows(&out, 1598, 10).unwrap();
    assert_eq!((total, rows.len()), (1599, 1));
    assert_eq!(rows[0][11], serde_json::json!(6));
}

#[test]
fn spambase_has_no_header() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spam.parquet");
    let options = Options {
        target: Some("column_58".into()),
        ..Options::default()
    };
    let ingested = ingest(&shared("spambase/spambase.data"), &out, &options).unwrap();
    assert_eq!((ingested.rows, ingested.columns.len()), (4601, 58));
    let label = &ingested.columns[57];
    assert_eq!(label.column_type, ColumnType::Integer);
    assert_eq!(label.stats.mean.map(|m| (m * 4601.0).round()), Some(1813.0));
}

#[test]
fn csv_details_quoting_nulls_types_and_overrides() {
    let csv =
        b"id,name,score,ok\n1,\"Smith, J\",1.5,true\n2,NA,?,false\n3,\"say \"\"hi\"\"\",,TRUE\n";
    let (ingested, _dir) = run(csv, &Options::default()).unwrap();
    assert_eq!(
        types(&ingested),
        vec![
            ("id", ColumnType::Integer),
            ("name", ColumnType::String),
            ("score", ColumnType::Float),
            ("ok", ColumnType::Boolean)
        ]
    );
    assert_eq!(ingested.columns[1].stats.nulls, 1);
    assert_eq!(ingested.columns[2].stats.nulls, 2);

    let mut options = Options::default();
    options.types.insert("id".into(), ColumnType::String);
    options.delimiter = Some(b',');
    options.header = Some(true);
    let (ingested, _dir) = run(csv, &options).unwrap();
    assert_eq!(ingested.columns[0].column_type, ColumnType::String);
    assert_eq!(ingested.columns[0].stats.top.len(), 3);

    // Tabs, detected.
    let (ingested, _dir) = run(b"a\tb\n1\t2\n3\t4\n", &Options::default()).unwrap();
    assert_eq!(ingested.columns.len(), 2);
}

#[test]
fn jsonl_rows_with_missing_keys() {
    let jsonl = b"{\"a\": 1, \"b\": \"x\"}\n\n{\"a\": 2.5, \"c\": true}\n{\"b\": null}\n";
    let (ingested, dir) = run(jsonl, &Options::default()).unwrap();
    assert_eq!(ingested.format, Format::Jsonl);
    assert_eq!(
        types(&ingested),
        vec![
            ("a", ColumnType::Float),
            ("b", ColumnType::String),
            ("c", ColumnType::Boolean)
        ]
    );
    assert_eq!(ingested.rows, 3);
    let (_, _, rows) = read_rows(&dir.path().join("out.parquet"), 0, 10).unwrap();
    assert_eq!(rows[2], vec![serde_json::Value::Null; 3]);
}

#[test]
fn parquet_round_trip_and_csv_export() {
    let (_, dir) = run(b"x,y\n1,a\n2,\n", &Options::default()).unwrap();
    let stored = dir.path().join("out.parquet");
    let again = dir.path().join("again.parquet");
    let ingested = ingest(&stored, &again, &Options::default()).unwrap();
    assert_eq!(ingested.format, Format::Parquet);
    assert_eq!(ingested.rows, 2);
    let mut csv = Vec::new();
    write_csv(&again, &mut csv).unwrap();
    assert_eq!(String::from_utf8(csv).unwrap(), "x,y\n1,a\n2,\n");
}

#[test]
fn bad_input_is_named_precisely() {
    let o = Options::default();
    assert!(error(b"", &o).contains("empty"));
    assert!(error(b"  \n", &o).contains("empty"));
    assert!(error(b"a,b\n1,2\n3\n", &o).contains("line 3"));
    assert!(error(b"a,b,c\n", &o).contains("header but no rows"));
    assert!(error(b"a,b\n1,\xff\xfe\n", &o).contains("UTF-8"));
    assert!(error(b"\x00\x01\x02binary\x00junk", &o).contains("binary"));
    assert!(error(b"a,a\n1,2\n", &o).contains("twice"));
    assert!(error(b"a,,c\nx,y,z\n", &o).contains("empty name"));
    let target = Options {
        target: Some("nope".into()),
        ..Options::default()
    };
    assert!(error(b"a,b\n1,2\n", &target).contains("unknown target column \"nope\""));
    let mut typed = Options::default();
    typed.types.insert("b".into(), ColumnType::Integer);
    let message = error(b"a,b\n1,2\n3,4.5\n5,x\n", &typed);
    assert!(
        message.contains("line 3") && message.contains("\"4.5\""),
        "{message}"
    );
    let mut unknown = Options::default();
    unknown.types.insert("zzz".into(), ColumnType::Integer);
    assert!(error(b"a\n1\n", &unknown).contains("unknown column"));
    let narrow = Options {
        max_columns: 2,
        ..Options::default()
    };
    assert!(error(b"a,b,c\n1,2,3\n", &narrow).contains("limit is 2"));
    assert!(error(b"{\"a\": [1]}\n", &o).contains("nested"));
    assert!(error(b"{\"a\": 1}\n{oops\n", &o).contains("line 2"));
    let parquet = Options {
        format: Some(Format::Parquet),
        ..Options::default()
    };
    assert!(error(b"PAR1 but not really", &parquet).contains("Parquet"));
}

#[test]
fn delimiter_detection() {
    use super::csv_in::detect_delimiter;
    assert_eq!(detect_delimiter(b"a;b;c\n1;2;3\n"), b';');
    assert_eq!(detect_delimiter(b"a,b\n1,2\n"), b',');
    assert_eq!(detect_delimiter(b"a|b|c\n1|2|3\n4|5|6"), b'|');
    assert_eq!(detect_delimiter(b"single\n1\n"), b',');
}

/// A CSV whose first 100 000 rows (far past the sampled 64 KiB) look one way, then change.
fn late_surprise(tail: &str) -> Vec<u8> {
    let mut csv = String::from("id,x,maybe\n");
    for i in 0..100_000 {
        csv.push_str(&format!("{i},{},\n", i % 7));
    }
    csv.push_str(tail);
    csv.into_bytes()
}

#[test]
fn a_guess_contradicted_after_the_sample_is_redone_exactly() {
    // An integer column meets a float: float, with every value kept.
    let (ingested, dir) = run(&late_surprise("100000,2.5,\n"), &Options::default()).unwrap();
    assert_eq!(ingested.columns[1].column_type, ColumnType::Float);
    assert_eq!(ingested.rows, 100_001);
    let (_, _, rows) = read_rows(&dir.path().join("out.parquet"), 100_000, 1).unwrap();
    assert_eq!(rows[0][1], serde_json::json!(2.5));
    assert_eq!(ingested.columns[1].stats.max, Some(6.0));

    // ... or text: string.
    let (ingested, _dir) = run(&late_surprise("100000,abc,\n"), &Options::default()).unwrap();
    assert_eq!(ingested.columns[1].column_type, ColumnType::String);

    // A column empty in the sample that later holds integers is an integer column.
    let (ingested, _dir) = run(&late_surprise("100000,1,42\n"), &Options::default()).unwrap();
    assert_eq!(ingested.columns[2].column_type, ColumnType::Integer);
    assert_eq!(ingested.columns[2].stats.count, 1);

    // Nothing contradicts: one pass, the guessed types.
    let (ingested, _dir) = run(&late_surprise(""), &Options::default()).unwrap();
    assert_eq!(
        types(&ingested),
        vec![
            ("id", ColumnType::Integer),
            ("x", ColumnType::Integer),
            ("maybe", ColumnType::String)
        ]
    );

    // Errors past the sample still name their line.
    let message = error(&late_surprise("1,2\n"), &Options::default());
    assert!(message.contains("line 100002"), "{message}");
    let mut typed = Options::default();
    typed.types.insert("x".into(), ColumnType::Integer);
    let message = error(&late_surprise("100000,2.5,\n"), &typed);
    assert!(
        message.contains("line 100002") && message.contains("\"2.5\""),
        "{message}"
    );
}

#[test]
fn a_single_line_longer_than_the_sample() {
    let wide: Vec<String> = (0..1_500)
        .map(|i| format!("a_long_column_name_{i:05}_padding_padding"))
        .collect();
    let mut csv = wide.join(",");
    csv.push('\n');
    csv.push_str(&vec!["1"; 1_500].join(","));
    let (ingested, _dir) = run(csv.as_bytes(), &Options::default()).unwrap();
    assert_eq!((ingested.rows, ingested.columns.len()), (1, 1_500));
}
