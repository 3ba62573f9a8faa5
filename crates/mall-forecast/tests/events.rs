//! Reading event logs: malformed lines are counted and skipped, never a
//! panic; unknown kinds and fields are ignored; order is not assumed.

mod common;

use common::{tiny, TempDir};
use mall_forecast::event::{read_dir, Event, Kind, LINE_BYTES_MAX};
use mall_forecast::forecast::{forecast, SaleParams};
use mall_forecast::history::generate;
use mall_forecast::Error;

#[test]
fn malformed_lines_are_skipped_and_counted() {
    let dir = TempDir::new("malformed");
    let lines = [
        r#"{"t":2000,"k":"order","u":1,"s":2,"o":9,"a":1990,"q":3,"c":"online","l":1200}"#,
        r#"{"t":1000,"k":"view","u":1,"s":2,"new_field":{"nested":[1,2]}}"#,
        "",
        "   ",
        r#"{"t":1500,"k":"hologram","u":1,"s":2}"#,
        "not json at all",
        r#"{"t":1,"k":"view","u":1}"#,
        r#"{"t":"soon","k":"view","u":1,"s":2}"#,
        r#"{"t":1,"k":"view","u":-4,"s":2}"#,
        r#"{"t":1,"k":"order","u":1,"s":2,"q":0}"#,
        r#"{"t":1,"k":"order","u":1,"s":2,"q":1001}"#,
        r#"{"t":1,"k":"view","u":1,"s":2"#,
        r#"[1,2,3]"#,
        r#"{"t":3000,"k":"refusal","u":4,"s":2,"r":"sold_out","o":null,"q":null}"#,
        r#"{"t":3500,"k":"order","u":4,"s":2,"o":10,"m":true}"#,
        r#"{"t":3600,"k":"order","u":4,"s":2,"o":11,"c":"cod"}"#,
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(&format!(
        "{{\"t\":1,\"k\":\"view\",\"u\":1,\"s\":2,\"pad\":\"{}\"}}\n",
        "x".repeat(LINE_BYTES_MAX)
    ));
    dir.write("a.jsonl", &text);
    let mut bytes = b"{\"t\":1,\"k\":\"view\",\"u\":1,\"s\":\xff}\n".to_vec();
    bytes.extend_from_slice(br#"{"t":4000,"k":"deposit","u":5,"s":6,"a":500}"#);
    std::fs::write(dir.path().join("b.jsonl"), bytes).unwrap();
    dir.write("c.json", "{\"t\":1,\"k\":\"view\",\"u\":1,\"s\":2}\n");

    let mut seen: Vec<Event> = Vec::new();
    let stats = read_dir(dir.path(), |e| seen.push(e.clone())).unwrap();
    assert_eq!(stats.files, 2, "only *.jsonl files");
    assert_eq!(stats.events, 6);
    assert_eq!(stats.unknown_kinds, 1);
    assert_eq!(stats.malformed, 10);
    assert_eq!(stats.lines, 17);
    assert_eq!(stats.malformed_examples.len(), 5);
    assert!(
        stats.malformed_examples[0].starts_with("a.jsonl:6: "),
        "{:?}",
        stats.malformed_examples
    );
    assert!(
        stats.malformed_examples[4].contains("quantity 0"),
        "{:?}",
        stats.malformed_examples
    );

    let kinds: Vec<Kind> = seen.iter().map(|e| e.kind).collect();
    use Kind::*;
    assert_eq!(kinds, [Order, View, Refusal, Order, Order, Deposit]);
    let order = &seen[0];
    assert_eq!(
        (order.t_ms, order.quantity, order.order.map(|o| o.0)),
        (2000, 3, Some(9))
    );
    assert_eq!(order.channel.as_deref(), Some("online"));
    assert!(
        !order.cod && seen[3].cod && seen[4].cod,
        "m: true and c: cod are COD"
    );
    assert_eq!(
        (order.amount.map(|a| a.0), order.latency_us),
        (Some(1990), Some(1200))
    );
    assert_eq!(seen[2].quantity, 1, "q null means the default");
    assert_eq!(seen[2].reason.as_deref(), Some("sold_out"));
    assert_eq!(
        seen[5].amount.map(|a| a.0),
        Some(500),
        "the last line needs no newline"
    );
}

#[test]
fn a_directory_without_event_files_is_an_error() {
    let dir = TempDir::new("none");
    dir.write("readme.txt", "hello");
    assert!(matches!(
        read_dir(dir.path(), |_| {}),
        Err(Error::NoEventFiles { .. })
    ));
    let missing = dir.path().join("missing");
    assert!(matches!(read_dir(&missing, |_| {}), Err(Error::Io { .. })));
}

#[test]
fn the_forecast_skips_and_reports_malformed_lines_and_shuffled_files() {
    let clean = TempDir::new("clean");
    generate(&tiny(6), clean.path()).unwrap();
    let params = SaleParams {
        draws: 20,
        ..SaleParams::default()
    };
    let a = forecast(clean.path(), params.clone()).unwrap();

    // The same history with every file's lines reversed and junk added.
    let dirty = TempDir::new("dirty");
    for entry in std::fs::read_dir(clean.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        if name.ends_with(".jsonl") {
            let mut lines: Vec<&str> = text.lines().collect();
            lines.reverse();
            lines.insert(lines.len() / 2, "{\"t\":oops}");
            lines.push("garbage");
            dirty.write(&name, &(lines.join("\n") + "\n"));
        } else {
            dirty.write(&name, &text);
        }
    }
    let b = forecast(dirty.path(), params).unwrap();
    assert_eq!(b.read.malformed, 2 * a.read.files);
    assert_eq!(b.read.events, a.read.events);
    assert_eq!(b.peak_attempts_per_s, a.peak_attempts_per_s);
    assert_eq!(b.items, a.items);
}
